package envoy

import (
	"fmt"
	"slices"
	"testing"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	grpclogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/telemetry"
	"github.com/meshd/meshd/xds/api"
)

// TestTelemetryExtension generates a sidecar's and a gateway's listeners
// with the telemetry module's real fragments (tracing on): every HTTP
// connection manager carries the access log for its direction and the
// tracing config, every TCP proxy its access log with the flush on
// connection start, and the whole output passes the checks every golden
// case does (ValidateAll down into the typed configs, Envoy's consistency
// rules, references), with telemetry's clusters added to CDS.
func TestTelemetryExtension(t *testing.T) {
	cfg := telemetry.Default()
	cfg.Tracing = telemetry.TracingConfig{OTelAddress: "otel-collector.observability:4317", SamplingPercent: 5,
		CustomTags: map[string]telemetry.CustomTag{"cluster": {Literal: "east"}}}
	tc, err := telemetry.NewEnvoyConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ix := testIndex(t, core.DefaultMeshConfig())
	g := New(Options{Extensions: []any{Telemetry{Config: tc}}})
	for _, p := range []*api.Proxy{productpage, ingress} {
		clusters := append(g.Clusters(ix, p), tc.Clusters(p)...)
		out := output{g.Listeners(ix, p), g.Routes(ix, p), clusters}
		checkOutput(t, ix, p, out)
		if !slices.ContainsFunc(clusters, func(c *clusterv3.Cluster) bool { return c.GetName() == telemetry.OTelCluster }) {
			t.Errorf("%s: no collector cluster", p.ID)
		}
		var hcms, tcps int
		for _, l := range out.listeners {
			want := "meshd/%s/outbound"
			if l.GetName() == VirtualInboundListener {
				want = "meshd/%s/inbound"
			}
			for _, fc := range append(slices.Clone(l.GetFilterChains()), l.GetDefaultFilterChain()) {
				fs := fc.GetFilters()
				if len(fs) == 0 {
					continue
				}
				switch fs[len(fs)-1].GetName() {
				case "envoy.filters.network.http_connection_manager":
					hcms++
					h := hcmOf(t, fc)
					checkLogName(t, l.GetName()+"/"+fc.GetName(), h.GetAccessLog(), want, "http")
					if h.GetTracing().GetProvider() == nil || h.GetTracing().GetRandomSampling().GetValue() != 5 {
						t.Errorf("%s/%s: tracing %v", l.GetName(), fc.GetName(), h.GetTracing())
					}
				case "envoy.filters.network.tcp_proxy":
					tcps++
					tp := tcpOf(t, fc)
					checkLogName(t, l.GetName()+"/"+fc.GetName(), tp.GetAccessLog(), want, "tcp")
					if !tp.GetAccessLogOptions().GetFlushAccessLogOnStart() {
						t.Errorf("%s/%s: TCP access log does not flush on start", l.GetName(), fc.GetName())
					}
				}
			}
		}
		if hcms == 0 || tcps == 0 {
			t.Errorf("%s: %d connection managers and %d TCP proxies checked; the mesh should give both", p.ID, hcms, tcps)
		}
	}
	if tc.Key(productpage) == "" {
		t.Error("tracing is on but the key part is empty")
	}
}

func checkLogName(t *testing.T, where string, logs []*accesslogv3.AccessLog, format, kind string) {
	t.Helper()
	want := fmt.Sprintf(format, kind)
	if len(logs) != 1 {
		t.Fatalf("%s: %d access logs, want telemetry's", where, len(logs))
	}
	var common interface {
		GetCommonConfig() *grpclogv3.CommonGrpcAccessLogConfig
	}
	if kind == "http" {
		var c grpclogv3.HttpGrpcAccessLogConfig
		if err := logs[0].GetTypedConfig().UnmarshalTo(&c); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		common = &c
	} else {
		var c grpclogv3.TcpGrpcAccessLogConfig
		if err := logs[0].GetTypedConfig().UnmarshalTo(&c); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		common = &c
	}
	if got := common.GetCommonConfig().GetLogName(); got != want {
		t.Errorf("%s: log name %q, want %q", where, got, want)
	}
	if got := common.GetCommonConfig().GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != XDSCluster {
		t.Errorf("%s: access logs go to cluster %q, want the bootstrap's %s", where, got, XDSCluster)
	}
}
