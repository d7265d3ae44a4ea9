// Package xdstest has helpers for testing against meshd's xDS server: an
// in-process server on a loopback port, minimal ADS clients (state of the
// world and delta) that send exactly the requests a test asks for, and a
// generator whose resources a test sets.
package xdstest

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/server"
)

// Server is an xDS server serving on 127.0.0.1 for one test.
type Server struct {
	*server.Server
	Addr string
}

// NewServer starts a server with opts (debounce off unless set) and stops
// it when the test ends. Register generators before clients connect.
func NewServer(t testing.TB, opts server.Options) *Server {
	t.Helper()
	if opts.DebounceQuiet == 0 {
		opts.DebounceQuiet = -1
	}
	s := server.New(opts)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := s.NewGRPCServer(nil)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Serve(lis) })
	wg.Go(func() { _ = s.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		s.Stop()
		g.Stop()
		wg.Wait()
	})
	return &Server{Server: s, Addr: lis.Addr().String()}
}

// Node returns an Istio sidecar node for pod name in namespace ns, service
// account "default".
func Node(name, ns string) *corev3.Node { return NodeSA(name, ns, "default") }

// NodeSA is Node with service account sa.
func NodeSA(name, ns, sa string) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{
		api.MetaNamespace:      ns,
		api.MetaServiceAccount: sa,
		api.MetaLabels:         map[string]any{"app": name},
	})
	return &corev3.Node{Id: "sidecar~10.0.0.1~" + name + "." + ns + "~" + ns + ".svc.cluster.local", Metadata: md}
}

// Dial connects to addr; the connection closes when the test ends.
func Dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// SotwClient is one state-of-the-world ADS stream.
type SotwClient struct {
	t      testing.TB
	stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
	cancel context.CancelFunc
	sent   bool
	resps  chan *discovery.DiscoveryResponse
	errs   chan error
}

// NewSotw opens an ADS stream on cc for node.
func NewSotw(t testing.TB, cc *grpc.ClientConn, node *corev3.Node) *SotwClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	c := &SotwClient{t: t, stream: st, node: node, cancel: cancel, resps: make(chan *discovery.DiscoveryResponse, 64), errs: make(chan error, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			r, err := st.Recv()
			if err != nil {
				c.errs <- err
				return
			}
			c.resps <- r
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// Send sends a request; the first one carries the node.
func (c *SotwClient) Send(req *discovery.DiscoveryRequest) {
	c.t.Helper()
	if !c.sent {
		req.Node = c.node
		c.sent = true
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// Subscribe asks for typeURL resources (no names: wildcard).
func (c *SotwClient) Subscribe(typeURL string, names ...string) {
	c.Send(&discovery.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: names})
}

// Ack acknowledges r, keeping the subscription names.
func (c *SotwClient) Ack(r *discovery.DiscoveryResponse, names ...string) {
	c.Send(&discovery.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: names})
}

// Nack rejects r with msg, reporting lastGood as the version kept.
func (c *SotwClient) Nack(r *discovery.DiscoveryResponse, lastGood, msg string, names ...string) {
	c.Send(&discovery.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: lastGood, ResponseNonce: r.GetNonce(), ResourceNames: names,
		ErrorDetail: &rpcstatus.Status{Code: 3, Message: msg}})
}

// Recv waits up to d for a response.
func (c *SotwClient) Recv(d time.Duration) *discovery.DiscoveryResponse {
	c.t.Helper()
	select {
	case r := <-c.resps:
		return r
	case err := <-c.errs:
		c.errs <- err
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(d):
		c.t.Fatalf("no response within %v", d)
	}
	return nil
}

// Err waits up to d for the stream to end and returns its error (nil if it
// did not end).
func (c *SotwClient) Err(d time.Duration) error {
	select {
	case err := <-c.errs:
		c.errs <- err
		return err
	case <-time.After(d):
		return nil
	}
}

// None fails if a response arrives within d.
func (c *SotwClient) None(d time.Duration) {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Fatalf("unexpected response: type %s version %s, %d resources", r.GetTypeUrl(), r.GetVersionInfo(), len(r.GetResources()))
	case <-time.After(d):
	}
}

