package telemetry

import (
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	grpclogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/modules/telemetry/api"
	xdsapi "github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/xdstest"
)

func tracingConfig() *Config {
	c := Default()
	c.Tracing = TracingConfig{OTelAddress: "otel-collector.observability.svc.cluster.local:4317", SamplingPercent: 12.5,
		CustomTags: map[string]CustomTag{
			"cluster":    {Literal: "east"},
			"user-agent": {Header: "user-agent", Default: "none"},
			"pod":        {Environment: "POD_NAME"},
		}}
	return c
}

func proxyOf(t *testing.T, id string) *xdsapi.Proxy {
	t.Helper()
	node := xdstest.Node("reviews-v1-abc", "default")
	node.Id = id
	p, err := xdsapi.ParseNode(node, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type validator interface {
	proto.Message
	ValidateAll() error
}

// validateDeep runs ValidateAll on m and on every message packed in an Any
// inside it, which protoc-gen-validate does not descend into: the typed
// configs of access loggers, tracers, filters and protocol options.
func validateDeep(t *testing.T, m proto.Message) {
	t.Helper()
	v, ok := m.(validator)
	if !ok {
		t.Fatalf("%T has no ValidateAll", m)
	}
	if err := v.ValidateAll(); err != nil {
		t.Fatalf("%T: %v", m, err)
	}
	var walk func(protoreflect.Message)
	walk = func(r protoreflect.Message) {
		r.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
			visit := func(mv protoreflect.Message) {
				if a, ok := mv.Interface().(*anypb.Any); ok {
					inner, err := a.UnmarshalNew()
					if err != nil {
						t.Fatalf("%s: %v (the type is not one Envoy knows)", a.GetTypeUrl(), err)
					}
					validateDeep(t, inner)
					return
				}
				walk(mv)
			}
			switch {
			case fd.IsList() && fd.Message() != nil:
				for i := range val.List().Len() {
					visit(val.List().Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Message() != nil:
				val.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool { visit(mv.Message()); return true })
			case fd.Message() != nil && !fd.IsMap():
				visit(val.Message())
			}
			return true
		})
	}
	walk(m.ProtoReflect())
}

// hcm builds an HTTP connection manager the way pilot does with the
// fragments, wrapped in a listener.
func hcmListener(t *testing.T, e api.EnvoyConfig, p *xdsapi.Proxy, dir api.Direction) (*listenerv3.Listener, *hcmv3.HttpConnectionManager) {
	t.Helper()
	router, _ := anypb.New(&routerv3.Router{})
	h := &hcmv3.HttpConnectionManager{
		StatPrefix: string(dir) + "_9080",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: "9080", VirtualHosts: []*routev3.VirtualHost{{Name: "reviews", Domains: []string{"*"}, Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "outbound|9080||reviews.default.svc.cluster.local"}}},
			}}}}}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
	}
	h.AccessLog = append(h.AccessLog, e.HTTPAccessLogs(p, dir)...)
	h.Tracing = e.Tracing(p, dir)
	packed, err := anypb.New(h)
	if err != nil {
		t.Fatal(err)
	}
	l := &listenerv3.Listener{
		Name: string(dir) + "_0.0.0.0_9080",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 9080}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: packed},
		}}}},
	}
	return l, h
}

