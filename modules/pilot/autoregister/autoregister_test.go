package autoregister

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/core/bus"
	galleyapi "github.com/meshd/meshd/modules/galley/api"
	pilotapi "github.com/meshd/meshd/modules/pilot/api"
	"github.com/meshd/meshd/modules/pilot/autoregister/healthpb"
	"github.com/meshd/meshd/modules/pilot/internal/pilottest"
	xdsapi "github.com/meshd/meshd/xds/api"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const td = "example.org"

const groups = `
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: billing, namespace: shop}
spec:
  metadata: {labels: {app: billing}}
  template:
    serviceAccount: billing
    labels: {tier: backend}
    ports: {grpc: 7070, http: 8080}
    network: net-1
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: anyone, namespace: shop}
spec:
  template: {}
`

// fakeRegistrar is pilot's Registrar in memory.
type fakeRegistrar struct {
	mu sync.Mutex
	ws map[string]pilotapi.Workload
}

func (f *fakeRegistrar) RegisterWorkload(w pilotapi.Workload) error {
	if err := w.Validate(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ws[w.Namespace+"/"+w.Name] = w
	return nil
}

func (f *fakeRegistrar) DeregisterWorkload(ns, name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.ws[ns+"/"+name]
	delete(f.ws, ns+"/"+name)
	return ok
}

func (f *fakeRegistrar) Workloads() []pilotapi.Workload { return nil }

func (f *fakeRegistrar) get(key string) (pilotapi.Workload, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w, ok := f.ws[key]
	return w, ok
}

type fakeGalley struct {
	mu   sync.Mutex
	snap *galleyapi.Snapshot
}

func (g *fakeGalley) Accepted() *galleyapi.Snapshot {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.snap
}

type fakeXDS struct {
	mu       sync.Mutex
	statuses []xdsapi.ProxyStatus
}

func (*fakeXDS) RegisterService(func(grpc.ServiceRegistrar), bool) error { return nil }
func (*fakeXDS) AckedVersions(string, string) []string                   { return nil }
func (x *fakeXDS) Statuses() []xdsapi.ProxyStatus {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.statuses
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	m   *Module
	reg *fakeRegistrar
	gal *fakeGalley
	x   *fakeXDS
	clk *clock
	bus *bus.Bus
}

func newFixture(t *testing.T, yaml string) *fixture {
	t.Helper()
	f := &fixture{
		m:   &Module{cfg: &Config{GracePeriod: 10 * time.Second, MaxPending: 2}, log: discard()},
		reg: &fakeRegistrar{ws: map[string]pilotapi.Workload{}},
		gal: &fakeGalley{snap: pilottest.Snapshot(t, 1, yaml)},
		x:   &fakeXDS{},
		clk: &clock{t: time.Unix(1_700_000_000, 0)},
		bus: bus.New(bus.Options{}),
	}
	var err error
	if f.m.m, err = newMetrics(prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	f.m.setup(f.reg, f.gal, f.x, f.bus, f.clk.now)
	t.Cleanup(func() { f.m.Cleanup(); f.bus.Close() })
	return f
}

// agent returns the proxy of an agent stream with a verified identity.
func agent(ns, sa, name, group string, labels map[string]string, ports string) *xdsapi.Proxy {
	p := &xdsapi.Proxy{
		ID: "agent/" + ns + "/" + name, Type: xdsapi.Proxyless, IP: "10.0.0.7", IPs: []string{"10.0.0.7"},
		Namespace: ns, ServiceAccount: sa, Labels: labels,
		Identity: xdsapi.SPIFFEID(td, ns, sa), IdentityVerified: true,
		Metadata: map[string]string{MetaGroup: group, MetaWorkloadName: name},
		Node:     &corev3.Node{Id: "agent/" + ns + "/" + name},
	}
	if ports != "" {
		p.Metadata[MetaPorts] = ports
	}
	return p
}

func (f *fixture) connect(id string, p *xdsapi.Proxy) {
	f.m.handle([]bus.Event{xdsapi.ProxyConnected{ConnID: id, Proxy: p}})
}

func (f *fixture) disconnect(id string) {
	f.m.handle([]bus.Event{xdsapi.ProxyDisconnected{ConnID: id}})
}

func (f *fixture) expire() {
	f.m.mu.Lock()
	f.m.expireLocked()
	f.m.mu.Unlock()
}

func (f *fixture) refused(key string) string {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	for k, e := range f.m.entries {
		if k.String() == key {
			return e.refused
		}
	}
	return ""
}

func TestPermit(t *testing.T) {
	snap := pilottest.Snapshot(t, 1, groups+`---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: pinned, namespace: shop}
spec:
  template: {address: 10.1.1.1, serviceAccount: billing}
`)
	tests := []struct {
		name   string
		proxy  func() *xdsapi.Proxy
		want   *pilotapi.Workload
		reason string
		errHas string
	}{
		{
			name: "template, group metadata and agent labels merge; agent ports override the template's",
			proxy: func() *xdsapi.Proxy {
				return agent("shop", "billing", "vm-1", "billing", map[string]string{"version": "v2"}, "grpc=9090")
			},
			want: &pilotapi.Workload{Name: "vm-1", Namespace: "shop", Address: "10.0.0.7", ServiceAccount: "billing", Network: "net-1",
				Labels: map[string]string{"app": "billing", "tier": "backend", "version": "v2"},
				Ports:  map[string]uint32{"grpc": 9090, "http": 8080}},
		},
		{
			name: "claimed identity never registers",
			proxy: func() *xdsapi.Proxy {
				p := agent("shop", "billing", "vm-1", "billing", nil, "")
				p.IdentityVerified = false
				return p
			},
			reason: "unverified", errHas: "verified certificate",
		},
		{name: "group from another namespace is not found", proxy: func() *xdsapi.Proxy { return agent("other", "billing", "vm-1", "billing", nil, "") },
			reason: "no_group", errHas: "no WorkloadGroup other/billing"},
		{name: "service account must be the template's", proxy: func() *xdsapi.Proxy { return agent("shop", "payments", "vm-1", "billing", nil, "") },
			reason: "service_account", errHas: `admits service account "billing"; the certificate is for "payments"`},
		{name: "a template without a service account admits default", proxy: func() *xdsapi.Proxy { return agent("shop", "default", "vm-2", "anyone", nil, "") },
			want: &pilotapi.Workload{Name: "vm-2", Namespace: "shop", Address: "10.0.0.7", ServiceAccount: "default"}},
		{name: "and nothing else", proxy: func() *xdsapi.Proxy { return agent("shop", "billing", "vm-2", "anyone", nil, "") },
			reason: "service_account"},
		{name: "labels cannot change the template's", proxy: func() *xdsapi.Proxy {
			return agent("shop", "billing", "vm-1", "billing", map[string]string{"app": "payments"}, "")
		}, reason: "labels", errHas: `label app="payments" conflicts`},
		{name: "only the template's port names", proxy: func() *xdsapi.Proxy { return agent("shop", "billing", "vm-1", "billing", nil, "admin=15000") },
			reason: "ports", errHas: `port "admin" is not one of`},
		{name: "malformed ports", proxy: func() *xdsapi.Proxy { return agent("shop", "billing", "vm-1", "billing", nil, "grpc") },
			reason: "ports", errHas: "is not name=port"},
		{name: "an address is required", proxy: func() *xdsapi.Proxy {
			p := agent("shop", "billing", "vm-1", "billing", nil, "")
			p.IP, p.IPs = "", nil
			return p
		}, reason: "address"},
		{name: "the template must not fix an address", proxy: func() *xdsapi.Proxy { return agent("shop", "billing", "vm-1", "pinned", nil, "") },
			reason: "template"},
		{name: "names are validated", proxy: func() *xdsapi.Proxy { return agent("shop", "default", "VM_1", "anyone", nil, "") },
			reason: "invalid", errHas: "RFC 1123"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.proxy()
			w, reason, err := permit(p, p.Metadata[MetaWorkloadName], snap)
			if tt.want != nil {
				if err != nil {
					t.Fatal(err)
				}
				if !sameWorkload(w, tt.want) {
					t.Fatalf("got %+v\nwant %+v", w, tt.want)
				}
				return
			}
			if err == nil || reason != tt.reason || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("got reason %q err %v; want reason %q containing %q", reason, err, tt.reason, tt.errHas)
			}
		})
	}
}