// Close ends the stream.
func (c *SotwClient) Close() { c.cancel() }

// DeltaClient is one delta ADS stream.
type DeltaClient struct {
	t      testing.TB
	stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	node   *corev3.Node
	cancel context.CancelFunc
	sent   bool
	resps  chan *discovery.DeltaDiscoveryResponse
	errs   chan error
}

// NewDelta opens a delta ADS stream on cc for node.
func NewDelta(t testing.TB, cc *grpc.ClientConn, node *corev3.Node) *DeltaClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	c := &DeltaClient{t: t, stream: st, node: node, cancel: cancel, resps: make(chan *discovery.DeltaDiscoveryResponse, 64), errs: make(chan error, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			r, err := st.Recv()
			if err != nil {
				c.errs <- err
				return
			}
			c.resps <- r
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// Send sends a request; the first one carries the node.
func (c *DeltaClient) Send(req *discovery.DeltaDiscoveryRequest) {
	c.t.Helper()
	if !c.sent {
		req.Node = c.node
		c.sent = true
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// Subscribe subscribes to names of typeURL ("*" for wildcard).
func (c *DeltaClient) Subscribe(typeURL string, names ...string) {
	c.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: names})
}

// Ack acknowledges r.
func (c *DeltaClient) Ack(r *discovery.DeltaDiscoveryResponse) {
	c.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()})
}

// Nack rejects r with msg.
func (c *DeltaClient) Nack(r *discovery.DeltaDiscoveryResponse, msg string) {
	c.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce(), ErrorDetail: &rpcstatus.Status{Code: 3, Message: msg}})
}

// Recv waits up to d for a response.
func (c *DeltaClient) Recv(d time.Duration) *discovery.DeltaDiscoveryResponse {
	c.t.Helper()
	select {
	case r := <-c.resps:
		return r
	case err := <-c.errs:
		c.errs <- err
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(d):
		c.t.Fatalf("no response within %v", d)
	}
	return nil
}

// None fails if a response arrives within d.
func (c *DeltaClient) None(d time.Duration) {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Fatalf("unexpected delta response: type %s, %d resources, %d removed", r.GetTypeUrl(), len(r.GetResources()), len(r.GetRemovedResources()))
	case <-time.After(d):
	}
}

// Generator is a test generator: it serves whatever Set last stored,
// optionally keyed by KeyFunc (default: one group for everyone).
type Generator struct {
	KeyFunc func(*api.Proxy) string

	mu    sync.Mutex
	res   map[string][]api.Resource // by key; "" is the default for every key
	err   error
	calls int
	names [][]string
}

// Set replaces the resources served to key ("" for every key without its own).
func (g *Generator) Set(key string, res ...api.Resource) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.res == nil {
		g.res = map[string][]api.Resource{}
	}
	g.res[key] = res
}

// Fail makes Generate return err (nil to stop failing).
func (g *Generator) Fail(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.err = err
}

// Calls returns how many times Generate ran, and the names of each call.
func (g *Generator) Calls() (int, [][]string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.calls, append([][]string(nil), g.names...)
}

// Key implements api.Generator.
func (g *Generator) Key(p *api.Proxy) string {
	if g.KeyFunc != nil {
		return g.KeyFunc(p)
	}
	return ""
}

// Generate implements api.Generator.
func (g *Generator) Generate(_ context.Context, req api.GenerateRequest) ([]api.Resource, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls++
	g.names = append(g.names, req.Names)
	if g.err != nil {
		return nil, g.err
	}
	res, ok := g.res[req.Key]
	if !ok {
		res = g.res[""]
	}
	if req.Names == nil {
		return res, nil
	}
	var out []api.Resource
	for _, r := range res {
		for _, n := range req.Names {
			if r.Name == n {
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// Close ends the stream.
func (c *DeltaClient) Close() { c.cancel() }
