package agent

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/modules/pilot/autoregister"
	"github.com/meshd/meshd/modules/pilot/generate"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// Cluster names in the Envoy bootstrap, Istio's.
const (
	xdsCluster = "xds-grpc"
	sdsCluster = generate.SDSCluster // "sds-grpc", the name pilot's generated TLS contexts point at
)

// workloadMeta is the node metadata every xDS client of this workload
// sends: who it is (Istio's keys, which meshd's xds module reads) and
// where it runs.
func (a *Agent) workloadMeta() map[string]any {
	w := a.cfg.Workload
	md := map[string]any{
		xdsapi.MetaNamespace:          a.cfg.Identity.Namespace,
		xdsapi.MetaServiceAccount:     a.cfg.Identity.ServiceAccount,
		xdsapi.MetaInstanceIPs:        w.Address,
		autoregister.MetaWorkloadName: w.Name,
	}
	if len(w.Labels) > 0 {
		labels := map[string]any{}
		for k, v := range w.Labels {
			labels[k] = v
		}
		md[xdsapi.MetaLabels] = labels
	}
	if w.Network != "" {
		md[autoregister.MetaNetwork] = w.Network
	}
	return md
}

func (a *Agent) locality() *corev3.Locality {
	if a.cfg.Workload.Locality == "" {
		return nil
	}
	p := append(strings.SplitN(a.cfg.Workload.Locality, "/", 3), "", "")
	return &corev3.Locality{Region: p[0], Zone: p[1], SubZone: p[2]}
}

func mustStruct(m map[string]any) *structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic("agent: node metadata: " + err.Error())
	}
	return s
}

// workloadNodeID is the node ID of the workload's Envoy and gRPC clients,
// in Istio's form: sidecar~<ip>~<name>.<ns>~<ns>.svc.<clusterDomain>.
func (a *Agent) workloadNodeID() string {
	w, ns := a.cfg.Workload, a.cfg.Identity.Namespace
	return "sidecar~" + w.Address + "~" + w.Name + "." + ns + "~" + ns + ".svc." + w.ClusterDomain
}

// nodeCluster is Envoy's service cluster: <service>.<ns>, or the workload
// name when no service is set.
func (a *Agent) nodeCluster() string {
	svc := a.cfg.Workload.Service
	if svc == "" {
		svc = a.cfg.Workload.Name
	}
	return svc + "." + a.cfg.Identity.Namespace
}

// agentNode is the node of the agent's own xDS stream: the registration.
// Its ID is a plain one, so meshd status tells it from the workload's
// proxies.
func (a *Agent) agentNode() *corev3.Node {
	md := a.workloadMeta()
	w := a.cfg.Workload
	if w.WorkloadGroup != "" {
		md[autoregister.MetaGroup] = w.WorkloadGroup
		ports := map[string]uint32{}
		for _, p := range w.Ports {
			ports[p.Name] = p.Port
		}
		if len(ports) > 0 {
			md[autoregister.MetaPorts] = autoregister.FormatPorts(ports)
		}
		if w.Probe.Type != "none" {
			md[autoregister.MetaProbe] = w.Probe.Type
		}
	}
	return &corev3.Node{
		Id:                   "agent/" + a.cfg.Identity.Namespace + "/" + w.Name,
		Cluster:              a.nodeCluster(),
		Metadata:             mustStruct(md),
		Locality:             a.locality(),
		UserAgentName:        "meshd-agent",
		UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: a.version},
	}
}

// bootstrapNode is the node of the one unauthenticated stream that fetches
// the trust bundle for a root pin. It asks for no registration.
func (a *Agent) bootstrapNode() *corev3.Node {
	return &corev3.Node{Id: "agent-bootstrap/" + a.cfg.Identity.Namespace + "/" + a.cfg.Workload.Name, UserAgentName: "meshd-agent"}
}

// sdsConfigSource is the agent's SDS server as Envoy reaches it.
func sdsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: generate.AgentSDS()}
}

// EnvoyBootstrap returns the bootstrap of the workload's Envoy: ADS to
// meshd over mTLS with the workload certificate and trust bundle from the
// agent's SDS socket, and the node describing the workload.
func (a *Agent) EnvoyBootstrap() (*bootstrapv3.Bootstrap, error) {
	cp := a.cfg.ControlPlane
	host, portStr, err := net.SplitHostPort(cp.Address)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("controlPlane.address: port %q: %w", portStr, err)
	}
	adminHost, adminPortStr, _ := net.SplitHostPort(a.cfg.Envoy.AdminAddress)
	adminPort, err := strconv.ParseUint(adminPortStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("envoy.adminAddress: port %q: %w", adminPortStr, err)
	}
	md := a.workloadMeta()
	h2 := mustAny(&httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		},
	}})
	protoOpts := map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2}

	san := &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS,
		Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: cp.ServerName}}}
	sni := cp.ServerName
	if _, err := netip.ParseAddr(cp.ServerName); err == nil {
		san.SanType, sni = tlsv3.SubjectAltNameMatcher_IP_ADDRESS, ""
	}
	upstreamTLS := mustAny(&tlsv3.UpstreamTlsContext{
		Sni: sni,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			AlpnProtocols:                  []string{"h2"},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(generate.SecretDefault)},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{san}},
				ValidationContextSdsSecretConfig: sdsSecret(generate.SecretRootCA),
			}},
		},
	})

	xdsType := clusterv3.Cluster_STATIC
	if _, err := netip.ParseAddr(host); err != nil {
		xdsType = clusterv3.Cluster_STRICT_DNS
	}
	b := &bootstrapv3.Bootstrap{
		Node: &corev3.Node{
			Id:       a.workloadNodeID(),
			Cluster:  a.nodeCluster(),
			Metadata: mustStruct(md),
			Locality: a.locality(),
		},
		Admin: &bootstrapv3.Admin{
			Address: socketAddress(adminHost, uint32(adminPort)),
		},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:                   corev3.ApiConfigSource_GRPC,
				TransportApiVersion:       corev3.ApiVersion_V3,
				SetNodeOnFirstMessageOnly: true,
				GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: xdsCluster},
				}}},
			},
			CdsConfig: generate.ADS(),
			LdsConfig: generate.ADS(),
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Clusters: []*clusterv3.Cluster{
				{
					Name:                          xdsCluster,
					ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: xdsType},
					ConnectTimeout:                durationpb.New(time.Second),
					LoadAssignment:                loadAssignment(xdsCluster, socketAddress(host, uint32(port))),
					TypedExtensionProtocolOptions: protoOpts,
					TransportSocket: &corev3.TransportSocket{Name: generate.TransportSocketTLS,
						ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: upstreamTLS}},
				},
				{
					Name:                          sdsCluster,
					ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
					ConnectTimeout:                durationpb.New(time.Second),
					LoadAssignment:                loadAssignment(sdsCluster, &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: a.cfg.SDS.Socket}}}),
					TypedExtensionProtocolOptions: protoOpts,
				},
			},
		},
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("envoy bootstrap: %w", err)
	}
	return b, nil
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func loadAssignment(cluster string, addr *corev3.Address) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: cluster,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: addr}},
		}}}},
	}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic("agent: " + err.Error())
	}
	return a
}

