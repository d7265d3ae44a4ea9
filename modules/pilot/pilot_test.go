package pilot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
	xdsapi "github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/xdstest"
)

const reviewsHost = "reviews.shop.svc.cluster.local"

// reviewsYAML is one gRPC service with two WorkloadEntries; weight sets the
// second one's weight and route is the VirtualService's route section.
func reviewsYAML(weight int, route string) string {
	return fmt.Sprintf(`
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [%[3]s]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: grpc, number: 9080, protocol: GRPC}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: r1, namespace: shop}
spec: {address: 127.0.0.1, ports: {grpc: 19081}, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: r2, namespace: shop}
spec: {address: 127.0.0.1, ports: {grpc: 19082}, labels: {app: reviews, version: v2}, weight: %[1]d}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
%[2]s
`, weight, route, reviewsHost)
}

const defaultRoute = `  - route: [{destination: {host: reviews}}]`

// proxylessNode is the node a grpc-go client in shop sends.
func proxylessNode(id string) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{xdsapi.MetaNamespace: "shop", xdsapi.MetaGenerator: "grpc"})
	return &corev3.Node{Id: id, Metadata: md}
}

// expect receives responses until one of typeURL arrives (ACKing the
// others), then ACKs it and returns it.
func expect(t *testing.T, c *xdstest.SotwClient, typeURL string, names []string) *discovery.DiscoveryResponse {
	t.Helper()
	r := c.Recv(5 * time.Second)
	if r.GetTypeUrl() != typeURL {
		t.Fatalf("got a %s response, want %s", xdsapi.ShortType(r.GetTypeUrl()), xdsapi.ShortType(typeURL))
	}
	c.Ack(r, names...)
	return r
}

// TestEndpointChangePushesOnlyEDS subscribes like grpc-go does and checks
// on the wire that an endpoint change (a WorkloadEntry's weight, a
// workload registered at run time, a WorkloadEntry removed) sends one EDS
// response and nothing else, while a routing change sends only RDS.
func TestEndpointChangePushesOnlyEDS(t *testing.T) {
	e := start(t, reviewsYAML(1, defaultRoute), nil)
	c := xdstest.NewSotw(t, xdstest.Dial(t, e.XDSAddr()), proxylessNode("raw-client"))
	listener := reviewsHost + ":9080"
	cluster := "outbound|9080||" + reviewsHost

	c.Subscribe(xdsapi.ListenerType, listener)
	expect(t, c, xdsapi.ListenerType, []string{listener})
	c.Subscribe(xdsapi.RouteType, listener)
	expect(t, c, xdsapi.RouteType, []string{listener})
	c.Subscribe(xdsapi.ClusterType, cluster)
	expect(t, c, xdsapi.ClusterType, []string{cluster})
	c.Subscribe(xdsapi.EndpointType, cluster)
	r := expect(t, c, xdsapi.EndpointType, []string{cluster})
	if got := weights(t, r); !slices.Equal(got, []uint32{1, 1}) {
		t.Fatalf("initial endpoint weights %v", got)
	}
	c.None(200 * time.Millisecond)
	full := pushes(t, e, "full")

	// A WorkloadEntry's weight: EDS only.
	e.galley.apply(t, reviewsYAML(4, defaultRoute))
	r = expect(t, c, xdsapi.EndpointType, []string{cluster})
	if got := weights(t, r); !slices.Equal(got, []uint32{1, 4}) {
		t.Fatalf("endpoint weights after the change %v, want [1 4]", got)
	}
	c.None(300 * time.Millisecond)

	// A workload registered at run time: EDS only.
	code, body := e.do(t, http.MethodPut, "/registry/workloads/shop/vm-1",
		`{"address": "127.0.0.2", "labels": {"app": "reviews"}, "ports": {"grpc": 19083}, "healthy": true}`)
	if code != http.StatusCreated {
		t.Fatalf("register: %d %s", code, body)
	}
	r = expect(t, c, xdsapi.EndpointType, []string{cluster})
	if got := weights(t, r); len(got) != 3 {
		t.Fatalf("endpoints after registering a workload: %v", got)
	}
	c.None(300 * time.Millisecond)

	if got := pushes(t, e, "full"); got != full {
		t.Fatalf("endpoint changes caused %d full pushes", got-full)
	}
	_, pz := e.do(t, http.MethodGet, "/debug/pilotz", "")
	if !strings.Contains(pz, `"lastPush": "eds"`) || !strings.Contains(pz, cluster) {
		t.Fatalf("/debug/pilotz does not show the EDS push of %s:\n%s", cluster, pz)
	}

	// A routing change: a full push, but only RDS differs on the wire.
	e.galley.apply(t, reviewsYAML(4, `  - timeout: 1s
    route: [{destination: {host: reviews}}]`))
	expect(t, c, xdsapi.RouteType, []string{listener})
	c.None(300 * time.Millisecond)
	if got := pushes(t, e, "full"); got != full+1 {
		t.Fatalf("a VirtualService change caused %d full pushes, want 1", got-full)
	}
}

