package server_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/core/bus"
	"github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/server"
	"github.com/meshd/meshd/xds/xdstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const wait = 5 * time.Second

func cluster(name string, timeout time.Duration) api.Resource {
	return api.Resource{Name: name, Message: &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}},
		ConnectTimeout:       durationpb.New(timeout),
	}}
}

func cla(name string, ports ...uint32) api.Resource {
	var eps []*endpointv3.LbEndpoint
	for _, p := range ports {
		eps = append(eps, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: p}}}}}}})
	}
	return api.Resource{Name: name, Message: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: eps, LoadBalancingWeight: wrapperspb.UInt32(1)}}}}
}

// apiListener is a proxyless gRPC client listener using RDS.
func apiListener(name, route string) api.Resource {
	router, _ := anypb.New(&routerv3.Router{})
	hcm, _ := anypb.New(&hcmv3.HttpConnectionManager{
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: route,
			ConfigSource: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: "router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
	})
	return api.Resource{Name: name, Message: &listenerv3.Listener{Name: name, ApiListener: &listenerv3.ApiListener{ApiListener: hcm}}}
}

func route(name, cluster string) api.Resource {
	return api.Resource{Name: name, Message: &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{
		Name: name, Domains: []string{"*"}, Routes: []*routev3.Route{{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}}}}}}}}
}

func names(anys []*anypb.Any, typeURL string) []string {
	var out []string
	for _, a := range anys {
		m, err := a.UnmarshalNew()
		if err != nil {
			panic(err)
		}
		switch v := m.(type) {
		case *clusterv3.Cluster:
			out = append(out, v.GetName())
		case *endpointv3.ClusterLoadAssignment:
			out = append(out, v.GetClusterName())
		case *listenerv3.Listener:
			out = append(out, v.GetName())
		case *routev3.RouteConfiguration:
			out = append(out, v.GetName())
		}
		if a.GetTypeUrl() != typeURL {
			panic("type " + a.GetTypeUrl())
		}
	}
	sort.Strings(out)
	return out
}

func deltaNames(rs []*discovery.Resource) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.GetName())
	}
	sort.Strings(out)
	return out
}

func status1(t *testing.T, s *xdstest.Server, proxy, typeURL string) api.TypeStatus {
	t.Helper()
	for _, ps := range s.Statuses() {
		if ps.ID != proxy {
			continue
		}
		for _, ts := range ps.Types {
			if ts.TypeURL == typeURL {
				return ts
			}
		}
	}
	t.Fatalf("no status for %s %s", proxy, typeURL)
	return api.TypeStatus{}
}

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSotwWildcardSharedByKey(t *testing.T) {
	tests := []struct {
		name      string
		key       func(*api.Proxy) string
		wantCalls int
	}{
		{"one key for all shares one generation", nil, 1},
		{"key by namespace generates per namespace", func(p *api.Proxy) string { return p.Namespace }, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := xdstest.NewServer(t, server.Options{})
			gen := &xdstest.Generator{KeyFunc: tt.key}
			gen.Set("", cluster("a", time.Second), cluster("b", time.Second))
			if err := s.RegisterGenerator(api.ClusterType, gen); err != nil {
				t.Fatal(err)
			}
			cc := xdstest.Dial(t, s.Addr)
			var clients []*xdstest.SotwClient
			for i, ns := range []string{"ns1", "ns2", "ns1"} {
				c := xdstest.NewSotw(t, cc, xdstest.Node(fmt.Sprintf("p%d", i), ns))
				c.Subscribe(api.ClusterType)
				clients = append(clients, c)
			}
			var versions []string
			for _, c := range clients {
				r := c.Recv(wait)
				if got := names(r.GetResources(), api.ClusterType); !slices.Equal(got, []string{"a", "b"}) {
					t.Fatalf("resources %v", got)
				}
				versions = append(versions, r.GetVersionInfo())
				c.Ack(r)
			}
			if versions[0] != versions[1] || versions[1] != versions[2] {
				t.Errorf("same content, different versions: %v", versions)
			}
			if calls, _ := gen.Calls(); calls != tt.wantCalls {
				t.Errorf("generator ran %d times, want %d", calls, tt.wantCalls)
			}
			eventually(t, "SYNCED", func() bool {
				return status1(t, s, "sidecar~10.0.0.1~p2.ns1~ns1.svc.cluster.local", api.ClusterType).State == api.Synced
			})
		})
	}
}