// TestGeneratedConfigValidates builds the listeners, TCP proxies and
// clusters of a sidecar (both directions) and a gateway with the
// fragments, and validates them all the way down.
func TestGeneratedConfigValidates(t *testing.T) {
	e, err := newEnvoyConfig(tracingConfig())
	if err != nil {
		t.Fatal(err)
	}
	sidecar := proxyOf(t, "sidecar~10.0.0.2~reviews-v1-abc.default~default.svc.cluster.local")
	gateway := proxyOf(t, "router~10.0.0.9~ingress-1.istio-system~istio-system.svc.cluster.local")
	cases := []struct {
		name string
		p    *xdsapi.Proxy
		dir  api.Direction
		log  string
	}{
		{"sidecar inbound", sidecar, api.Inbound, logHTTPInbound},
		{"sidecar outbound", sidecar, api.Outbound, logHTTPOutbound},
		{"gateway", gateway, api.Outbound, logHTTPOutbound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, h := hcmListener(t, e, c.p, c.dir)
			validateDeep(t, l)

			if len(h.AccessLog) != 1 {
				t.Fatalf("%d access logs, want 1", len(h.AccessLog))
			}
			var als grpclogv3.HttpGrpcAccessLogConfig
			if err := h.AccessLog[0].GetTypedConfig().UnmarshalTo(&als); err != nil {
				t.Fatal(err)
			}
			cc := als.GetCommonConfig()
			if cc.GetLogName() != c.log || cc.GetGrpcService().GetEnvoyGrpc().GetClusterName() != "xds-grpc" ||
				cc.GetTransportApiVersion() != corev3.ApiVersion_V3 || cc.GetBufferFlushInterval().AsDuration() != time.Second {
				t.Errorf("access log config %v", cc)
			}
			if !contains(als.GetAdditionalResponseTrailersToLog(), "grpc-status") || !contains(als.GetAdditionalResponseHeadersToLog(), "grpc-status") {
				t.Error("grpc-status is not logged")
			}

			tr := h.GetTracing()
			if tr.GetRandomSampling().GetValue() != 12.5 || len(tr.GetCustomTags()) != 3 || tr.GetProvider().GetName() != otelTracer {
				t.Errorf("tracing %v", tr)
			}
			var otel tracev3.OpenTelemetryConfig
			if err := tr.GetProvider().GetTypedConfig().UnmarshalTo(&otel); err != nil {
				t.Fatal(err)
			}
			if otel.GetGrpcService().GetEnvoyGrpc().GetClusterName() != OTelCluster {
				t.Errorf("otel cluster %q", otel.GetGrpcService().GetEnvoyGrpc().GetClusterName())
			}
			if want := "reviews-v1-abc.default"; c.p == sidecar && otel.GetServiceName() != want {
				t.Errorf("service name %q, want %q", otel.GetServiceName(), want)
			}

			logs, opts := e.TCPAccessLogs(c.p, c.dir)
			tp := &tcpv3.TcpProxy{StatPrefix: "tcp", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "outbound|3306||db.default.svc.cluster.local"},
				AccessLog: logs, AccessLogOptions: opts}
			validateDeep(t, tp)
			if !opts.GetFlushAccessLogOnStart() {
				t.Error("TCP access logs do not flush on connection start; opened connections would not be counted")
			}

			clusters := e.Clusters(c.p)
			if len(clusters) != 1 || clusters[0].GetName() != OTelCluster {
				t.Fatalf("clusters %v", clusters)
			}
			validateDeep(t, clusters[0])
			if clusters[0].GetType() != clusterv3.Cluster_STRICT_DNS {
				t.Errorf("collector by name: type %v, want STRICT_DNS", clusters[0].GetType())
			}
			var po upstreamhttpv3.HttpProtocolOptions
			if err := clusters[0].GetTypedExtensionProtocolOptions()[httpOptionsKey].UnmarshalTo(&po); err != nil || po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
				t.Errorf("collector cluster does not speak HTTP/2 (OTLP/gRPC): %v", err)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestEnvoyConfigTracingOff(t *testing.T) {
	e, err := newEnvoyConfig(Default())
	if err != nil {
		t.Fatal(err)
	}
	p := proxyOf(t, "sidecar~10.0.0.2~reviews-v1-abc.default~default.svc.cluster.local")
	if e.Tracing(p, api.Inbound) != nil || e.Clusters(p) != nil || e.Key(p) != "" {
		t.Error("tracing config with tracing off")
	}
	l, _ := hcmListener(t, e, p, api.Inbound)
	validateDeep(t, l)
	if len(e.HTTPAccessLogs(p, api.Inbound)) != 1 {
		t.Error("no access log with tracing off")
	}
}

func TestEnvoyConfigProxyless(t *testing.T) {
	e, err := newEnvoyConfig(tracingConfig())
	if err != nil {
		t.Fatal(err)
	}
	p := proxyOf(t, "grpc-client-1")
	if p.Type != xdsapi.Proxyless {
		t.Fatalf("type %v", p.Type)
	}
	logs, opts := e.TCPAccessLogs(p, api.Outbound)
	if e.HTTPAccessLogs(p, api.Outbound) != nil || logs != nil || opts != nil || e.Tracing(p, api.Outbound) != nil || e.Clusters(p) != nil || e.Key(p) != "" {
		t.Error("proxyless client got Envoy config")
	}
}

func TestEnvoyConfigIsACopy(t *testing.T) {
	e, err := newEnvoyConfig(tracingConfig())
	if err != nil {
		t.Fatal(err)
	}
	p := proxyOf(t, "sidecar~10.0.0.2~reviews-v1-abc.default~default.svc.cluster.local")
	e.HTTPAccessLogs(p, api.Inbound)[0].Name = "changed"
	e.Clusters(p)[0].Name = "changed"
	if e.HTTPAccessLogs(p, api.Inbound)[0].Name == "changed" || e.Clusters(p)[0].Name == "changed" {
		t.Error("a caller's change leaked into the next call")
	}
}

func TestEnvoyConfigKey(t *testing.T) {
	e, err := newEnvoyConfig(tracingConfig())
	if err != nil {
		t.Fatal(err)
	}
	a := proxyOf(t, "sidecar~10.0.0.2~reviews-v1-abc.default~default.svc.cluster.local")
	b := proxyOf(t, "sidecar~10.0.0.3~reviews-v1-def.default~default.svc.cluster.local")
	// Same app label and namespace: same service name, same key.
	if e.Key(a) != e.Key(b) {
		t.Errorf("keys %q and %q differ for one service", e.Key(a), e.Key(b))
	}
	b.Labels = map[string]string{"app": "ratings"}
	if e.Key(a) == e.Key(b) {
		t.Error("proxies of different services share a key, so one would get the other's span service name")
	}
	if !strings.Contains(e.Key(b), "ratings.default") {
		t.Errorf("key %q", e.Key(b))
	}
}

func TestConfigValidate(t *testing.T) {
	ok := tracingConfig()
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"otel address":    func(c *Config) { c.Tracing.OTelAddress = "collector" },
		"otel port":       func(c *Config) { c.Tracing.OTelAddress = "collector:http" },
		"sampling":        func(c *Config) { c.Tracing.SamplingPercent = 101 },
		"tag two sources": func(c *Config) { c.Tracing.CustomTags["x"] = CustomTag{Literal: "a", Header: "b"} },
		"tag no source":   func(c *Config) { c.Tracing.CustomTags["x"] = CustomTag{Default: "a"} },
		"unknown metric":  func(c *Config) { c.Metrics.SeriesLimits["istio_requests"] = 5 },
		"limit zero":      func(c *Config) { c.Metrics.SeriesLimits["istio_requests_total"] = 0 },
		"max series":      func(c *Config) { c.Metrics.MaxSeries = 0 },
		"receiver":        func(c *Config) { c.Receiver.MaxMessageBytes = 0 },
		"cluster":         func(c *Config) { c.AccessLog.Cluster = "" },
		"file sink":       func(c *Config) { c.FileSink = FileSinkConfig{Path: "x", MaxBytes: 0} },
	} {
		c := tracingConfig()
		mut(c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
