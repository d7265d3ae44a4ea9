package server_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/server"
	"github.com/meshd/meshd/xds/xdstest"
)

// served checks that c (already subscribed to CDS and acknowledged) gets a
// push within d.
func served(t *testing.T, s *xdstest.Server, gen *xdstest.Generator, c *xdstest.SotwClient, round int, d time.Duration) {
	t.Helper()
	gen.Set("", cluster("a", time.Duration(round+2)*time.Second))
	start := time.Now()
	s.Push(api.FullPush("probe"))
	r := c.Recv(d)
	c.Ack(r)
	t.Logf("push %d reached the good proxy in %v", round, time.Since(start))
}

func goodProxy(t *testing.T, s *xdstest.Server, name string) *xdstest.SotwClient {
	c := xdstest.NewSotw(t, xdstest.Dial(t, s.Addr), xdstest.Node(name, "good"))
	c.Subscribe(api.ClusterType)
	c.Ack(c.Recv(wait))
	return c
}

// TestTenThousandStreams opens 10,000 streams from one client over 100
// connections, first under the stream limit and then over it. Excess
// streams are refused, the server's goroutines stay proportional to the
// streams it admitted, and proxies that were already connected, or that
// connect afterwards, are served throughout.
func TestTenThousandStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 10,000 streams")
	}
	const conns, perConn = 100, 100
	tests := []struct {
		name       string
		maxStreams int
	}{
		{"within the limit", 20000},
		{"over the limit", 2000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := xdstest.NewServer(t, server.Options{MaxStreams: tt.maxStreams})
			gen := &xdstest.Generator{}
			gen.Set("", cluster("a", time.Second))
			must(t, s.RegisterGenerator(api.ClusterType, gen))
			good := goodProxy(t, s, "early")

			ctx, cancel := context.WithCancel(context.Background())
			var refused, open atomic.Int64
			var wg sync.WaitGroup
			for i := range conns {
				cc := xdstest.Dial(t, s.Addr)
				ads := discovery.NewAggregatedDiscoveryServiceClient(cc)
				for j := range perConn {
					wg.Go(func() {
						st, err := ads.StreamAggregatedResources(ctx)
						if err != nil {
							return
						}
						// Half send a request, half stay silent.
						if j%2 == 0 {
							_ = st.Send(&discovery.DiscoveryRequest{Node: xdstest.Node(fmt.Sprintf("attacker-%d-%d", i, j), "bad"), TypeUrl: api.ClusterType})
						}
						open.Add(1)
						if _, err := st.Recv(); status.Code(err) == codes.ResourceExhausted {
							refused.Add(1)
						}
					})
				}
			}
			deadline := time.Now().Add(20 * time.Second)
			for open.Load() < conns*perConn && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			wantRefused := int64(max(0, conns*perConn+1-tt.maxStreams))
			for refused.Load() < wantRefused && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			t.Logf("%d streams opened, %d refused, %d goroutines", open.Load(), refused.Load(), runtime.NumGoroutine())
			if refused.Load() != wantRefused {
				t.Errorf("%d streams refused, want %d", refused.Load(), wantRefused)
			}
			// Client and server share the process: the client side holds a few
			// goroutines per stream, the server three per admitted stream.
			admitted := int64(conns*perConn) - refused.Load()
			if g := int64(runtime.NumGoroutine()); g > 3*int64(conns*perConn)+4*admitted+1000 {
				t.Errorf("%d goroutines for %d admitted streams", g, admitted)
			}

			served(t, s, gen, good, 1, 2*time.Second)
			if tt.maxStreams > conns*perConn {
				late := goodProxy(t, s, "late")
				served(t, s, gen, late, 2, 2*time.Second)
			}
			cancel()
			wg.Wait()
			// Once the attack ends, its slots are free again.
			late := goodProxy(t, s, "after")
			served(t, s, gen, late, 3, 2*time.Second)
		})
	}
}

// TestGarbageTypeURLs checks that made-up type URLs cost a stream nothing
// but a watch that never answers, up to MaxTypesPerStream, after which the
// stream is closed; real types on the same stream are served meanwhile.
func TestGarbageTypeURLs(t *testing.T) {
	s := xdstest.NewServer(t, server.Options{MaxTypesPerStream: 8})
	gen := &xdstest.Generator{}
	gen.Set("", cluster("a", time.Second))
	must(t, s.RegisterGenerator(api.ClusterType, gen))
	c := xdstest.NewSotw(t, xdstest.Dial(t, s.Addr), xdstest.Node("p", "ns"))
	c.Subscribe(api.ClusterType)
	c.Ack(c.Recv(wait))
	for i := range 7 {
		c.Subscribe(fmt.Sprintf("type.googleapis.com/garbage.v%d.Nothing", i))
	}
	c.None(200 * time.Millisecond)
	served(t, s, gen, c, 1, 2*time.Second)
	c.Subscribe("type.googleapis.com/garbage.one.too.many")
	if err := c.Err(wait); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("stream ended with %v, want ResourceExhausted", err)
	}
}

// TestRequestFlood sends requests as fast as a client can. The stream is
// throttled to its rate (the excess waits in flow control, costing the
// server nothing), and another proxy's pushes are not delayed.
func TestRequestFlood(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := xdstest.NewServer(t, server.Options{RequestRate: 100, RequestBurst: 10, Registerer: reg})
	gen := &xdstest.Generator{}
	gen.Set("", cluster("a", time.Second))
	must(t, s.RegisterGenerator(api.ClusterType, gen))
	good := goodProxy(t, s, "good")

	cc := xdstest.Dial(t, s.Addr)
	ctx, cancel := context.WithCancel(context.Background())
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	must(t, err)
	var sent atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		node := xdstest.Node("flood", "bad")
		for i := 0; ctx.Err() == nil; i++ {
			req := &discovery.DiscoveryRequest{TypeUrl: api.EndpointType, ResourceNames: []string{fmt.Sprint("n", i%50)}}
			if i == 0 {
				req.Node = node
			}
			if st.Send(req) != nil {
				return
			}
			sent.Add(1)
		}
	}()
	go func() { // drain whatever comes back
		for {
			if _, err := st.Recv(); err != nil {
				return
			}
		}
	}()
	time.Sleep(time.Second)
	for i := range 3 {
		served(t, s, gen, good, i, time.Second)
	}
	throttled := testutil.ToFloat64(counter(t, reg, "meshd_xds_requests_throttled_total"))
	t.Logf("flood sent %d requests in ~1.5 s; %v throttled", sent.Load(), throttled)
	if throttled == 0 {
		t.Error("no request was throttled")
	}
	cancel()
	<-done
}

func counter(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	must(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: "x"}, func() float64 {
				return mf.GetMetric()[0].GetCounter().GetValue()
			})
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}