func TestLifecycleGracePeriod(t *testing.T) {
	f := newFixture(t, groups)
	p := agent("shop", "billing", "vm-1", "billing", nil, "grpc=7070")
	f.connect("c1", p)
	w, ok := f.reg.get("shop/vm-1")
	if !ok || !w.Healthy || w.Address != "10.0.0.7" {
		t.Fatalf("not registered healthy: %+v %v", w, ok)
	}
	// A second stream (Envoy, or a reconnect racing the old stream's end)
	// keeps it through the first one's end.
	f.connect("c2", p)
	f.disconnect("c1")
	f.clk.advance(time.Hour)
	f.expire()
	if _, ok := f.reg.get("shop/vm-1"); !ok {
		t.Fatal("deregistered while a stream is connected")
	}
	// Last stream gone: kept during the grace period, then removed.
	f.disconnect("c2")
	f.clk.advance(9 * time.Second)
	f.expire()
	if _, ok := f.reg.get("shop/vm-1"); !ok {
		t.Fatal("deregistered before the grace period ended")
	}
	// Back within the grace period: kept, and the timer is off.
	f.connect("c3", p)
	f.disconnect("c3")
	f.clk.advance(9 * time.Second)
	f.expire()
	if _, ok := f.reg.get("shop/vm-1"); !ok {
		t.Fatal("reconnect within the grace period did not reset it")
	}
	f.clk.advance(2 * time.Second)
	f.expire()
	if _, ok := f.reg.get("shop/vm-1"); ok {
		t.Fatal("still registered after the grace period")
	}
	if n := len(f.m.entries); n != 0 {
		t.Fatalf("%d entries left", n)
	}
	// Streams that do not ask for a group are not registrations.
	q := agent("shop", "billing", "vm-9", "", nil, "")
	f.connect("c4", q)
	if _, ok := f.reg.get("shop/vm-9"); ok || len(f.m.entries) != 0 {
		t.Fatal("a stream without a group was registered")
	}
}