func weights(t *testing.T, r *discovery.DiscoveryResponse) []uint32 {
	t.Helper()
	if len(r.GetResources()) != 1 {
		t.Fatalf("EDS response with %d resources, want 1", len(r.GetResources()))
	}
	var cla endpointv3.ClusterLoadAssignment
	if err := r.GetResources()[0].UnmarshalTo(&cla); err != nil {
		t.Fatal(err)
	}
	var out []uint32
	for _, l := range cla.GetEndpoints() {
		for _, ep := range l.GetLbEndpoints() {
			out = append(out, ep.GetLoadBalancingWeight().GetValue())
		}
	}
	return out
}

// pushes reads pilot's push counter of a kind.
func pushes(t *testing.T, e *env, kind string) uint64 {
	t.Helper()
	mfs, err := e.host.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "meshd_pilot_push_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return uint64(m.GetCounter().GetValue())
				}
			}
		}
	}
	t.Fatal("no meshd_pilot_push_requests_total")
	return 0
}

func TestWorkloadAPI(t *testing.T) {
	e := start(t, reviewsYAML(1, defaultRoute), map[string]any{"maxWorkloads": 2})
	tests := []struct {
		name, method, path, body string
		code                     int
		contains                 string
	}{
		{"bad json", "PUT", "/registry/workloads/shop/a", `{`, 400, "decode workload"},
		{"unknown field", "PUT", "/registry/workloads/shop/a", `{"address": "10.0.0.1", "colour": "red"}`, 400, "unknown field"},
		{"bad address", "PUT", "/registry/workloads/shop/a", `{"address": "nope"}`, 400, "not an IP address"},
		{"bad name", "PUT", "/registry/workloads/shop/A_B", `{"address": "10.0.0.1"}`, 400, "RFC 1123"},
		{"body names another", "PUT", "/registry/workloads/shop/a", `{"name": "b", "address": "10.0.0.1"}`, 400, "the body names"},
		{"bad port", "PUT", "/registry/workloads/shop/a", `{"address": "10.0.0.1", "ports": {"grpc": 70000}}`, 400, "out of range"},
		{"create", "PUT", "/registry/workloads/shop/a", `{"address": "10.0.0.1", "labels": {"app": "reviews"}, "healthy": true}`, 201, `"name": "a"`},
		{"replace", "PUT", "/registry/workloads/shop/a", `{"address": "10.0.0.3", "labels": {"app": "reviews"}, "healthy": true}`, 200, "10.0.0.3"},
		{"second", "PUT", "/registry/workloads/other/b", `{"address": "10.0.0.2"}`, 201, ""},
		{"over the limit", "PUT", "/registry/workloads/other/c", `{"address": "10.0.0.4"}`, 429, "maxWorkloads"},
		{"replace at the limit", "PUT", "/registry/workloads/other/b", `{"address": "10.0.0.5"}`, 200, ""},
		{"list", "GET", "/registry/workloads", "", 200, `"namespace": "other"`},
		{"delete", "DELETE", "/registry/workloads/other/b", "", 204, ""},
		{"delete again", "DELETE", "/registry/workloads/other/b", "", 404, "no registered workload"},
	}
	for _, tt := range tests {
		code, body := e.do(t, tt.method, tt.path, tt.body)
		if code != tt.code || !strings.Contains(body, tt.contains) {
			t.Errorf("%s: %d %s, want %d containing %q", tt.name, code, body, tt.code, tt.contains)
		}
	}
	// The registered workload is an endpoint of reviews, shown in registryz.
	waitFor(t, 2*time.Second, "workload in registryz", func() error {
		_, body := e.do(t, "GET", "/debug/registryz", "")
		var rz struct {
			Services []struct {
				Hostname  string
				Endpoints []struct{ Address, Workload, Health string }
			}
		}
		if err := json.Unmarshal([]byte(body), &rz); err != nil {
			return err
		}
		for _, s := range rz.Services {
			for _, ep := range s.Endpoints {
				if s.Hostname == reviewsHost && ep.Address == "10.0.0.3" && ep.Workload == "a" && ep.Health == "HEALTHY" {
					return nil
				}
			}
		}
		return errNotYet
	})
}