// TestSotwByNameAndEndpointPush follows grpc-go's pattern: EDS subscribed
// by exact name, then endpoint-only pushes.
func TestSotwByNameAndEndpointPush(t *testing.T) {
	s := xdstest.NewServer(t, server.Options{})
	cds, eds := &xdstest.Generator{}, &xdstest.Generator{}
	cds.Set("", cluster("a", time.Second), cluster("b", time.Second), cluster("c", time.Second))
	eds.Set("", cla("a", 1), cla("b", 2), cla("c", 3))
	must(t, s.RegisterGenerator(api.ClusterType, cds))
	must(t, s.RegisterGenerator(api.EndpointType, eds))
	c := xdstest.NewSotw(t, xdstest.Dial(t, s.Addr), xdstest.Node("p", "ns"))

	c.Subscribe(api.ClusterType)
	rc := c.Recv(wait)
	c.Ack(rc)
	c.Subscribe(api.EndpointType, "a")
	r := c.Recv(wait)
	if got := names(r.GetResources(), api.EndpointType); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("asked for a, got %v", got)
	}
	c.Ack(r, "a")
	c.None(100 * time.Millisecond)

	c.Send(&discovery.DiscoveryRequest{TypeUrl: api.EndpointType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: []string{"a", "b"}})
	r = c.Recv(wait)
	if got := names(r.GetResources(), api.EndpointType); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("asked for a,b, got %v", got)
	}
	c.Ack(r, "a", "b")

	// An endpoint change to b sends b alone, and no CDS.
	eds.Set("", cla("a", 1), cla("b", 2, 22), cla("c", 3))
	s.Push(api.EndpointPush("test", "b"))
	r = c.Recv(wait)
	if r.GetTypeUrl() != api.EndpointType {
		t.Fatalf("endpoint push sent %s", r.GetTypeUrl())
	}
	if got := names(r.GetResources(), api.EndpointType); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("changed b, got %v", got)
	}
	c.Ack(r, "a", "b")
	// A change to c, which this proxy does not watch, sends nothing.
	eds.Set("", cla("a", 1), cla("b", 2, 22), cla("c", 3, 33))
	s.Push(api.EndpointPush("test", "c"))
	c.None(200 * time.Millisecond)
	_, calls := eds.Calls()
	if last := calls[len(calls)-1]; !slices.Equal(last, []string{"c"}) {
		t.Errorf("incremental push asked the generator for %v, want [c]", last)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestNackNotResent checks that a rejected version stays rejected: the
// proxy is not sent it again, the status says NACKED with the detail and
// the resource it names, and the next change is sent and heals it.
func TestNackNotResent(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(fmt.Sprintf("delta=%v", delta), func(t *testing.T) {
			var events []api.ProxyNacked
			evc := make(chan api.ProxyNacked, 4)
			s := xdstest.NewServer(t, server.Options{Publish: func(e busEvent) {
				if n, ok := e.(api.ProxyNacked); ok {
					evc <- n
				}
			}})
			gen := &xdstest.Generator{}
			gen.Set("", cluster("good", time.Second))
			must(t, s.RegisterGenerator(api.ClusterType, gen))
			cc := xdstest.Dial(t, s.Addr)
			node := xdstest.Node("p", "ns")
			id := node.GetId()

			type client interface {
				nack(msg string)
				ack()
				expect(names ...string)
				none(time.Duration)
			}
			var c client
			if delta {
				c = newDeltaHarness(t, cc, node)
			} else {
				c = newSotwHarness(t, cc, node)
			}
			c.expect("good")
			c.ack()
			eventually(t, "first ACK", func() bool { return status1(t, s, id, api.ClusterType).State == api.Synced })
			good := status1(t, s, id, api.ClusterType).VersionAcked

			gen.Set("", cluster("good", time.Second), cluster("bad", 0))
			s.Push(api.FullPush("test"))
			if delta {
				c.expect("bad")
			} else {
				c.expect("bad", "good")
			}
			c.nack(`cluster "bad": connect_timeout must be positive`)
			c.none(300 * time.Millisecond) // not resent

			st := status1(t, s, id, api.ClusterType)
			if st.State != api.Nacked || st.LastNack == nil || !strings.Contains(st.LastNack.Message, "connect_timeout") {
				t.Fatalf("status %+v", st)
			}
			if !slices.Equal(st.LastNack.Resources, []string{"bad"}) {
				t.Errorf("NACK attributed to %v, want [bad]", st.LastNack.Resources)
			}
			if st.VersionAcked != good {
				t.Errorf("acked version %q, want last good %q", st.VersionAcked, good)
			}
			select {
			case e := <-evc:
				events = append(events, e)
			case <-time.After(wait):
				t.Fatal("no xds.proxy.nacked event")
			}
			if events[0].ProxyID != id || events[0].TypeURL != api.ClusterType {
				t.Errorf("event %+v", events[0])
			}

			// The same push again (nothing changed) sends nothing.
			s.Push(api.FullPush("again"))
			c.none(300 * time.Millisecond)

			gen.Set("", cluster("good", time.Second), cluster("bad", time.Second))
			s.Push(api.FullPush("fixed"))
			if delta {
				c.expect("bad")
			} else {
				c.expect("bad", "good")
			}
			c.ack()
			eventually(t, "SYNCED after the fix", func() bool { return status1(t, s, id, api.ClusterType).State == api.Synced })
		})
	}
}

