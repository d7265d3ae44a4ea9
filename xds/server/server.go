// Package server is meshd's xDS engine: go-control-plane's gRPC server
// (state-of-the-world and delta ADS, and the per-type services) on a cache
// of meshd's own.
//
// Why a cache of its own: go-control-plane's SnapshotCache keeps a snapshot
// per node and marshals every resource once per proxy per push (about
// 24 CPU-seconds to push 1,000 clusters to 1,000 proxies on two cores); its
// LinearCache shares encodings but serves one type to everyone. This cache
// implements the same Cache interface but:
//
//   - groups proxies by what their config depends on (Generator.Key), calls
//     the generator once per group, and encodes each resource once per
//     version: every proxy of a group gets the same bytes;
//   - keeps each resource already in wire form, and hands gRPC a response
//     as a header plus those shared bytes (codec.go), so a push costs about
//     a memory copy per proxy;
//   - answers by name (grpc-go subscribes by exact name), never waits for
//     every resource of a type to be requested (the trap that hangs grpc-go
//     with SnapshotCache(ads=true)), and tracks what each stream was sent so
//     an endpoint change sends one resource to each subscriber, whatever the
//     mesh size;
//   - records what was actually sent, so a rejected (NACKed) version is not
//     sent again: the proxy keeps its last good config until the resources
//     change.
//
// The stream wrappers (stream.go) sit between gRPC and go-control-plane's
// server to enforce limits, learn each stream's proxy, and track ACK/NACK.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	gcplog "github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/meshd/meshd/core/bus"
	"github.com/meshd/meshd/xds/api"
)

// Options configure a Server. Zero values take the defaults noted.
type Options struct {
	// TrustDomain builds claimed SPIFFE identities from node metadata.
	TrustDomain string
	// MaxStreams bounds concurrent xDS streams over all connections
	// (default 20000); streams beyond it are refused with RESOURCE_EXHAUSTED.
	MaxStreams int
	// MaxStreamsPerConnection is HTTP/2 MAX_CONCURRENT_STREAMS (default 100).
	MaxStreamsPerConnection uint32
	// RequestRate and RequestBurst bound requests per stream (token bucket;
	// default 50/s, burst 200). A stream over its rate is slowed, not
	// closed, so a flood only back-pressures its own sender.
	RequestRate  float64
	RequestBurst int
	// MaxTypesPerStream bounds distinct type URLs one stream may watch
	// (default 32); more closes the stream.
	MaxTypesPerStream int
	// Keepalive: server pings after Time idle and drops the connection when
	// no answer comes in Timeout (defaults 30 s, 10 s); clients may not ping
	// more often than MinClientInterval (default 10 s).
	KeepaliveTime, KeepaliveTimeout, KeepaliveMinClientInterval time.Duration
	// DebounceQuiet and DebounceMax: a push starts once no request came for
	// DebounceQuiet, or DebounceMax after the first (defaults 50 ms, 1 s).
	// DebounceQuiet < 0 pushes at once (tests).
	DebounceQuiet, DebounceMax time.Duration
	// WriteBufferSize is each connection's gRPC write buffer (default 64 KiB).
	// It is borrowed from a pool only while writing.
	WriteBufferSize int
	// ReadBufferSize is each connection's read buffer (default 8 KiB).
	// Proxies send little, and every connected proxy keeps one.
	ReadBufferSize int
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Registerer receives the metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Publish receives the events (api.ProxyConnected, ...); nil drops them.
	Publish func(bus.Event)
}

