package consul

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sink keeps every state it is given.
type sink struct {
	mu     sync.Mutex
	states []registry.State
	ch     chan struct{}
}

func newSink() *sink { return &sink{ch: make(chan struct{}, 1)} }

func (s *sink) Update(st registry.State) {
	s.mu.Lock()
	s.states = append(s.states, st)
	s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.states)
}

func (s *sink) last() (registry.State, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.states) == 0 {
		return registry.State{}, false
	}
	return s.states[len(s.states)-1], true
}

// waitFor waits until cond holds for the latest state.
func (s *sink) waitFor(t *testing.T, timeout time.Duration, what string, cond func(registry.State) bool) registry.State {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if st, ok := s.last(); ok && cond(st) {
			return st
		}
		select {
		case <-s.ch:
		case <-deadline.C:
			st, _ := s.last()
			t.Fatalf("timed out after %s waiting for %s; last state: %s", timeout, what, dump(st))
		}
	}
}

func dump(st registry.State) string {
	var b strings.Builder
	for _, s := range st.Services {
		fmt.Fprintf(&b, "\n  %s/%s ports=%v", s.Hostname, s.Namespace, s.Ports)
		for _, e := range s.Endpoints {
			fmt.Fprintf(&b, "\n    %s:%d->%d %s %s", e.Address, e.Port, e.ServicePort, e.Health, e.Workload)
		}
	}
	return b.String()
}

func find(st registry.State, host string) *model.Service {
	for _, s := range st.Services {
		if s.Hostname == host {
			return s
		}
	}
	return nil
}

func healthyAddrs(s *model.Service) []string {
	var out []string
	if s == nil {
		return nil
	}
	for _, e := range s.Endpoints {
		if e.Health == model.Healthy {
			out = append(out, e.Address+":"+strconv.Itoa(int(e.Port)))
		}
	}
	return out
}

func TestBuildMapsInstances(t *testing.T) {
	cfg := Default()
	s, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	entries := []*api.ServiceEntry{
		{
			Node: &api.Node{Node: "n1", Address: "10.0.0.1", Datacenter: "dc-east", Locality: &api.Locality{Region: "r", Zone: "z1"}},
			Service: &api.AgentService{ID: "web-1", Service: "web", Port: 8080, Tags: []string{"v1", "track=stable"},
				Meta: map[string]string{"protocol": "grpc", "version": "v1"}, Weights: api.AgentWeights{Passing: 3}},
			Checks: api.HealthChecks{{Status: api.HealthPassing}, {Status: api.HealthPassing}},
		},
		{
			Node:    &api.Node{Node: "n2", Address: "10.0.0.2", Datacenter: "dc-east"},
			Service: &api.AgentService{ID: "web-2", Service: "web", Address: "10.0.1.2", Port: 31000, Meta: map[string]string{"protocol": "grpc", MetaPort: "8080"}},
			Checks:  api.HealthChecks{{Status: api.HealthPassing}, {Status: api.HealthWarning}},
		},
		{
			Node:    &api.Node{Node: "n3", Address: "10.0.0.3", Datacenter: "dc-east"},
			Service: &api.AgentService{ID: "web-sidecar", Service: "web", Kind: api.ServiceKindConnectProxy, Port: 21000},
		},
		{
			Node:    &api.Node{Node: "n4", Address: "10.0.0.4", Datacenter: "dc-east"},
			Service: &api.AgentService{ID: "web-k8s", Service: "web", Port: 9090, Meta: map[string]string{MetaHostname: "web.shop.svc.cluster.local", MetaNamespace: "shop", MetaServiceAccount: "web-sa"}},
		},
	}
	got := s.build("web", entries)
	if len(got) != 2 {
		t.Fatalf("got %d services, want 2 (default host and meta host): %v", len(got), got)
	}
	def := got[0]
	if def.Hostname != "web.service.consul" || def.Namespace != "default" || def.Source != SourceName {
		t.Fatalf("default service = %s/%s from %s", def.Hostname, def.Namespace, def.Source)
	}
	if len(def.Ports) != 1 || def.Ports[0] != (model.Port{Name: "grpc-8080", Number: 8080, Protocol: model.ProtocolGRPC}) {
		t.Fatalf("ports = %+v, want one grpc-8080 (dynamic port mapped through meshd-port)", def.Ports)
	}
	if len(def.Endpoints) != 2 {
		t.Fatalf("endpoints = %d, want 2 (connect proxy skipped)", len(def.Endpoints))
	}
	e1, e2 := def.Endpoints[0], def.Endpoints[1]
	if e1.Address != "10.0.0.1" || e1.Port != 8080 || e1.Health != model.Healthy || e1.Weight != 3 {
		t.Errorf("e1 = %+v", e1)
	}
	if e1.Locality != (model.Locality{Region: "dc-east", Zone: "z1"}) {
		t.Errorf("e1 locality = %v, want datacenter as region and the node's zone", e1.Locality)
	}
	if want := map[string]string{"v1": "", "track": "stable", "protocol": "grpc", "version": "v1"}; !equalMaps(e1.Labels, want) {
		t.Errorf("e1 labels = %v, want %v", e1.Labels, want)
	}
	if e1.Namespace != "default" || e1.ServiceAccount != "web" || e1.Workload != "n1/web-1" {
		t.Errorf("e1 identity = %s/%s %s", e1.Namespace, e1.ServiceAccount, e1.Workload)
	}
	if e2.Address != "10.0.1.2" || e2.Port != 31000 || e2.ServicePort != 8080 || e2.Health != model.Unhealthy {
		t.Errorf("e2 = %+v, want service address, dynamic port behind 8080, unhealthy (a warning is not passing)", e2)
	}
	k8s := got[1]
	if k8s.Hostname != "web.shop.svc.cluster.local" || k8s.Namespace != "shop" || k8s.Endpoints[0].ServiceAccount != "web-sa" || k8s.Ports[0].Protocol != model.ProtocolTCP {
		t.Errorf("meta-mapped service = %s/%s %+v %+v", k8s.Hostname, k8s.Namespace, k8s.Ports, k8s.Endpoints[0])
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"default", func(*Config) {}, ""},
		{"url", func(c *Config) { c.Address = "https://consul.example:8501" }, ""},
		{"bad url", func(c *Config) { c.Address = "ftp://x" }, "address"},
		{"empty address", func(c *Config) { c.Address = "" }, "address"},
		{"long wait", func(c *Config) { c.WaitTime = time.Hour }, "waitTime"},
		{"cert without key", func(c *Config) { c.TLS.CertFile = "c.pem" }, "tls"},
		{"no namespace", func(c *Config) { c.Namespace = "" }, "namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mod(&c)
			err := c.Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate() = %v, want error mentioning %q", err, tc.want)
			}
		})
	}
}

