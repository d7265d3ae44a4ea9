package server

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/meshd/meshd/xds/api"
)

// fakeDeltaStream is a delta stream without gRPC: requests come from a
// channel, and each response written is acknowledged at once.
type fakeDeltaStream struct {
	grpc.ServerStream
	ctx  context.Context
	reqs chan *discovery.DeltaDiscoveryRequest
	acks *atomic.Int64 // shared by every stream
	want *atomic.Int64 // acks after which done is signalled
	done chan struct{}
}

func (f *fakeDeltaStream) Context() context.Context     { return f.ctx }
func (f *fakeDeltaStream) SetHeader(metadata.MD) error  { return nil }
func (f *fakeDeltaStream) SendHeader(metadata.MD) error { return nil }
func (f *fakeDeltaStream) SetTrailer(metadata.MD)       {}
func (f *fakeDeltaStream) Recv() (*discovery.DeltaDiscoveryRequest, error) {
	select {
	case r := <-f.reqs:
		return r, nil
	case <-f.ctx.Done():
		return nil, f.ctx.Err()
	}
}
func (f *fakeDeltaStream) Send(*discovery.DeltaDiscoveryResponse) error { panic("not pre-encoded") }

// SendMsg takes the nonce from the pre-encoded header and acknowledges it.
func (f *fakeDeltaStream) SendMsg(m any) error {
	p := m.(*preEncoded)
	b := p.data[0].ReadOnlyData()
	nonce := ""
	for len(b) > 0 && nonce == "" {
		num, _, n := protowire.ConsumeTag(b)
		b = b[n:]
		v, n := protowire.ConsumeBytes(b)
		b = b[n:]
		if num == 5 {
			nonce = string(v)
		}
	}
	p.data.Free()
	f.reqs <- &discovery.DeltaDiscoveryRequest{TypeUrl: api.EndpointType, ResponseNonce: nonce}
	if f.acks.Add(1) == f.want.Load() {
		f.done <- struct{}{}
	}
	return nil
}

// BenchmarkDeltaEDSFanout is the server's per-proxy cost of one endpoint
// change on delta EDS, gRPC aside: proxies' streams (go-control-plane's
// delta handler on meshd's wrapper and cache) watch 1,000 endpoint sets
// (wildcard); each op moves an endpoint of one and waits until every proxy
// has acknowledged the response. ns/op and allocs/op are per proxy.
func BenchmarkDeltaEDSFanout(b *testing.B) {
	const proxies, services = 2000, 1000
	gen := &benchGen{}
	name := func(i int) string { return fmt.Sprintf("outbound|80||svc-%d.ns.svc.cluster.local", i) }
	res := make([]api.Resource, services)
	for i := range res {
		res[i] = cla(name(i), 8080)
	}
	big := func(v int) api.Resource {
		ports := make([]uint32, 100)
		for j := range ports {
			ports[j] = uint32(10000 + v + j)
		}
		return cla(name(0), ports...)
	}
	res[0] = big(0)
	gen.set(res)
	s := New(Options{DebounceQuiet: -1, MaxStreams: 1 << 20})
	if err := s.RegisterGenerator(api.EndpointType, gen); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); s.Stop(); wg.Wait() }()
	wg.Go(func() { _ = s.Run(ctx) })
	var acks, want atomic.Int64
	done := make(chan struct{}, 1)
	for i := range proxies {
		f := &fakeDeltaStream{ctx: ctx, reqs: make(chan *discovery.DeltaDiscoveryRequest, 4), acks: &acks, want: &want, done: done}
		f.reqs <- &discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: fmt.Sprintf("sidecar~10.0.0.1~p%d.ns~ns.svc.cluster.local", i)}, TypeUrl: api.EndpointType}
		wg.Go(func() { _ = s.serveDelta(f, api.EndpointType) })
	}
	want.Store(proxies)
	<-done
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		res[0] = big(i + 1)
		gen.set(res)
		want.Store(int64(proxies) * int64(i+2))
		b.StartTimer()
		s.Push(api.EndpointPush("bench", name(0)))
		<-done
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/proxies, "ns/proxy")
}

// benchGen serves what set last stored, by name when asked.
type benchGen struct {
	mu  sync.Mutex
	res []api.Resource
}

func (g *benchGen) set(res []api.Resource) {
	g.mu.Lock()
	g.res = append([]api.Resource(nil), res...)
	g.mu.Unlock()
}

func (g *benchGen) Key(*api.Proxy) string { return "" }

func (g *benchGen) Generate(_ context.Context, req api.GenerateRequest) ([]api.Resource, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if req.Names == nil {
		return g.res, nil
	}
	var out []api.Resource
	for _, r := range g.res {
		for _, n := range req.Names {
			if r.Name == n {
				out = append(out, r)
			}
		}
	}
	return out, nil
}

func cla(name string, ports ...uint32) api.Resource {
	var eps []*endpointv3.LbEndpoint
	for _, p := range ports {
		eps = append(eps, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "10.1.2.3", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: p}}}}}}})
	}
	return api.Resource{Name: name, Message: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}}}}
}