func TestConfigChangesRecheck(t *testing.T) {
	f := newFixture(t, `
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: billing, namespace: shop}
spec:
  template: {serviceAccount: someone-else}
`)
	f.connect("c1", agent("shop", "billing", "vm-1", "billing", nil, ""))
	if _, ok := f.reg.get("shop/vm-1"); ok {
		t.Fatal("registered against the group's service account")
	}
	if r := f.refused("shop/vm-1"); !strings.Contains(r, "admits service account") {
		t.Fatalf("refusal not recorded: %q", r)
	}
	// The operator fixes the group: the waiting agent is registered.
	f.gal.mu.Lock()
	f.gal.snap = pilottest.Snapshot(t, 2, groups)
	f.gal.mu.Unlock()
	f.m.handle([]bus.Event{galleyapi.ConfigAccepted{Revision: 2}})
	w, ok := f.reg.get("shop/vm-1")
	if !ok || w.Labels["tier"] != "backend" {
		t.Fatalf("not registered after the fix: %+v", w)
	}
	// The group goes away: so does the workload.
	f.gal.mu.Lock()
	f.gal.snap = pilottest.Snapshot(t, 3, "")
	f.gal.mu.Unlock()
	f.m.handle([]bus.Event{galleyapi.ConfigAccepted{Revision: 3}})
	if _, ok := f.reg.get("shop/vm-1"); ok {
		t.Fatal("still registered without a WorkloadGroup")
	}
}

func TestNameInUseByAnotherIdentity(t *testing.T) {
	f := newFixture(t, groups)
	f.connect("c1", agent("shop", "default", "vm-1", "anyone", nil, ""))
	// Another identity with a group that admits it claims the same name.
	f.connect("c2", agent("shop", "billing", "vm-1", "billing", nil, ""))
	w, _ := f.reg.get("shop/vm-1")
	if w.ServiceAccount != "default" {
		t.Fatalf("name taken over by %s", w.ServiceAccount)
	}
	// Once the first is gone, the other may have the name.
	f.disconnect("c1")
	w, _ = f.reg.get("shop/vm-1")
	if w.ServiceAccount != "billing" {
		t.Fatalf("got %+v", w)
	}
}

// ctxAs is a request context from a caller with a verified certificate for
// id (or none).
func ctxAs(id string) context.Context {
	var state tls.ConnectionState
	if id != "" {
		u, _ := url.Parse(id)
		state.VerifiedChains = [][]*x509.Certificate{{{URIs: []*url.URL{u}}}}
	}
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: state}})
}