type (
	busEvent = bus.Event
	grpcConn = *grpc.ClientConn
)

type sotwHarness struct {
	t    *testing.T
	c    *xdstest.SotwClient
	last *discovery.DiscoveryResponse
	good string
}

func newSotwHarness(t *testing.T, cc grpcConn, node *corev3.Node) *sotwHarness {
	h := &sotwHarness{t: t, c: xdstest.NewSotw(t, cc, node)}
	h.c.Subscribe(api.ClusterType)
	return h
}
func (h *sotwHarness) expect(want ...string) {
	h.t.Helper()
	h.last = h.c.Recv(wait)
	if got := names(h.last.GetResources(), api.ClusterType); !slices.Equal(got, want) {
		h.t.Fatalf("got %v, want %v", got, want)
	}
}
func (h *sotwHarness) ack()                 { h.good = h.last.GetVersionInfo(); h.c.Ack(h.last) }
func (h *sotwHarness) nack(msg string)      { h.c.Nack(h.last, h.good, msg) }
func (h *sotwHarness) none(d time.Duration) { h.c.None(d) }

type deltaHarness struct {
	t    *testing.T
	c    *xdstest.DeltaClient
	last *discovery.DeltaDiscoveryResponse
}

func newDeltaHarness(t *testing.T, cc grpcConn, node *corev3.Node) *deltaHarness {
	h := &deltaHarness{t: t, c: xdstest.NewDelta(t, cc, node)}
	h.c.Subscribe(api.ClusterType, "*")
	return h
}
func (h *deltaHarness) expect(want ...string) {
	h.t.Helper()
	h.last = h.c.Recv(wait)
	if got := deltaNames(h.last.GetResources()); !slices.Equal(got, want) {
		h.t.Fatalf("got %v, want %v", got, want)
	}
}
func (h *deltaHarness) ack()                 { h.c.Ack(h.last) }
func (h *deltaHarness) nack(msg string)      { h.c.Nack(h.last, msg) }
func (h *deltaHarness) none(d time.Duration) { h.c.None(d) }

