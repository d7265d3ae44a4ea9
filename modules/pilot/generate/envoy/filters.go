package envoy

import (
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	origdstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/modules/pilot/generate"
)

// typed packs m into an Any deterministically, so equal configs encode to
// equal bytes and the xDS server's change detection sees no change.
func typed(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		// Only an invalid message fails to marshal; every message here is
		// built by this package. ValidateAll in the tests would flag the
		// empty Any.
		return &anypb.Any{}
	}
	return a
}

// adsSource is a config source on the ADS stream the proxy already has.
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		InitialFetchTimeout:   durationpb.New(0),
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

// agentSDSSource is the node agent's SDS server, reached through the
// bootstrap cluster sds-grpc. Workload certificates and files come from
// there, never from meshd: the private key stays on the node.
func agentSDSSource() *corev3.ConfigSource { return generate.AgentSDS() }

// credentialSource is where gateway credentials (credentialName) come
// from: meshd, over the ADS stream.
func credentialSource() *corev3.ConfigSource { return generate.ADS() }

// Listener filters.
var (
	origDstFilter = &listenerv3.ListenerFilter{
		Name:       wellknown.OriginalDestination,
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: typed(&origdstv3.OriginalDst{})},
	}
	tlsInspectorFilter = &listenerv3.ListenerFilter{
		Name:       wellknown.TLSInspector,
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: typed(&tlsinspectorv3.TlsInspector{})},
	}
	httpInspectorFilter = &listenerv3.ListenerFilter{
		Name:       wellknown.HTTPInspector,
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: typed(&httpinspectorv3.HttpInspector{})},
	}
)

// Protocols the HTTP inspector reports for plaintext HTTP, which outbound
// HTTP chains match so anything else falls through to the TCP default.
var plaintextHTTPALPNs = []string{"http/1.0", "http/1.1", "h2c"}

const rawBufferTransport = "raw_buffer"

// listenerFilters returns the inspectors the chains need: the TLS
// inspector for SNI matches, the HTTP inspector for application protocol
// matches (after the TLS inspector, as Envoy requires).
func listenerFilters(chains []*listenerv3.FilterChain, extra ...*listenerv3.ListenerFilter) []*listenerv3.ListenerFilter {
	var tlsNeeded, httpNeeded bool
	for _, fc := range chains {
		m := fc.GetFilterChainMatch()
		if len(m.GetServerNames()) > 0 || m.GetTransportProtocol() == "tls" {
			tlsNeeded = true
		}
		if len(m.GetApplicationProtocols()) > 0 {
			if m.GetTransportProtocol() == "tls" {
				tlsNeeded = true
			} else {
				httpNeeded = true
			}
		}
	}
	out := extra
	if tlsNeeded {
		out = append(out, tlsInspectorFilter)
	}
	if httpNeeded {
		out = append(out, httpInspectorFilter)
	}
	return out
}

// weightedCluster is one destination of a TCP proxy.
type weightedCluster struct {
	name   string
	weight uint32
}

// tcpProxyFilters returns a chain's network filters ending in a TCP proxy
// to clusters: one cluster, or several weighted.
func (g *Generator) tcpProxyFilters(c Chain, statPrefix string, clusters []weightedCluster) []*listenerv3.Filter {
	t := &tcpv3.TcpProxy{StatPrefix: statPrefix}
	switch {
	case len(clusters) == 1:
		t.ClusterSpecifier = &tcpv3.TcpProxy_Cluster{Cluster: clusters[0].name}
	case len(clusters) > 1:
		wc := &tcpv3.TcpProxy_WeightedCluster{}
		for _, w := range clusters {
			wc.Clusters = append(wc.Clusters, &tcpv3.TcpProxy_WeightedCluster_ClusterWeight{Name: w.name, Weight: max(w.weight, 1)})
		}
		t.ClusterSpecifier = &tcpv3.TcpProxy_WeightedClusters{WeightedClusters: wc}
	default:
		t.ClusterSpecifier = &tcpv3.TcpProxy_Cluster{Cluster: BlackHoleCluster}
	}
	for _, e := range g.ext {
		if x, ok := e.(TCPProxyExtension); ok {
			x.TCPProxy(c, t)
		}
	}
	out := g.networkFilters(c)
	return append(out, &listenerv3.Filter{
		Name:       wellknown.TCPProxy,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(t)},
	})
}

func (g *Generator) networkFilters(c Chain) []*listenerv3.Filter {
	var out []*listenerv3.Filter
	for _, e := range g.ext {
		if x, ok := e.(NetworkFilterExtension); ok {
			out = append(out, x.NetworkFilters(c)...)
		}
	}
	return out
}

