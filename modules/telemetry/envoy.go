package telemetry

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	grpclogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	tracingv3 "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/modules/telemetry/api"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// Names in the generated config.
const (
	// OTelCluster is the cluster the tracing config sends spans to. It is
	// meshd's own name, so it cannot clash with a mesh service cluster of
	// the collector.
	OTelCluster = "meshd-telemetry-otel"

	httpGRPCLogger = "envoy.access_loggers.http_grpc"
	tcpGRPCLogger  = "envoy.access_loggers.tcp_grpc"
	otelTracer     = "envoy.tracers.opentelemetry"
	httpOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// Log names. The access-log service learns the reporter of a stream from
// its log name: destination for inbound, source for outbound.
const (
	logHTTPInbound  = "meshd/http/inbound"
	logHTTPOutbound = "meshd/http/outbound"
	logTCPInbound   = "meshd/tcp/inbound"
	logTCPOutbound  = "meshd/tcp/outbound"
)

// envoyConfig builds the fragments of api.EnvoyConfig from the module
// config. The messages that do not depend on the proxy are built once;
// each call returns a clone, as the contract promises the caller may
// modify them.
type envoyConfig struct {
	cfg *Config

	httpLogs map[api.Direction]*accesslogv3.AccessLog
	tcpLogs  map[api.Direction]*accesslogv3.AccessLog
	tags     []*tracingv3.CustomTag
	cluster  *clusterv3.Cluster // nil when tracing is off
}

var _ api.EnvoyConfig = (*envoyConfig)(nil)

// NewEnvoyConfig returns the fragments the module serves for cfg (nil:
// the defaults), without running the module: for tests of the generators
// that use them.
func NewEnvoyConfig(cfg *Config) (api.EnvoyConfig, error) {
	if cfg == nil {
		cfg = Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return newEnvoyConfig(cfg)
}

func newEnvoyConfig(cfg *Config) (*envoyConfig, error) {
	e := &envoyConfig{cfg: cfg, httpLogs: map[api.Direction]*accesslogv3.AccessLog{}, tcpLogs: map[api.Direction]*accesslogv3.AccessLog{}}
	common := func(logName string) *grpclogv3.CommonGrpcAccessLogConfig {
		return &grpclogv3.CommonGrpcAccessLogConfig{
			LogName: logName,
			GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: cfg.AccessLog.Cluster}}},
			TransportApiVersion: corev3.ApiVersion_V3,
			BufferFlushInterval: durationpb.New(cfg.AccessLog.FlushInterval),
			BufferSizeBytes:     wrapperspb.UInt32(uint32(cfg.AccessLog.BufferBytes)),
		}
	}
	for dir, names := range map[api.Direction][2]string{
		api.Inbound:  {logHTTPInbound, logTCPInbound},
		api.Outbound: {logHTTPOutbound, logTCPOutbound},
	} {
		h, err := anypb.New(&grpclogv3.HttpGrpcAccessLogConfig{
			CommonConfig: common(names[0]),
			// grpc_response_status: the trailer, or the header of a
			// trailers-only response.
			AdditionalResponseHeadersToLog:  []string{"grpc-status"},
			AdditionalResponseTrailersToLog: []string{"grpc-status"},
		})
		if err != nil {
			return nil, err
		}
		e.httpLogs[dir] = &accesslogv3.AccessLog{Name: httpGRPCLogger, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: h}}
		t, err := anypb.New(&grpclogv3.TcpGrpcAccessLogConfig{CommonConfig: common(names[1])})
		if err != nil {
			return nil, err
		}
		e.tcpLogs[dir] = &accesslogv3.AccessLog{Name: tcpGRPCLogger, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: t}}
	}

	tr := cfg.Tracing
	if tr.OTelAddress == "" {
		return e, nil
	}
	names := make([]string, 0, len(tr.CustomTags))
	for name := range tr.CustomTags {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		e.tags = append(e.tags, customTag(name, tr.CustomTags[name]))
	}
	host, portStr, err := net.SplitHostPort(tr.OTelAddress)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, err
	}
	h2, err := anypb.New(&upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}}})
	if err != nil {
		return nil, err
	}
	discovery := clusterv3.Cluster_STRICT_DNS
	if _, err := netip.ParseAddr(host); err == nil {
		discovery = clusterv3.Cluster_STATIC
	}
	e.cluster = &clusterv3.Cluster{
		Name:                 OTelCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: discovery},
		ConnectTimeout:       durationpb.New(5 * time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: OTelCluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}},
				}},
			}}}},
		},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{httpOptionsKey: h2},
	}
	return e, nil
}