func TestDelta(t *testing.T) {
	s := xdstest.NewServer(t, server.Options{})
	eds := &xdstest.Generator{}
	eds.Set("", cla("a", 1), cla("b", 2), cla("c", 3))
	must(t, s.RegisterGenerator(api.EndpointType, eds))
	c := xdstest.NewDelta(t, xdstest.Dial(t, s.Addr), xdstest.Node("p", "ns"))

	c.Subscribe(api.EndpointType, "a", "b", "missing")
	r := c.Recv(wait)
	if got := deltaNames(r.GetResources()); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("initial %v", got)
	}
	if !slices.Equal(r.GetRemovedResources(), []string{"missing"}) {
		t.Errorf("a subscribed name that does not exist must be reported removed, got %v", r.GetRemovedResources())
	}
	c.Ack(r)
	c.None(100 * time.Millisecond)

	// One endpoint change: one resource.
	eds.Set("", cla("a", 1), cla("b", 2, 22), cla("c", 3))
	s.Push(api.EndpointPush("test", "b"))
	r = c.Recv(wait)
	if got := deltaNames(r.GetResources()); !slices.Equal(got, []string{"b"}) || len(r.GetRemovedResources()) != 0 {
		t.Fatalf("after change to b: %v removed %v", got, r.GetRemovedResources())
	}
	c.Ack(r)

	// Subscribing to c sends c only.
	c.Subscribe(api.EndpointType, "c")
	r = c.Recv(wait)
	if got := deltaNames(r.GetResources()); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("after subscribing c: %v", got)
	}
	c.Ack(r)

	// Removing b sends a removal.
	eds.Set("", cla("a", 1), cla("c", 3))
	s.Push(api.EndpointPush("test", "b"))
	r = c.Recv(wait)
	if len(r.GetResources()) != 0 || !slices.Equal(r.GetRemovedResources(), []string{"b"}) {
		t.Fatalf("after removing b: %v removed %v", deltaNames(r.GetResources()), r.GetRemovedResources())
	}
	c.Ack(r)

	// Unsubscribed names are not sent.
	c.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: api.EndpointType, ResourceNamesUnsubscribe: []string{"a"}})
	time.Sleep(100 * time.Millisecond) // let the server read it before the push
	eds.Set("", cla("a", 1, 11), cla("c", 3))
	s.Push(api.EndpointPush("test", "a"))
	c.None(200 * time.Millisecond)
}

func TestDeltaReconnectWithInitialVersions(t *testing.T) {
	s := xdstest.NewServer(t, server.Options{})
	eds := &xdstest.Generator{}
	eds.Set("", cla("a", 1), cla("b", 2))
	must(t, s.RegisterGenerator(api.EndpointType, eds))
	cc := xdstest.Dial(t, s.Addr)
	c := xdstest.NewDelta(t, cc, xdstest.Node("p", "ns"))
	c.Subscribe(api.EndpointType, "*")
	r := c.Recv(wait)
	versions := map[string]string{}
	for _, res := range r.GetResources() {
		versions[res.GetName()] = res.GetVersion()
	}
	c.Ack(r)
	c.Close()

	// Reconnecting with what it has, and b changed meanwhile: only b comes.
	eds.Set("", cla("a", 1), cla("b", 2, 22))
	s.Push(api.EndpointPush("test", "b"))
	time.Sleep(50 * time.Millisecond)
	c2 := xdstest.NewDelta(t, cc, xdstest.Node("p", "ns"))
	c2.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: api.EndpointType, ResourceNamesSubscribe: []string{"*"}, InitialResourceVersions: versions})
	r = c2.Recv(wait)
	if got := deltaNames(r.GetResources()); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("reconnect sent %v, want only the changed b", got)
	}
}