func TestHealthReports(t *testing.T) {
	f := newFixture(t, groups)
	h := &healthServer{m: f.m}
	billing := xdsapi.SPIFFEID(td, "shop", "billing")

	// A report before the stream: kept, not registered, and said so.
	resp, err := h.Report(ctxAs(billing), &healthpb.HealthReport{WorkloadName: "vm-1", Healthy: false, Message: "connection refused"})
	if err != nil || resp.Registered || !strings.Contains(resp.Reason, "has not seen") || resp.Refused {
		t.Fatalf("%+v %v", resp, err)
	}
	// The stream of an agent that probes: the kept report applies.
	p := agent("shop", "billing", "vm-1", "billing", nil, "")
	p.Metadata[MetaProbe] = "tcp"
	f.connect("c1", p)
	if w, ok := f.reg.get("shop/vm-1"); !ok || w.Healthy {
		t.Fatalf("want registered unhealthy: %+v %v", w, ok)
	}
	resp, err = h.Report(ctxAs(billing), &healthpb.HealthReport{WorkloadName: "vm-1", Healthy: true})
	if err != nil || !resp.Registered {
		t.Fatalf("%+v %v", resp, err)
	}
	if w, _ := f.reg.get("shop/vm-1"); !w.Healthy {
		t.Fatal("report did not make it healthy")
	}
	// Another identity may not speak for it, nor may a caller without a certificate.
	_, err = h.Report(ctxAs(xdsapi.SPIFFEID(td, "shop", "default")), &healthpb.HealthReport{WorkloadName: "vm-1"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("other identity: %v", err)
	}
	_, err = h.Report(ctxAs(""), &healthpb.HealthReport{WorkloadName: "vm-1"})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no certificate: %v", err)
	}
	// A refused registration is told to the agent as such.
	f.connect("c2", agent("shop", "billing", "vm-2", "billing", map[string]string{"app": "x"}, ""))
	resp, err = h.Report(ctxAs(billing), &healthpb.HealthReport{WorkloadName: "vm-2", Healthy: true})
	if err != nil || resp.Registered || !resp.Refused || !strings.Contains(resp.Reason, "conflicts") {
		t.Fatalf("%+v %v", resp, err)
	}
	// Reports for unknown workloads are bounded (MaxPending 2 here).
	for i, name := range []string{"a", "b", "c"} {
		resp, _ := h.Report(ctxAs(billing), &healthpb.HealthReport{WorkloadName: name})
		if i == 2 && !strings.Contains(resp.Reason, "no more reports") {
			t.Fatalf("third pending report kept: %+v", resp)
		}
	}
}

func TestResyncDropsVanishedStreams(t *testing.T) {
	f := newFixture(t, groups)
	f.connect("c1", agent("shop", "billing", "vm-1", "billing", nil, ""))
	f.connect("c2", agent("shop", "billing", "vm-2", "billing", nil, ""))
	f.x.statuses = []xdsapi.ProxyStatus{{ConnID: "c2"}}
	f.m.handle([]bus.Event{bus.Resync{}})
	f.clk.advance(11 * time.Second)
	f.expire()
	if _, ok := f.reg.get("shop/vm-1"); ok {
		t.Fatal("vm-1's stream vanished but it stayed registered")
	}
	if _, ok := f.reg.get("shop/vm-2"); !ok {
		t.Fatal("vm-2 lost")
	}
}

// TestRunLoop drives the module through the bus and its own timer.
func TestRunLoop(t *testing.T) {
	f := newFixture(t, groups)
	f.m.cfg.GracePeriod = 50 * time.Millisecond
	f.m.now = time.Now
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.m.Run(ctx) }()
	defer func() { cancel(); <-done }()

	f.bus.Publish(xdsapi.ProxyConnected{ConnID: "c1", Proxy: agent("shop", "billing", "vm-1", "billing", nil, "")})
	waitFor(t, func() bool { _, ok := f.reg.get("shop/vm-1"); return ok })
	f.bus.Publish(xdsapi.ProxyDisconnected{ConnID: "c1"})
	waitFor(t, func() bool { _, ok := f.reg.get("shop/vm-1"); return !ok })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPorts(t *testing.T) {
	ports, err := ParsePorts(" http=8080, grpc=7070")
	if err != nil || FormatPorts(ports) != "grpc=7070,http=8080" {
		t.Fatalf("%v %v", ports, err)
	}
	for _, bad := range []string{"x=0", "x=70000", "=1", "x=1,x=2", "x"} {
		if _, err := ParsePorts(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if got := slices.Collect(func(yield func(string) bool) { yield(FormatPorts(nil)) }); got[0] != "" {
		t.Fatal(got)
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
