package registry

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
	"github.com/meshd/meshd/modules/pilot/model"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func snapshot(t *testing.T, yaml string) *galleyapi.Snapshot {
	t.Helper()
	r := decode.Decode("test.yaml", []byte(yaml))
	for _, f := range r.Findings {
		if f.Severity == galleyapi.SeverityError {
			t.Fatalf("decode: %v", f)
		}
	}
	return galleyapi.NewSnapshot(1, r.Objects)
}

const entries = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {name: grpc, number: 9080, protocol: GRPC}
  - {name: http-admin, number: 9090, targetPort: 19090}
  workloadSelector:
    labels: {app: reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: shop, labels: {app: reviews}}
spec:
  address: 127.0.0.1
  labels: {version: v1}
  ports: {grpc: 50051}
  serviceAccount: reviews
  locality: eu/west-1/a
  weight: 3
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other-ns, namespace: elsewhere, labels: {app: reviews}}
spec:
  address: 127.0.0.9
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: shop}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  exportTo: ["."]
  ports:
  - {name: https, number: 443, protocol: TLS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: inline, namespace: shop}
spec:
  hosts: [db.shop.internal, db-alias.shop.internal]
  resolution: STATIC
  ports:
  - {name: tcp, number: 5432, protocol: TCP}
  endpoints:
  - {address: 127.0.0.2}
  - {address: 127.0.0.3, ports: {tcp: 15432}}