// neverSyncs is a registry source that never reports.
type neverSyncs struct{}

func (neverSyncs) Run(ctx context.Context, _ registry.Sink) error { <-ctx.Done(); return nil }

// TestNotReadyUntilSourcesSync checks that pilot neither reports ready nor
// serves config while a registry source has not reported: a proxy must not
// be handed a half-discovered mesh.
func TestNotReadyUntilSourcesSync(t *testing.T) {
	sinks := make(chan registry.Sink, 1)
	src := sourceFunc(func(ctx context.Context, s registry.Sink) error {
		sinks <- s
		<-ctx.Done()
		return nil
	})
	e := start(t, reviewsYAML(1, defaultRoute), nil, func(e *env) {
		if err := e.pilot.AddSource("consul", src); err != nil {
			t.Fatal(err)
		}
		if err := e.pilot.AddSource("config", neverSyncs{}); err == nil {
			t.Fatal("AddSource accepted pilot's own source name")
		}
	})
	time.Sleep(200 * time.Millisecond)
	err := e.pilot.Ready()
	if err == nil || !strings.Contains(err.Error(), "consul") {
		t.Fatalf("Ready() = %v, want an error naming the consul source", err)
	}
	g := &generator{m: e.pilot, typeURL: xdsapi.ClusterType}
	if _, err := g.Generate(context.Background(), xdsapi.GenerateRequest{Proxy: &xdsapi.Proxy{Type: xdsapi.Proxyless, Namespace: "shop"}}); !errors.Is(err, errNotSynced) {
		t.Fatalf("Generate before sync: %v", err)
	}
	if err := e.pilot.AddSource("late", neverSyncs{}); !errors.Is(err, registry.ErrStarted) {
		t.Fatalf("AddSource after Run: %v", err)
	}
	sink := receive(t, sinks)
	sink.Update(registry.State{})
	waitFor(t, 2*time.Second, "ready after the source reported", e.pilot.Ready)
}

// receive waits for the sink a test source was started with.
func receive(t *testing.T, sinks chan registry.Sink) registry.Sink {
	t.Helper()
	select {
	case s := <-sinks:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("the source was not started")
		return nil
	}
}

type sourceFunc func(context.Context, registry.Sink) error

func (f sourceFunc) Run(ctx context.Context, s registry.Sink) error { return f(ctx, s) }