func customTag(name string, t CustomTag) *tracingv3.CustomTag {
	ct := &tracingv3.CustomTag{Tag: name}
	switch {
	case t.Literal != "":
		ct.Type = &tracingv3.CustomTag_Literal_{Literal: &tracingv3.CustomTag_Literal{Value: t.Literal}}
	case t.Header != "":
		ct.Type = &tracingv3.CustomTag_RequestHeader{RequestHeader: &tracingv3.CustomTag_Header{Name: t.Header, DefaultValue: t.Default}}
	default:
		ct.Type = &tracingv3.CustomTag_Environment_{Environment: &tracingv3.CustomTag_Environment{Name: t.Environment, DefaultValue: t.Default}}
	}
	return ct
}

func envoyProxy(p *xdsapi.Proxy) bool {
	return p != nil && (p.Type == xdsapi.Sidecar || p.Type == xdsapi.Gateway)
}

// HTTPAccessLogs implements api.EnvoyConfig.
func (e *envoyConfig) HTTPAccessLogs(p *xdsapi.Proxy, dir api.Direction) []*accesslogv3.AccessLog {
	l, ok := e.httpLogs[dir]
	if !envoyProxy(p) || !ok {
		return nil
	}
	return []*accesslogv3.AccessLog{proto.Clone(l).(*accesslogv3.AccessLog)}
}

// TCPAccessLogs implements api.EnvoyConfig.
func (e *envoyConfig) TCPAccessLogs(p *xdsapi.Proxy, dir api.Direction) ([]*accesslogv3.AccessLog, *tcpv3.TcpProxy_TcpAccessLogOptions) {
	l, ok := e.tcpLogs[dir]
	if !envoyProxy(p) || !ok {
		return nil, nil
	}
	// One entry when the connection is accepted (opened) and one when it
	// closes (closed, bytes).
	return []*accesslogv3.AccessLog{proto.Clone(l).(*accesslogv3.AccessLog)},
		&tcpv3.TcpProxy_TcpAccessLogOptions{FlushAccessLogOnStart: true}
}

// Tracing implements api.EnvoyConfig.
func (e *envoyConfig) Tracing(p *xdsapi.Proxy, _ api.Direction) *hcmv3.HttpConnectionManager_Tracing {
	if e.cluster == nil || !envoyProxy(p) {
		return nil
	}
	otel, err := anypb.New(&tracev3.OpenTelemetryConfig{
		GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: OTelCluster}}},
		ServiceName: serviceName(p),
	})
	if err != nil {
		return nil // cannot happen: the message is well-formed
	}
	t := &hcmv3.HttpConnectionManager_Tracing{
		RandomSampling: &typev3.Percent{Value: e.cfg.Tracing.SamplingPercent},
		Provider:       &tracev3.Tracing_Http{Name: otelTracer, ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: otel}},
	}
	for _, tag := range e.tags {
		t.CustomTags = append(t.CustomTags, proto.Clone(tag).(*tracingv3.CustomTag))
	}
	return t
}

// Clusters implements api.EnvoyConfig.
func (e *envoyConfig) Clusters(p *xdsapi.Proxy) []*clusterv3.Cluster {
	if e.cluster == nil || !envoyProxy(p) {
		return nil
	}
	return []*clusterv3.Cluster{proto.Clone(e.cluster).(*clusterv3.Cluster)}
}

// Key implements api.EnvoyConfig: the fragments read only the service name
// of the proxy, and only when tracing is on.
func (e *envoyConfig) Key(p *xdsapi.Proxy) string {
	if e.cluster == nil || !envoyProxy(p) {
		return ""
	}
	return "trace:" + serviceName(p)
}

// serviceName is the name a proxy's spans carry: its canonical service and
// namespace (app.namespace), as tracing backends show Istio's.
func serviceName(p *xdsapi.Proxy) string {
	name := ""
	for _, l := range []string{"service.istio.io/canonical-name", "app.kubernetes.io/name", "app"} {
		if v := p.Labels[l]; v != "" {
			name = v
			break
		}
	}
	if name == "" {
		name = workloadName(p)
	}
	if p.Namespace == "" {
		return name
	}
	return name + "." + p.Namespace
}

// workloadName is the workload a proxy belongs to: WORKLOAD_NAME from its
// node metadata (Istio's injector sets it to the Deployment, StatefulSet,
// ... name), else the pod or VM name from its node ID.
func workloadName(p *xdsapi.Proxy) string {
	if w := p.Metadata[metaWorkloadName]; w != "" {
		return w
	}
	if p.Name != "" {
		return p.Name
	}
	return unknown
}

// metaWorkloadName is Istio's node metadata key for the workload name.
const metaWorkloadName = "WORKLOAD_NAME"