// TestConsistencyAPIListener checks meshd's own consistency check: a gRPC
// api_listener using RDS passes (go-control-plane's Consistent() rejects
// it), and a listener naming a route that does not exist is withheld.
func TestConsistencyAPIListener(t *testing.T) {
	s := xdstest.NewServer(t, server.Options{})
	lds, rds := &xdstest.Generator{}, &xdstest.Generator{}
	lds.Set("", apiListener("svc", "svc-route"))
	rds.Set("", route("svc-route", "c"))
	must(t, s.RegisterGenerator(api.ListenerType, lds))
	must(t, s.RegisterGenerator(api.RouteType, rds))
	c := xdstest.NewSotw(t, xdstest.Dial(t, s.Addr), &corev3.Node{Id: "grpc-client-1"})
	c.Subscribe(api.ListenerType, "svc")
	r := c.Recv(wait)
	if got := names(r.GetResources(), api.ListenerType); !slices.Equal(got, []string{"svc"}) {
		t.Fatalf("LDS %v", got)
	}
	c.Ack(r, "svc")

	lds.Set("", apiListener("svc", "other-route"))
	s.Push(api.FullPush("test"))
	c.None(300 * time.Millisecond)

	st := s.Statuses()
	if len(st) != 1 || st[0].Type != api.Proxyless {
		t.Fatalf("statuses %+v", st)
	}
}

func TestDebounceMergesBurst(t *testing.T) {
	s := xdstest.NewServer(t, server.Options{DebounceQuiet: 50 * time.Millisecond, DebounceMax: time.Second})
	gen := &xdstest.Generator{}
	gen.Set("", cluster("a", time.Second))
	must(t, s.RegisterGenerator(api.ClusterType, gen))
	c := xdstest.NewSotw(t, xdstest.Dial(t, s.Addr), xdstest.Node("p", "ns"))
	c.Subscribe(api.ClusterType)
	c.Ack(c.Recv(wait))
	before, _ := gen.Calls()
	for i := range 10 {
		gen.Set("", cluster("a", time.Duration(i+2)*time.Second))
		s.Push(api.FullPush(fmt.Sprint("burst", i)))
		time.Sleep(5 * time.Millisecond)
	}
	r := c.Recv(wait)
	c.Ack(r)
	c.None(200 * time.Millisecond)
	after, _ := gen.Calls()
	if after-before != 1 {
		t.Errorf("10 requests in a burst ran %d generations, want 1", after-before)
	}
}

func TestGeneratorErrorKeepsLastGood(t *testing.T) {
	s := xdstest.NewServer(t, server.Options{})
	gen := &xdstest.Generator{}
	gen.Set("", cluster("a", time.Second))
	must(t, s.RegisterGenerator(api.ClusterType, gen))
	c := xdstest.NewSotw(t, xdstest.Dial(t, s.Addr), xdstest.Node("p", "ns"))
	c.Subscribe(api.ClusterType)
	c.Ack(c.Recv(wait))
	gen.Fail(errors.New("model broken"))
	s.Push(api.FullPush("test"))
	c.None(200 * time.Millisecond)
	gen.Fail(nil)
	gen.Set("", cluster("a", 2*time.Second))
	s.Push(api.FullPush("test"))
	c.Recv(wait)
}

func TestRegisterGenerator(t *testing.T) {
	s := server.New(server.Options{})
	defer s.Stop()
	gen := &xdstest.Generator{}
	must(t, s.RegisterGenerator(api.ClusterType, gen))
	if err := s.RegisterGenerator(api.ClusterType, gen); err == nil {
		t.Error("registering a type twice must fail")
	}
	if err := s.RegisterGenerator("clusters", gen); err == nil {
		t.Error("a non-URL type must fail")
	}
}

func TestBadInput(t *testing.T) {
	tests := []struct {
		name string
		reqs []*discovery.DiscoveryRequest
		code codes.Code
	}{
		{"no node", []*discovery.DiscoveryRequest{{TypeUrl: api.ClusterType}}, codes.InvalidArgument},
		{"garbage type URL", []*discovery.DiscoveryRequest{{Node: xdstest.Node("p", "ns"), TypeUrl: "\x00garbage"}}, codes.InvalidArgument},
		{"malformed node ID", []*discovery.DiscoveryRequest{{Node: &corev3.Node{Id: "sidecar~1.2.3.4"}, TypeUrl: api.ClusterType}}, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := xdstest.NewServer(t, server.Options{})
			cc := xdstest.Dial(t, s.Addr)
			st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(context.Background())
			must(t, err)
			for _, r := range tt.reqs {
				_ = st.Send(r)
			}
			_, err = st.Recv()
			if status.Code(err) != tt.code {
				t.Fatalf("got %v, want code %v", err, tt.code)
			}
		})
	}
}

