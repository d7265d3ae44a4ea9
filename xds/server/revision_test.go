package server_test

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/server"
	"github.com/meshd/meshd/xds/xdstest"
)

// gauge reads a gauge's current value from reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	must(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestRevisionPropagation follows one grpc-go-like proxy (CDS wildcard,
// EDS by name) through pushes that carry config revisions, and checks the
// revision its status says it was sent and runs, per type, and the
// meshd_xds_proxies_behind_config gauge.
func TestRevisionPropagation(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := xdstest.NewServer(t, server.Options{Registerer: reg})
	cds, eds := &xdstest.Generator{}, &xdstest.Generator{}
	cds.Set("", cluster("a", time.Second), cluster("b", time.Second))
	eds.Set("", cla("a", 1), cla("b", 2))
	must(t, s.RegisterGenerator(api.ClusterType, cds))
	must(t, s.RegisterGenerator(api.EndpointType, eds))
	node := xdstest.Node("p", "ns")
	id := node.GetId()
	c := xdstest.NewSotw(t, xdstest.Dial(t, s.Addr), node)
	c.Subscribe(api.ClusterType)
	c.Ack(c.Recv(wait))
	c.Subscribe(api.EndpointType, "a")
	r := c.Recv(wait)
	c.Ack(r, "a")

	type want struct {
		state       api.SyncState
		sent, acked uint64
	}
	check := func(t *testing.T, what string, typeURL string, w want) {
		t.Helper()
		var st api.TypeStatus
		deadline := time.Now().Add(wait)
		for {
			st = status1(t, s, id, typeURL)
			if (st.State == w.state && st.RevisionSent == w.sent && st.RevisionAcked == w.acked) || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if st.State != w.state || st.RevisionSent != w.sent || st.RevisionAcked != w.acked {
			t.Fatalf("%s: %s is %s, revision sent %d, acked %d; want %s, %d, %d",
				what, api.ShortType(typeURL), st.State, st.RevisionSent, st.RevisionAcked, w.state, w.sent, w.acked)
		}
	}
	check(t, "before any revision", api.ClusterType, want{api.Synced, 0, 0})
	if got := gauge(t, reg, "meshd_xds_proxies_behind_config"); got != 0 {
		t.Errorf("behind before any revision: %v, want 0", got)
	}

	// A full push from revision 5 changes clusters; endpoints are the same
	// and are not sent, yet the proxy runs revision 5's endpoints too.
	cds.Set("", cluster("a", 2*time.Second), cluster("b", time.Second))
	s.Push(api.PushRequest{Full: true, Reason: "config", Revision: 5})
	r = c.Recv(wait)
	if r.GetTypeUrl() != api.ClusterType {
		t.Fatalf("revision 5 sent %s first", r.GetTypeUrl())
	}
	check(t, "revision 5 sent, not acknowledged", api.ClusterType, want{api.Stale, 5, 0})
	if got := gauge(t, reg, "meshd_xds_proxies_behind_config"); got != 1 {
		t.Errorf("behind before the ACK: %v, want 1", got)
	}
	c.Ack(r)
	check(t, "revision 5 acknowledged", api.ClusterType, want{api.Synced, 5, 5})
	check(t, "unchanged endpoints", api.EndpointType, want{api.Synced, 5, 5})
	c.None(100 * time.Millisecond)
	if got := gauge(t, reg, "meshd_xds_proxies_behind_config"); got != 0 {
		t.Errorf("behind after the ACK: %v, want 0", got)
	}

	// An endpoint-only push carries no revision: it is built on 5.
	eds.Set("", cla("a", 1, 11), cla("b", 2))
	s.Push(api.EndpointPush("endpoints", "a"))
	r = c.Recv(wait)
	if r.GetTypeUrl() != api.EndpointType {
		t.Fatalf("endpoint push sent %s", r.GetTypeUrl())
	}
	c.Ack(r, "a")
	check(t, "EDS push acknowledged", api.EndpointType, want{api.Synced, 5, 5})
	check(t, "EDS push leaves clusters", api.ClusterType, want{api.Synced, 5, 5})

	// Revision 6 is rejected: the proxy keeps running 5.
	cds.Set("", cluster("a", 2*time.Second), cluster("b", 0))
	s.Push(api.PushRequest{Full: true, Reason: "config", Revision: 6})
	r = c.Recv(wait)
	c.Nack(r, "", `cluster "b": connect_timeout must be positive`)
	check(t, "revision 6 NACKed", api.ClusterType, want{api.Nacked, 6, 5})
	if got := gauge(t, reg, "meshd_xds_proxies_behind_config"); got != 1 {
		t.Errorf("behind after the NACK: %v, want 1", got)
	}

	// Revision 7 fixes it and also changes an endpoint the proxy does not
	// watch: nothing is sent for EDS, but it runs revision 7's endpoints.
	cds.Set("", cluster("a", 2*time.Second), cluster("b", 3*time.Second))
	eds.Set("", cla("a", 1, 11), cla("b", 2, 22))
	s.Push(api.PushRequest{Full: true, Reason: "config", Revision: 7})
	r = c.Recv(wait)
	if r.GetTypeUrl() != api.ClusterType {
		t.Fatalf("revision 7 sent %s", r.GetTypeUrl())
	}
	c.Ack(r)
	c.None(100 * time.Millisecond)
	check(t, "revision 7 acknowledged", api.ClusterType, want{api.Synced, 7, 7})
	check(t, "endpoint change the proxy does not watch", api.EndpointType, want{api.Synced, 7, 7})

	// A revision no proxy sees a change in regenerates nothing.
	calls, _ := cds.Calls()
	s.Push(api.PushRequest{Reason: "config", Revision: 8})
	c.None(100 * time.Millisecond)
	check(t, "revision-only push", api.ClusterType, want{api.Synced, 8, 8})
	check(t, "revision-only push", api.EndpointType, want{api.Synced, 8, 8})
	if now, _ := cds.Calls(); now != calls {
		t.Errorf("a revision-only push ran the generator (%d -> %d calls)", calls, now)
	}

	// A generator that fails keeps its proxies on the revision they run.
	cds.Fail(errors.New("broken"))
	s.Push(api.PushRequest{Full: true, Reason: "config", Revision: 9})
	c.None(100 * time.Millisecond)
	check(t, "generator failed at 9", api.ClusterType, want{api.Synced, 8, 8})
	check(t, "endpoints at 9", api.EndpointType, want{api.Synced, 9, 9})
	if got := gauge(t, reg, "meshd_xds_proxies_behind_config"); got != 1 {
		t.Errorf("behind with a failed generator: %v, want 1", got)
	}
}

// TestRevisionDelta is the delta-xDS side of TestRevisionPropagation:
// acknowledged, NACKed, and skipped because nothing subscribed changed.
func TestRevisionDelta(t *testing.T) {
	s := xdstest.NewServer(t, server.Options{})
	cds, eds := &xdstest.Generator{}, &xdstest.Generator{}
	cds.Set("", cluster("a", time.Second))
	eds.Set("", cla("a", 1), cla("b", 2))
	must(t, s.RegisterGenerator(api.ClusterType, cds))
	must(t, s.RegisterGenerator(api.EndpointType, eds))
	node := xdstest.Node("p", "ns")
	id := node.GetId()
	c := xdstest.NewDelta(t, xdstest.Dial(t, s.Addr), node)
	c.Subscribe(api.ClusterType, "*")
	c.Ack(c.Recv(wait))
	c.Subscribe(api.EndpointType, "a")
	c.Ack(c.Recv(wait))

	revs := func(typeURL string) (api.SyncState, uint64, uint64) {
		st := status1(t, s, id, typeURL)
		return st.State, st.RevisionSent, st.RevisionAcked
	}
	waitRevs := func(what, typeURL string, state api.SyncState, sent, acked uint64) {
		t.Helper()
		eventually(t, what, func() bool {
			st, se, ac := revs(typeURL)
			return st == state && se == sent && ac == acked
		})
	}

	cds.Set("", cluster("a", 2*time.Second))
	s.Push(api.PushRequest{Full: true, Reason: "config", Revision: 5})
	c.Ack(c.Recv(wait))
	waitRevs("CDS on 5", api.ClusterType, api.Synced, 5, 5)
	waitRevs("EDS on 5 without a response", api.EndpointType, api.Synced, 5, 5)

	cds.Set("", cluster("a", 0))
	s.Push(api.PushRequest{Full: true, Reason: "config", Revision: 6})
	c.Nack(c.Recv(wait), "connect_timeout must be positive")
	waitRevs("CDS 6 NACKed", api.ClusterType, api.Nacked, 6, 5)

	eds.Set("", cla("a", 1), cla("b", 2, 22))
	s.Push(api.PushRequest{Full: true, Reason: "config", Revision: 7})
	c.None(100 * time.Millisecond)
	waitRevs("EDS change to b, which the proxy does not watch", api.EndpointType, api.Synced, 7, 7)
	waitRevs("CDS still rejected", api.ClusterType, api.Nacked, 7, 5)
}