// TestHostIndexForGalley checks what pilot tells galley's analysis: hosts
// from discovery sources but not from galley's own ServiceEntries, and
// workloads registered at run time, handed over again only when that
// changes.
func TestHostIndexForGalley(t *testing.T) {
	sinks := make(chan registry.Sink, 1)
	e := start(t, reviewsYAML(1, defaultRoute), nil, func(e *env) {
		_ = e.pilot.AddSource("consul", sourceFunc(func(ctx context.Context, s registry.Sink) error {
			sinks <- s
			<-ctx.Done()
			return nil
		}))
	})
	sink := receive(t, sinks)
	svc := &model.Service{Hostname: "billing.service.consul", Namespace: "shop", Source: "consul",
		Ports:     []model.Port{{Name: "grpc", Number: 7000, Protocol: model.ProtocolGRPC}},
		Endpoints: []*model.Endpoint{{Address: "10.1.0.1", Port: 7000, ServicePort: 7000, Labels: map[string]string{"app": "billing"}}}}
	sink.Update(registry.State{Services: []*model.Service{svc.Finalize()}})
	waitFor(t, 2*time.Second, "ready", e.pilot.Ready)
	waitFor(t, 2*time.Second, "host index", func() error {
		if len(e.galley.hostIndexes()) == 0 {
			return errNotYet
		}
		return nil
	})
	h := e.galley.hostIndexes()[0]
	if !h.HasHost("billing.service.consul") || h.HasHost(reviewsHost) {
		t.Fatalf("HasHost: consul host %v, galley's own ServiceEntry host %v", h.HasHost("billing.service.consul"), h.HasHost(reviewsHost))
	}
	w := h.(interface {
		HasWorkload(string, map[string]string) bool
	})
	if !w.HasWorkload("shop", map[string]string{"app": "billing"}) || w.HasWorkload("shop", map[string]string{"app": "vm"}) {
		t.Fatal("HasWorkload does not answer from discovery endpoints")
	}
	// A routing change hands nothing over; a registration does.
	n := len(e.galley.hostIndexes())
	e.galley.apply(t, reviewsYAML(1, `  - timeout: 2s
    route: [{destination: {host: reviews}}]`))
	if code, body := e.do(t, "PUT", "/registry/workloads/shop/vm-1", `{"address": "10.2.0.1", "labels": {"app": "vm"}}`); code != 201 {
		t.Fatalf("register: %d %s", code, body)
	}
	waitFor(t, 2*time.Second, "a new host index", func() error {
		hs := e.galley.hostIndexes()
		if len(hs) != n+1 {
			return fmt.Errorf("%d hand-overs after the change, want %d", len(hs), n+1)
		}
		if !hs[n].(interface {
			HasWorkload(string, map[string]string) bool
		}).HasWorkload("shop", map[string]string{"app": "vm"}) {
			return errors.New("the registered workload is missing")
		}
		return nil
	})
}

// serverListeners is a ProxylessListenerExtension with one listener.
type serverListeners struct{}

func (serverListeners) ProxylessListeners(_ *index.Index, p *xdsapi.Proxy, names []string) []*listenerv3.Listener {
	const name = "grpc/server?xds.resource.listening_address=0.0.0.0:9080"
	if names != nil && !slices.Contains(names, name) {
		return nil
	}
	return []*listenerv3.Listener{{Name: name}}
}

func TestAddExtension(t *testing.T) {
	e := start(t, reviewsYAML(1, defaultRoute), nil, func(e *env) {
		if err := e.pilot.AddExtension(serverListeners{}); err != nil {
			t.Fatal(err)
		}
	})
	waitFor(t, 2*time.Second, "ready", e.pilot.Ready)
	if err := e.pilot.AddExtension(serverListeners{}); err == nil {
		t.Fatal("AddExtension after Run succeeded")
	}
	g := &generator{m: e.pilot, typeURL: xdsapi.ListenerType}
	p := &xdsapi.Proxy{Type: xdsapi.Proxyless, Namespace: "shop"}
	res, err := g.Generate(context.Background(), xdsapi.GenerateRequest{Key: g.Key(p), Proxy: p,
		Names: []string{"grpc/server?xds.resource.listening_address=0.0.0.0:9080", reviewsHost + ":9080"}})
	if err != nil || len(res) != 2 {
		t.Fatalf("listeners %v, %v; want the client and the server listener", res, err)
	}
}

// TestWaitsForGalley checks that pilot does not push before galley has
// accepted a config, and starts by itself once it has, with no event.
func TestWaitsForGalley(t *testing.T) {
	e := start(t, reviewsYAML(1, defaultRoute), nil, func(e *env) { e.galley.notReady.Store(true) })
	time.Sleep(300 * time.Millisecond)
	if err := e.pilot.Ready(); err == nil || !strings.Contains(err.Error(), "galley") {
		t.Fatalf("Ready() = %v, want an error about galley", err)
	}
	e.galley.notReady.Store(false)
	waitFor(t, 2*time.Second, "ready once galley is", e.pilot.Ready)
}