`

func TestBuildServices(t *testing.T) {
	services := BuildServices(snapshot(t, entries), []Workload{{
		Name: "vm-1", Namespace: "shop", Address: "127.0.0.5", Labels: map[string]string{"app": "reviews", "version": "v2"},
		Ports: map[string]uint32{"grpc": 50052}, ServiceAccount: "reviews", Healthy: false,
	}})
	by := map[string]*model.Service{}
	for _, s := range services {
		by[s.Hostname] = s
	}
	if len(by) != 4 {
		t.Fatalf("got %d services, want 4 (reviews, api.example.com, two inline hosts)", len(by))
	}

	rev := by["reviews.shop.svc.cluster.local"]
	if p, _ := rev.Port(9080); p.Protocol != model.ProtocolGRPC {
		t.Fatalf("reviews port 9080 = %+v", p)
	}
	grpc := rev.EndpointsFor(9080)
	if len(grpc) != 2 {
		t.Fatalf("reviews grpc endpoints = %d, want 2 (WorkloadEntry in shop + registered VM; not the other namespace)", len(grpc))
	}
	we := grpc[0]
	if we.Address != "127.0.0.1" || we.Port != 50051 || we.Labels["version"] != "v1" || we.Labels["app"] != "reviews" ||
		we.Locality.Zone != "west-1" || we.Weight != 3 || we.ServiceAccount != "reviews" || we.Health != model.Healthy {
		t.Fatalf("WorkloadEntry endpoint = %+v", we)
	}
	if vm := grpc[1]; vm.Address != "127.0.0.5" || vm.Port != 50052 || vm.Health != model.Unhealthy {
		t.Fatalf("registered endpoint = %+v", vm)
	}
	admin := rev.EndpointsFor(9090)
	if len(admin) != 2 || admin[0].Port != 19090 {
		t.Fatalf("http-admin endpoints use targetPort when the workload names no port: %+v", admin[0])
	}

	ext := by["api.example.com"]
	if !ext.MeshExternal || ext.Resolution != model.ResolutionDNS || ext.VisibleTo("other") || !ext.VisibleTo("shop") {
		t.Fatalf("external = %+v", ext)
	}
	if eps := ext.Endpoints; len(eps) != 1 || eps[0].Address != "api.example.com" || eps[0].Port != 443 {
		t.Fatalf("DNS entry without endpoints resolves its host: %+v", eps)
	}

	db := by["db-alias.shop.internal"]
	if eps := db.EndpointsFor(5432); len(eps) != 2 || eps[1].Port != 15432 || eps[0].Port != 5432 {
		t.Fatalf("inline endpoints = %+v %+v", eps[0], eps[1])
	}
}

// fakeSource reports states pushed to it by the test, and can fail on demand.
type fakeSource struct {
	states chan State
	fail   chan error
	runs   atomic.Int32
}

func newFake() *fakeSource {
	return &fakeSource{states: make(chan State, 4), fail: make(chan error, 1)}
}

func (f *fakeSource) Run(ctx context.Context, sink Sink) error {
	f.runs.Add(1)
	for {
		select {
		case st := <-f.states:
			sink.Update(st)
		case err := <-f.fail:
			return err
		case <-ctx.Done():
			return nil
		}
	}
}

func svc(host, ns, source string, eps ...string) *model.Service {
	s := &model.Service{Hostname: host, Namespace: ns, Source: source, Ports: []model.Port{{Name: "http", Number: 80, Protocol: model.ProtocolHTTP}}}
	for _, a := range eps {
		s.Endpoints = append(s.Endpoints, &model.Endpoint{Address: a, Port: 8080, ServicePort: 80})
	}
	return s.Finalize()
}

func waitChanged(t *testing.T, a *Aggregate) {
	t.Helper()
	select {
	case <-a.Changed():
	case <-time.After(5 * time.Second):
		t.Fatal("no change signalled")
	}
}

func TestAggregatePrecedenceConflictsAndRestart(t *testing.T) {
	a := New(slog.New(slog.NewTextHandler(io.Discard, nil)), []string{"kubernetes", "consul", SourceConfig})
	k8s, consul := newFake(), newFake()
	for name, s := range map[string]Source{"kubernetes": k8s, "consul": consul} {
		if err := a.Add(name, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Add("consul", consul); err == nil {
		t.Fatal("adding a source twice must fail")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	if a.Synced() {
		t.Fatal("synced before any source reported")
	}
	consul.states <- State{Services: []*model.Service{svc("web.shop", "shop", "consul", "127.0.0.20"), svc("db.shop", "shop", "consul", "127.0.0.30")}}
	waitChanged(t, a)
	if a.Synced() || len(a.Pending()) != 1 {
		t.Fatalf("synced with kubernetes pending: %v", a.Pending())
	}
	k8s.states <- State{Services: []*model.Service{svc("web.shop", "shop", "kubernetes", "127.0.0.10")}}
	waitChanged(t, a)
	if !a.Synced() {
		t.Fatal("not synced after both reported")
	}

	v := a.View()
	web, _ := v.Service(model.Key{Hostname: "web.shop", Namespace: "shop"})
	if web.Source != "kubernetes" || web.Endpoints[0].Address != "127.0.0.10" {
		t.Fatalf("web from %s with %s, want kubernetes' definition and endpoints only", web.Source, web.Endpoints[0].Address)
	}
	if len(v.Conflicts) != 1 || v.Conflicts[0].Winner != "kubernetes" || v.Conflicts[0].Losers[0] != "consul" {
		t.Fatalf("conflicts = %+v", v.Conflicts)
	}
	if !v.HasHost("db.shop") || v.HasHost("nope") {
		t.Fatal("HasHost wrong")
	}
	if a.View() != v {
		t.Fatal("View rebuilt without a change")
	}

	// Endpoint-only change in the winner: Diff says endpoints, not definitions.
	k8s.states <- State{Services: []*model.Service{svc("web.shop", "shop", "kubernetes", "127.0.0.10", "127.0.0.11")}}
	waitChanged(t, a)
	v2 := a.View()
	ch := Diff(v, v2)
	if ch.Definitions || len(ch.Endpoints) != 1 || ch.Endpoints[0].Hostname != "web.shop" {
		t.Fatalf("Diff = %+v, want endpoints of web.shop only", ch)
	}

	// A failing source keeps its last state and is restarted.
	consul.fail <- errors.New("consul agent unreachable")
	deadline := time.Now().Add(5 * time.Second)
	for consul.runs.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("failed source not restarted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, ok := a.View().Service(model.Key{Hostname: "db.shop", Namespace: "shop"}); !ok {
		t.Fatal("a failed source's last state was dropped")
	}
}

func TestDiff(t *testing.T) {
	base := svc("a", "ns", "config", "127.0.0.1")
	mk := func(ss ...*model.Service) *View {
		v := &View{byKey: map[model.Key]*model.Service{}, byHost: map[string][]*model.Service{}}
		for _, s := range ss {
			v.byKey[s.Key()] = s
			v.Services = append(v.Services, s)
		}
		return v
	}
	changedPort := svc("a", "ns", "config", "127.0.0.1")
	changedPort = &model.Service{Hostname: "a", Namespace: "ns", Source: "config", Ports: []model.Port{{Name: "http", Number: 81}}, Endpoints: changedPort.Endpoints}
	changedPort.Finalize()
	tests := []struct {
		name      string
		old, cur  *View
		wantDefs  bool
		wantEPs   int
		wantEmpty bool
	}{
		{"same pointer", mk(base), mk(base), false, 0, true},
		{"equal rebuilt", mk(base), mk(svc("a", "ns", "config", "127.0.0.1")), false, 0, true},
		{"endpoint added", mk(base), mk(svc("a", "ns", "config", "127.0.0.1", "127.0.0.2")), false, 1, false},
		{"port changed", mk(base), mk(changedPort), true, 0, false},
		{"service added", mk(base), mk(base, svc("b", "ns", "config")), true, 0, false},
		{"service removed", mk(base, svc("b", "ns", "config")), mk(base), true, 0, false},
		{"first view", nil, mk(base), true, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch := Diff(tt.old, tt.cur)
			if ch.Definitions != tt.wantDefs || len(ch.Endpoints) != tt.wantEPs || ch.Empty() != tt.wantEmpty {
				t.Fatalf("Diff = %+v", ch)
			}
		})
	}
}

func TestConfigSourceRegistration(t *testing.T) {
	a := New(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	cs := NewConfigSource()
	if err := a.Add(SourceConfig, cs); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitChanged(t, a)

	cs.SetConfig(snapshot(t, entries))
	waitChanged(t, a)
	v1 := a.View()
	rev := model.Key{Hostname: "reviews.shop.svc.cluster.local", Namespace: "shop"}
	s1, _ := v1.Service(rev)
	if len(s1.EndpointsFor(9080)) != 1 {
		t.Fatalf("before registration: %d endpoints", len(s1.EndpointsFor(9080)))
	}

	if err := cs.Register(Workload{Name: "vm", Namespace: "shop", Address: "not-an-ip"}); err == nil {
		t.Fatal("invalid registration accepted")
	}
	if err := cs.Register(Workload{Name: "vm", Namespace: "shop", Address: "127.0.0.7", Labels: map[string]string{"app": "reviews"}, Healthy: true}); err != nil {
		t.Fatal(err)
	}
	waitChanged(t, a)
	v2 := a.View()
	ch := Diff(v1, v2)
	if ch.Definitions || len(ch.Endpoints) != 1 || ch.Endpoints[0] != rev {
		t.Fatalf("registration Diff = %+v, want an endpoint-only change of reviews", ch)
	}
	// Unchanged services keep their pointers.
	k := model.Key{Hostname: "api.example.com", Namespace: "shop"}
	e1, _ := v1.Service(k)
	e2, _ := v2.Service(k)
	if e1 != e2 {
		t.Fatal("unchanged service got a new pointer")
	}

	if !cs.Deregister("shop", "vm") || cs.Deregister("shop", "vm") {
		t.Fatal("Deregister result wrong")
	}
	waitChanged(t, a)
	s3, _ := a.View().Service(rev)
	if len(s3.EndpointsFor(9080)) != 1 {
		t.Fatal("deregistered endpoint still served")
	}
}
