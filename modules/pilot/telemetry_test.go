package pilot

import (
	"context"
	"strings"
	"testing"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

	"github.com/meshd/meshd/modules/pilot/generate"
	"github.com/meshd/meshd/modules/pilot/generate/envoy"
	"github.com/meshd/meshd/modules/pilot/internal/pilottest"
	telemetryapi "github.com/meshd/meshd/modules/telemetry/api"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// fakeTelemetry hands out recognisable fragments.
type fakeTelemetry struct{}

func (fakeTelemetry) HTTPAccessLogs(p *xdsapi.Proxy, dir telemetryapi.Direction) []*accesslogv3.AccessLog {
	return []*accesslogv3.AccessLog{{Name: "als-" + string(dir)}}
}
func (fakeTelemetry) TCPAccessLogs(*xdsapi.Proxy, telemetryapi.Direction) ([]*accesslogv3.AccessLog, *tcpv3.TcpProxy_TcpAccessLogOptions) {
	return nil, nil
}
func (fakeTelemetry) Tracing(*xdsapi.Proxy, telemetryapi.Direction) *hcmv3.HttpConnectionManager_Tracing {
	return &hcmv3.HttpConnectionManager_Tracing{}
}
func (fakeTelemetry) Clusters(*xdsapi.Proxy) []*clusterv3.Cluster {
	return []*clusterv3.Cluster{{Name: "otel-collector"}}
}
func (fakeTelemetry) Key(*xdsapi.Proxy) string { return "tracing-on" }

// TestTelemetryFragments checks that with telemetry on, a sidecar's
// connection managers stream access logs and trace, its CDS has the
// collector, and its listener and cluster keys say so; proxyless clients
// get none of it.
func TestTelemetryFragments(t *testing.T) {
	tc := fakeTelemetry{}
	m := &Module{cache: generate.NewCache(), tc: tc, ext: []any{telemetryExtension{tc}}}
	m.envoy = envoy.New(envoy.Options{Extensions: m.ext})
	m.ix.Store(pilottest.Index(t, reviewsYAML(1, defaultRoute)))
	m.synced.Store(true)
	p := pilottest.Proxy(xdsapi.Sidecar, "shop", map[string]string{"app": "client"}, "")

	lds := &generator{m: m, typeURL: xdsapi.ListenerType}
	if !strings.Contains(lds.Key(p), "tracing-on") {
		t.Errorf("listener key %q lacks the telemetry key", lds.Key(p))
	}
	if eds := (&generator{m: m, typeURL: xdsapi.EndpointType}); strings.Contains(eds.Key(p), "tracing-on") {
		t.Errorf("endpoint key %q has the telemetry key; endpoints do not depend on it", eds.Key(p))
	}
	res, err := lds.Generate(context.Background(), xdsapi.GenerateRequest{Key: lds.Key(p), Proxy: p})
	if err != nil {
		t.Fatal(err)
	}
	hcms := 0
	for _, r := range res {
		for _, fc := range r.Message.(*listenerv3.Listener).GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var h hcmv3.HttpConnectionManager
				if f.GetTypedConfig().UnmarshalTo(&h) != nil {
					continue
				}
				hcms++
				if len(h.GetAccessLog()) == 0 || !strings.HasPrefix(h.GetAccessLog()[len(h.GetAccessLog())-1].GetName(), "als-") || h.GetTracing() == nil {
					t.Errorf("listener %s: connection manager without telemetry", r.Name)
				}
			}
		}
	}
	if hcms == 0 {
		t.Fatal("no connection manager in the sidecar's listeners")
	}
	cds := &generator{m: m, typeURL: xdsapi.ClusterType}
	res, err = cds.Generate(context.Background(), xdsapi.GenerateRequest{Key: cds.Key(p), Proxy: p})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range res {
		found = found || r.Name == "otel-collector"
	}
	if !found {
		t.Error("the collector cluster is missing from CDS")
	}

	// Proxyless clients: no fragments, no collector.
	pl := pilottest.Proxy(xdsapi.Proxyless, "shop", nil, "")
	res, _ = cds.Generate(context.Background(), xdsapi.GenerateRequest{Key: cds.Key(pl), Proxy: pl})
	for _, r := range res {
		if r.Name == "otel-collector" {
			t.Error("a proxyless client was sent the collector cluster")
		}
	}
}