// TestIncrementalPushLeadingEdge: an endpoint change after a quiet spell is
// pushed at once, not after the quiet window; a burst that follows is
// merged into one more push.
func TestIncrementalPushLeadingEdge(t *testing.T) {
	s := xdstest.NewServer(t, server.Options{DebounceQuiet: 500 * time.Millisecond, DebounceMax: 2 * time.Second})
	eds := &xdstest.Generator{}
	eds.Set("", cla("a", 1))
	must(t, s.RegisterGenerator(api.EndpointType, eds))
	c := xdstest.NewDelta(t, xdstest.Dial(t, s.Addr), xdstest.Node("p", "ns"))
	c.Subscribe(api.EndpointType, "*")
	c.Ack(c.Recv(wait))
	time.Sleep(600 * time.Millisecond) // a quiet spell
	before, _ := eds.Calls()

	eds.Set("", cla("a", 2))
	start := time.Now()
	s.Push(api.EndpointPush("test", "a"))
	c.Ack(c.Recv(wait))
	if d := time.Since(start); d > 300*time.Millisecond {
		t.Errorf("isolated endpoint change took %v, want well under the 500 ms quiet window", d)
	}
	for i := range 10 {
		eds.Set("", cla("a", uint32(10+i)))
		s.Push(api.EndpointPush("burst", "a"))
		time.Sleep(5 * time.Millisecond)
	}
	c.Ack(c.Recv(wait))
	c.None(700 * time.Millisecond)
	if after, _ := eds.Calls(); after-before != 2 {
		t.Errorf("one change then a burst of 10 ran %d generations, want 2", after-before)
	}
}

// TestAckedVersions checks that a module can read back which of its own
// resource versions each stream acknowledged: subscribed but not yet
// acknowledged reads "", an ACK of the first set reads its version, and the
// next version shows only once acknowledged.
func TestAckedVersions(t *testing.T) {
	s := xdstest.NewServer(t, server.Options{})
	eds := &xdstest.Generator{}
	v := func(version string, ports ...uint32) api.Resource {
		r := cla("a", ports...)
		r.Version = version
		return r
	}
	eds.Set("", v("7", 1))
	must(t, s.RegisterGenerator(api.EndpointType, eds))
	c := xdstest.NewSotw(t, xdstest.Dial(t, s.Addr), xdstest.Node("p", "ns"))

	c.Subscribe(api.EndpointType, "a")
	r := c.Recv(wait)
	if got := s.AckedVersions(api.EndpointType, "a"); !slices.Equal(got, []string{""}) {
		t.Fatalf("before the ACK: %q, want one stream with none", got)
	}
	c.Ack(r, "a")
	waitUntil(t, func() bool { return slices.Equal(s.AckedVersions(api.EndpointType, "a"), []string{"7"}) })

	eds.Set("", v("8", 1, 2))
	s.Push(api.EndpointPush("test", "a"))
	r = c.Recv(wait)
	if got := s.AckedVersions(api.EndpointType, "a"); !slices.Equal(got, []string{"7"}) {
		t.Fatalf("sent but not acknowledged: %q, want still 7", got)
	}
	c.Ack(r, "a")
	waitUntil(t, func() bool { return slices.Equal(s.AckedVersions(api.EndpointType, "a"), []string{"8"}) })
	if got := s.AckedVersions(api.EndpointType, "missing"); !slices.Equal(got, []string{""}) {
		t.Fatalf("a name outside the set: %q", got)
	}
	if got := s.AckedVersions(api.ClusterType, "a"); len(got) != 0 {
		t.Fatalf("a type nobody subscribed to: %q", got)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