// fakeConsul serves the two endpoints the source reads, with indexes the
// test controls, and counts requests.
type fakeConsul struct {
	mu       sync.Mutex
	index    uint64
	services map[string][]*api.ServiceEntry
	changed  chan struct{}
	fail     atomic.Bool
	requests atomic.Int64
}

func newFakeConsul() *fakeConsul {
	return &fakeConsul{index: 10, services: map[string][]*api.ServiceEntry{}, changed: make(chan struct{})}
}

func (f *fakeConsul) set(index uint64, name string, entries []*api.ServiceEntry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.index = index
	if entries == nil {
		delete(f.services, name)
	} else {
		f.services[name] = entries
	}
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeConsul) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.requests.Add(1)
	if f.fail.Load() {
		http.Error(w, "boom", http.StatusInternalServerError)
		return
	}
	wantIndex, _ := strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
	wait, _ := time.ParseDuration(r.URL.Query().Get("wait"))
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		f.mu.Lock()
		idx, ch := f.index, f.changed
		var body any
		switch {
		case r.URL.Path == "/v1/catalog/services":
			m := map[string][]string{}
			for name := range f.services {
				m[name] = nil
			}
			body = m
		case strings.HasPrefix(r.URL.Path, "/v1/health/service/"):
			list := f.services[strings.TrimPrefix(r.URL.Path, "/v1/health/service/")]
			if list == nil {
				list = []*api.ServiceEntry{}
			}
			body = list
		default:
			f.mu.Unlock()
			http.NotFound(w, r)
			return
		}
		f.mu.Unlock()
		// Consul answers at once when the index differs (also when it went
		// backwards), else when it changes or the wait ends.
		if wantIndex == 0 || idx != wantIndex {
			w.Header().Set("X-Consul-Index", strconv.FormatUint(idx, 10))
			_ = json.NewEncoder(w).Encode(body)
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			w.Header().Set("X-Consul-Index", strconv.FormatUint(idx, 10))
			_ = json.NewEncoder(w).Encode(body)
			return
		case <-r.Context().Done():
			return
		}
	}
}

func entry(node, addr string, port int, status string) *api.ServiceEntry {
	return &api.ServiceEntry{
		Node:    &api.Node{Node: node, Address: addr, Datacenter: "dc1"},
		Service: &api.AgentService{ID: node, Service: "x", Port: port},
		Checks:  api.HealthChecks{{Status: status}},
	}
}

func startSource(t *testing.T, cfg Config) (*Source, *sink, func()) {
	t.Helper()
	src, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	snk := newSink()
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, snk) }()
	return src, snk, func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}
}