// envoyBootstrapJSON renders the bootstrap for `envoy -c`.
func (a *Agent) envoyBootstrapJSON() ([]byte, error) {
	b, err := a.EnvoyBootstrap()
	if err != nil {
		return nil, err
	}
	out, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(b)
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// GRPCBootstrap is the xDS bootstrap of proxyless gRPC applications
// (GRPC_XDS_BOOTSTRAP), as grpc-go reads it.
type GRPCBootstrap struct {
	XDSServers                         []GRPCXDSServer             `json:"xds_servers"`
	Node                               GRPCNode                    `json:"node"`
	CertificateProviders               map[string]GRPCCertProvider `json:"certificate_providers"`
	ServerListenerResourceNameTemplate string                      `json:"server_listener_resource_name_template,omitempty"`
}

// GRPCXDSServer is one entry of xds_servers.
type GRPCXDSServer struct {
	ServerURI      string            `json:"server_uri"`
	ChannelCreds   []GRPCChannelCred `json:"channel_creds"`
	ServerFeatures []string          `json:"server_features,omitempty"`
}

// GRPCChannelCred is one entry of channel_creds.
type GRPCChannelCred struct {
	Type   string         `json:"type"`
	Config map[string]any `json:"config,omitempty"`
}

// GRPCNode is the bootstrap's node.
type GRPCNode struct {
	ID       string            `json:"id"`
	Cluster  string            `json:"cluster,omitempty"`
	Metadata map[string]any    `json:"metadata,omitempty"`
	Locality map[string]string `json:"locality,omitempty"`
}

// GRPCCertProvider is one certificate provider instance.
type GRPCCertProvider struct {
	PluginName string         `json:"plugin_name"`
	Config     map[string]any `json:"config"`
}

// GRPCBootstrapFor returns the gRPC bootstrap: meshd over mTLS with the
// agent's files (grpc-go's "tls" channel credentials reload them on each
// connection), the certificate provider instance "default" (file_watcher)
// that meshd's TLS contexts name, and the node describing the workload.
func (a *Agent) GRPCBootstrapFor() *GRPCBootstrap {
	// The same files, re-read as often, for both: the channel credentials
	// (gRFC A65) build a file_watcher of their own from this config, whose
	// default refresh (10 minutes) would outlive short certificates.
	files := map[string]any{
		"certificate_file":    a.files.path(FileCertChain),
		"private_key_file":    a.files.path(FileKey),
		"ca_certificate_file": a.files.path(FileRootCert),
		"refresh_interval":    durationString(a.cfg.GRPCBootstrap.RefreshInterval),
	}
	provider := maps.Clone(files)
	md := a.workloadMeta()
	md[xdsapi.MetaGenerator] = "grpc"
	b := &GRPCBootstrap{
		XDSServers: []GRPCXDSServer{{
			ServerURI:      a.cfg.ControlPlane.Address,
			ChannelCreds:   []GRPCChannelCred{{Type: "tls", Config: files}},
			ServerFeatures: []string{"xds_v3"},
		}},
		Node:                               GRPCNode{ID: a.workloadNodeID(), Cluster: a.nodeCluster(), Metadata: md},
		CertificateProviders:               map[string]GRPCCertProvider{generate.CertProviderInstance: {PluginName: "file_watcher", Config: provider}},
		ServerListenerResourceNameTemplate: a.cfg.GRPCBootstrap.ServerListenerTemplate,
	}
	if l := a.locality(); l != nil {
		b.Node.Locality = map[string]string{}
		for k, v := range map[string]string{"region": l.Region, "zone": l.Zone, "sub_zone": l.SubZone} {
			if v != "" {
				b.Node.Locality[k] = v
			}
		}
	}
	return b
}

// durationString renders d as a protobuf JSON duration ("60s", "0.5s").
func durationString(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
}

func (a *Agent) grpcBootstrapJSON() ([]byte, error) {
	out, err := json.MarshalIndent(a.GRPCBootstrapFor(), "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}