func (o *Options) defaults() {
	if o.MaxStreams <= 0 {
		o.MaxStreams = 20000
	}
	if o.MaxStreamsPerConnection == 0 {
		o.MaxStreamsPerConnection = 100
	}
	if o.RequestRate <= 0 {
		o.RequestRate = 50
	}
	if o.RequestBurst <= 0 {
		o.RequestBurst = 200
	}
	if o.MaxTypesPerStream <= 0 {
		o.MaxTypesPerStream = 32
	}
	if o.KeepaliveTime <= 0 {
		o.KeepaliveTime = 30 * time.Second
	}
	if o.KeepaliveTimeout <= 0 {
		o.KeepaliveTimeout = 10 * time.Second
	}
	if o.KeepaliveMinClientInterval <= 0 {
		o.KeepaliveMinClientInterval = 10 * time.Second
	}
	if o.DebounceQuiet == 0 {
		o.DebounceQuiet = 50 * time.Millisecond
	}
	if o.DebounceMax <= 0 {
		o.DebounceMax = time.Second
	}
	if o.WriteBufferSize <= 0 {
		o.WriteBufferSize = 64 << 10
	}
	if o.ReadBufferSize <= 0 {
		o.ReadBufferSize = 8 << 10
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Publish == nil {
		o.Publish = func(bus.Event) {}
	}
}

// Server serves xDS. Build it with New, register generators and services,
// then serve gRPC servers from NewGRPCServer and call Run.
type Server struct {
	opts  Options
	log   *slog.Logger
	m     *metrics
	cache *xdsCache
	subs  *subSets
	gcp   serverv3.Server

	ctx    context.Context // ends streams on Stop
	cancel context.CancelFunc

	streams atomic.Int64
	connSeq atomic.Uint64

	svcMu    sync.Mutex
	services []service
	started  bool

	pq pushQueue
}

type service struct {
	fn      func(grpc.ServiceRegistrar)
	tlsOnly bool
}

// New returns a Server.
func New(opts Options) *Server {
	opts.defaults()
	s := &Server{opts: opts, log: opts.Logger}
	s.m = newMetrics(opts.Registerer, func() float64 { return s.cache.proxiesBehind() })
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.cache = newCache(s)
	s.subs = newSubSets()
	s.pq.sig = make(chan struct{}, 1)
	logger := gcplog.LoggerFuncs{
		DebugFunc: func(f string, a ...any) { s.log.Debug(fmt.Sprintf(f, a...)) },
		InfoFunc:  func(f string, a ...any) { s.log.Debug(fmt.Sprintf(f, a...)) },
		WarnFunc:  func(f string, a ...any) { s.log.Warn(fmt.Sprintf(f, a...)) },
		ErrorFunc: func(f string, a ...any) { s.log.Error(fmt.Sprintf(f, a...)) },
	}
	// Ordered ADS keeps one response channel per stream, so responses of
	// different types leave in the order the push published them (CDS
	// before EDS, LDS before RDS), as Envoy expects.
	s.gcp = serverv3.NewServer(s.ctx, s.cache, serverv3.CallbackFuncs{}, sotw.WithOrderedADS(), sotw.WithLogger(logger))
	return s
}

// RegisterGenerator implements api.GeneratorRegistry.
func (s *Server) RegisterGenerator(typeURL string, g api.Generator) error {
	return s.cache.register(typeURL, g)
}

// RegisterService implements api.ServiceRegistry. Services must be
// registered before the first NewGRPCServer.
func (s *Server) RegisterService(fn func(grpc.ServiceRegistrar), tlsOnly bool) error {
	s.svcMu.Lock()
	defer s.svcMu.Unlock()
	if s.started {
		return errors.New("xds: RegisterService after the gRPC servers were built; call it from Provision")
	}
	s.services = append(s.services, service{fn: fn, tlsOnly: tlsOnly})
	return nil
}

// Statuses implements api.StatusSource.
func (s *Server) Statuses() []api.ProxyStatus { return s.cache.statuses() }

// AckedVersions implements api.StatusSource.
func (s *Server) AckedVersions(typeURL, name string) []string {
	return s.cache.ackedVersions(typeURL, name)
}

// NewGRPCServer returns a gRPC server with the xDS services and the
// registered services (the TLS-only ones when creds is not nil). The caller
// serves it and stops it.
func (s *Server) NewGRPCServer(creds credentials.TransportCredentials, extra ...grpc.ServerOption) *grpc.Server {
	opts := []grpc.ServerOption{
		grpc.ForceServerCodecV2(codec{names: &s.cache.names}),
		grpc.MaxConcurrentStreams(s.opts.MaxStreamsPerConnection),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: s.opts.KeepaliveTime, Timeout: s.opts.KeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: s.opts.KeepaliveMinClientInterval, PermitWithoutStream: true}),
		// Idle connections then hold no write buffer: thousands of mostly
		// idle proxies would otherwise pin one each.
		grpc.SharedWriteBuffer(true),
		grpc.WriteBufferSize(s.opts.WriteBufferSize),
		grpc.ReadBufferSize(s.opts.ReadBufferSize),
		// Static receive windows: proxies send small requests, so no
		// window needs to grow, and a fixed window turns off gRPC's
		// bandwidth-estimation pings and the window updates that follow
		// them on every connection.
		grpc.InitialWindowSize(1 << 20),
		grpc.InitialConnWindowSize(1 << 20),
	}
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	g := grpc.NewServer(append(opts, extra...)...)
	x := xdsService{s}
	discovery.RegisterAggregatedDiscoveryServiceServer(g, x)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, x)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, x)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, x)
	routeservice.RegisterRouteDiscoveryServiceServer(g, x)
	secretservice.RegisterSecretDiscoveryServiceServer(g, x)
	s.svcMu.Lock()
	s.started = true
	svcs := s.services
	s.svcMu.Unlock()
	for _, svc := range svcs {
		if !svc.tlsOnly || creds != nil {
			svc.fn(g)
		}
	}
	return g
}