// TestBlockingQueryDiscipline drives the source against a fake Consul whose
// index misbehaves: it goes backwards, it is 0, the server fails. The source
// must follow each change, and the request count shows it never spins.
func TestBlockingQueryDiscipline(t *testing.T) {
	f := newFakeConsul()
	f.set(10, "x", []*api.ServiceEntry{entry("a", "10.0.0.1", 80, api.HealthPassing)})
	srv := httptest.NewServer(f)
	defer srv.Close()
	cfg := Default()
	cfg.Address = srv.URL
	cfg.MinInterval = 50 * time.Millisecond
	cfg.MaxBackoff = time.Second
	src, snk, stop := startSource(t, cfg)
	defer stop()

	snk.waitFor(t, 5*time.Second, "first state", func(st registry.State) bool {
		return len(healthyAddrs(find(st, "x.service.consul"))) == 1
	})

	// Idle: every watch is parked in a blocking query (once the first
	// rate-limited follow-up queries are out).
	time.Sleep(200 * time.Millisecond)
	base := f.requests.Load()
	time.Sleep(500 * time.Millisecond)
	if n := f.requests.Load() - base; n != 0 {
		t.Fatalf("%d requests while Consul was idle, want 0 (blocking queries, not polling)", n)
	}

	// A change wakes the watches once each.
	f.set(11, "x", []*api.ServiceEntry{entry("a", "10.0.0.1", 80, api.HealthPassing), entry("b", "10.0.0.2", 80, api.HealthPassing)})
	snk.waitFor(t, 5*time.Second, "second endpoint", func(st registry.State) bool {
		return len(healthyAddrs(find(st, "x.service.consul"))) == 2
	})

	// The index goes backwards (a restored snapshot): the source resets
	// and still sees the new state.
	f.set(3, "x", []*api.ServiceEntry{entry("c", "10.0.0.3", 80, api.HealthPassing)})
	snk.waitFor(t, 5*time.Second, "state after index reset", func(st registry.State) bool {
		a := healthyAddrs(find(st, "x.service.consul"))
		return len(a) == 1 && a[0] == "10.0.0.3:80"
	})

	// Index 0 must not make a watch spin: rate limiting bounds the
	// requests to about one per minInterval per watch.
	f.set(0, "x", []*api.ServiceEntry{entry("d", "10.0.0.4", 80, api.HealthCritical)})
	snk.waitFor(t, 5*time.Second, "unhealthy endpoint", func(st registry.State) bool {
		s := find(st, "x.service.consul")
		return s != nil && len(s.Endpoints) == 1 && s.Endpoints[0].Health == model.Unhealthy
	})
	base = f.requests.Load()
	time.Sleep(time.Second)
	if n := f.requests.Load() - base; n > 2*(1000/50)+4 {
		t.Fatalf("%d requests in 1s with index 0, want at most ~%d (rate-limited to one per minInterval per watch)", n, 2*(1000/50))
	}
	f.set(20, "x", []*api.ServiceEntry{entry("d", "10.0.0.4", 80, api.HealthCritical)})

	// Errors back off and keep the last state.
	before := snk.count()
	f.fail.Store(true)
	base = f.requests.Load()
	f.set(21, "x", []*api.ServiceEntry{entry("d", "10.0.0.4", 80, api.HealthCritical)})
	time.Sleep(1500 * time.Millisecond)
	if n := f.requests.Load() - base; n > 16 {
		t.Fatalf("%d requests in 1.5s against a failing Consul, want few (backoff)", n)
	}
	if snk.count() != before {
		t.Fatalf("errors reported a state; want the last good state kept")
	}
	f.fail.Store(false)
	f.set(22, "x", []*api.ServiceEntry{entry("e", "10.0.0.5", 80, api.HealthPassing)})
	snk.waitFor(t, 5*time.Second, "recovery after errors", func(st registry.State) bool {
		a := healthyAddrs(find(st, "x.service.consul"))
		return len(a) == 1 && a[0] == "10.0.0.5:80"
	})
	var sawErrors bool
	for _, w := range src.Status() {
		sawErrors = sawErrors || w.Errors > 0
	}
	if !sawErrors {
		t.Errorf("Status() shows no errors: %+v", src.Status())
	}

	// A service that leaves the catalog leaves the state.
	f.set(23, "x", nil)
	snk.waitFor(t, 5*time.Second, "service gone", func(st registry.State) bool { return find(st, "x.service.consul") == nil })
}

// TestNoUpdateWithoutChange: a wakeup that brings the same data (Consul's
// index moves for unrelated writes) reports nothing.
func TestNoUpdateWithoutChange(t *testing.T) {
	f := newFakeConsul()
	f.set(10, "x", []*api.ServiceEntry{entry("a", "10.0.0.1", 80, api.HealthPassing)})
	srv := httptest.NewServer(f)
	defer srv.Close()
	cfg := Default()
	cfg.Address = srv.URL
	cfg.MinInterval = 10 * time.Millisecond
	_, snk, stop := startSource(t, cfg)
	defer stop()
	first := snk.waitFor(t, 5*time.Second, "first state", func(st registry.State) bool { return len(st.Services) == 1 })
	for i := uint64(11); i < 16; i++ {
		f.set(i, "x", []*api.ServiceEntry{entry("a", "10.0.0.1", 80, api.HealthPassing)})
		time.Sleep(30 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if n := snk.count(); n != 1 {
		t.Fatalf("%d states reported, want 1 (unchanged data must not be reported)", n)
	}
	f.set(16, "y", []*api.ServiceEntry{entry("b", "10.0.0.2", 80, api.HealthPassing)})
	next := snk.waitFor(t, 5*time.Second, "second service", func(st registry.State) bool { return len(st.Services) == 2 })
	if find(next, "x.service.consul") != find(first, "x.service.consul") {
		t.Errorf("unchanged service got a new pointer; sources must reuse them")
	}
}