// hcmOptions say what differs between the HTTP connection managers of
// sidecar outbound, sidecar inbound and gateway chains. Everything else is
// the same for all three and set in one place, httpFilters.
type hcmOptions struct {
	statPrefix string
	// rds names the route configuration to fetch over ADS; routeConfig is
	// an inline one (inbound chains). Exactly one is set.
	rds         string
	routeConfig *routev3.RouteConfiguration
	// http2 accepts HTTP/2 settings explicitly (inbound gRPC ports).
	http2 bool
}

// httpFilters returns a chain's network filters ending in an HTTP
// connection manager. The HTTP filters are the extensions' (authn, authz,
// stats), then fault and CORS (VirtualService fault and corsPolicy
// configure them per route), then the router, always last.
func (g *Generator) httpFilters(c Chain, o hcmOptions) []*listenerv3.Filter {
	c.HTTP = true
	h := &hcmv3.HttpConnectionManager{
		CodecType:                    hcmv3.HttpConnectionManager_AUTO,
		StatPrefix:                   o.statPrefix,
		NormalizePath:                wrapperspb.Bool(true),
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_KEEP_UNCHANGED,
		StreamIdleTimeout:            durationpb.New(0),
		// WebSocket upgrades are allowed on every HTTP chain, as in Istio;
		// a route may still refuse them.
		UpgradeConfigs: []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
	}
	switch c.Class {
	case Gateway:
		// A gateway faces clients directly: it trusts no X-Forwarded-For
		// hop, and replaces any client-cert header with its own view.
		h.UseRemoteAddress = wrapperspb.Bool(true)
		h.ForwardClientCertDetails = hcmv3.HttpConnectionManager_SANITIZE_SET
		h.SetCurrentClientCertDetails = &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{
			Subject: wrapperspb.Bool(true), Cert: true, Dns: true, Uri: true,
		}
		h.HttpProtocolOptions = &corev3.Http1ProtocolOptions{}
	case SidecarInbound:
		h.UseRemoteAddress = wrapperspb.Bool(false)
		h.ForwardClientCertDetails = hcmv3.HttpConnectionManager_APPEND_FORWARD
		h.SetCurrentClientCertDetails = &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{
			Subject: wrapperspb.Bool(true), Dns: true, Uri: true,
		}
	default:
		h.UseRemoteAddress = wrapperspb.Bool(false)
	}
	if o.http2 {
		h.Http2ProtocolOptions = &corev3.Http2ProtocolOptions{}
	}
	if o.rds != "" {
		h.RouteSpecifier = &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: adsSource(), RouteConfigName: o.rds}}
	} else {
		h.RouteSpecifier = &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: o.routeConfig}
	}
	for _, e := range g.ext {
		if x, ok := e.(HTTPFilterExtension); ok {
			h.HttpFilters = append(h.HttpFilters, x.HTTPFilters(c)...)
		}
	}
	h.HttpFilters = append(h.HttpFilters, sharedHTTPFilters[:len(sharedHTTPFilters)-1]...)
	for _, e := range g.ext {
		if x, ok := e.(ConnectionManagerExtension); ok {
			x.ConnectionManager(c, h)
		}
	}
	// The router goes last whatever an extension did.
	h.HttpFilters = append(h.HttpFilters, sharedHTTPFilters[len(sharedHTTPFilters)-1])
	out := g.networkFilters(c)
	return append(out, &listenerv3.Filter{
		Name:       wellknown.HTTPConnectionManager,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(h)},
	})
}

// HTTP filter names VirtualService route translation configures per route
// (typed_per_filter_config keys): pilot's shared route builder's.
const (
	FaultFilterName  = generate.FilterFault
	CORSFilterName   = generate.FilterCORS
	RouterFilterName = generate.FilterRouter
)

// sharedHTTPFilters are the filters the shared route builder's routes need
// (fault, CORS, router last), built once: every connection manager is
// marshalled as soon as it is built, so sharing them is safe as long as no
// extension modifies them in place.
var sharedHTTPFilters = generate.HTTPFilters(generate.Envoy)

// finishListener applies the listener extensions.
func (g *Generator) finishListener(class Class, c Chain, l *listenerv3.Listener) *listenerv3.Listener {
	for _, e := range g.ext {
		if x, ok := e.(ListenerExtension); ok {
			x.Listener(class, c.Proxy, l)
		}
	}
	return l
}

// defaultConnectTimeout is Istio's default connectTimeout.
const defaultConnectTimeout = 10 * time.Second