// Run runs the push loop until ctx ends, then ends every open stream.
func (s *Server) Run(ctx context.Context) error {
	defer s.cancel()
	s.pushLoop(ctx)
	return nil
}

// Stop ends every open stream; gRPC servers can then stop gracefully.
func (s *Server) Stop() { s.cancel() }

// xdsService implements the ADS and per-type gRPC services by wrapping each
// stream (stream.go) and handing it to go-control-plane's server.
type xdsService struct{ s *Server }

type (
	sotwGRPC  = grpc.BidiStreamingServer[discovery.DiscoveryRequest, discovery.DiscoveryResponse]
	deltaGRPC = grpc.BidiStreamingServer[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]
)

func (x xdsService) StreamAggregatedResources(st sotwGRPC) error {
	return x.s.serveSotw(st, resource.AnyType)
}
func (x xdsService) DeltaAggregatedResources(st deltaGRPC) error {
	return x.s.serveDelta(st, resource.AnyType)
}
func (x xdsService) StreamClusters(st sotwGRPC) error  { return x.s.serveSotw(st, api.ClusterType) }
func (x xdsService) DeltaClusters(st deltaGRPC) error  { return x.s.serveDelta(st, api.ClusterType) }
func (x xdsService) StreamEndpoints(st sotwGRPC) error { return x.s.serveSotw(st, api.EndpointType) }
func (x xdsService) DeltaEndpoints(st deltaGRPC) error { return x.s.serveDelta(st, api.EndpointType) }
func (x xdsService) StreamListeners(st sotwGRPC) error { return x.s.serveSotw(st, api.ListenerType) }
func (x xdsService) DeltaListeners(st deltaGRPC) error { return x.s.serveDelta(st, api.ListenerType) }
func (x xdsService) StreamRoutes(st sotwGRPC) error    { return x.s.serveSotw(st, api.RouteType) }
func (x xdsService) DeltaRoutes(st deltaGRPC) error    { return x.s.serveDelta(st, api.RouteType) }
func (x xdsService) StreamSecrets(st sotwGRPC) error   { return x.s.serveSotw(st, api.SecretType) }
func (x xdsService) DeltaSecrets(st deltaGRPC) error   { return x.s.serveDelta(st, api.SecretType) }

func (x xdsService) fetch(ctx context.Context, req *discovery.DiscoveryRequest, typeURL string) (*discovery.DiscoveryResponse, error) {
	if req == nil {
		return nil, errors.New("empty request")
	}
	req.TypeUrl = typeURL
	return x.s.gcp.Fetch(ctx, req)
}

func (x xdsService) FetchClusters(ctx context.Context, r *discovery.DiscoveryRequest) (*discovery.DiscoveryResponse, error) {
	return x.fetch(ctx, r, api.ClusterType)
}
func (x xdsService) FetchEndpoints(ctx context.Context, r *discovery.DiscoveryRequest) (*discovery.DiscoveryResponse, error) {
	return x.fetch(ctx, r, api.EndpointType)
}
func (x xdsService) FetchListeners(ctx context.Context, r *discovery.DiscoveryRequest) (*discovery.DiscoveryResponse, error) {
	return x.fetch(ctx, r, api.ListenerType)
}
func (x xdsService) FetchRoutes(ctx context.Context, r *discovery.DiscoveryRequest) (*discovery.DiscoveryResponse, error) {
	return x.fetch(ctx, r, api.RouteType)
}
func (x xdsService) FetchSecrets(ctx context.Context, r *discovery.DiscoveryRequest) (*discovery.DiscoveryResponse, error) {
	return x.fetch(ctx, r, api.SecretType)
}
