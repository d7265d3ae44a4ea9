// Package pluginsource runs discovery sources out of process: the gRPC
// shims of the discovery plugin kind (core/plugin/proto/discovery/v1) on
// both sides of the plugin boundary.
//
// On the host side, New turns a plugin instance into a registry.Source, so
// pilot's aggregate treats a plugin like any built-in source: it merges its
// state by precedence and, when the plugin crashes (Run returns an error),
// keeps serving the last state the plugin reported while it restarts. On the
// plugin side, Register serves any registry.Source; the sdk package wraps it
// as sdk.ServeDiscovery.
//
// The wire carries the whole state each time it changes, split into chunks
// of about a thousand endpoints. The host checks every value (a plugin is
// not trusted to send valid services): a service that fails a check is
// dropped and logged, the rest of the state is used. Unchanged services keep
// their pointers across states on both sides, so pilot's change detection
// stays cheap.
//
// The module pilot-plugins (module.go) adds every discovery plugin
// declared in meshd.yaml to pilot through registry.Adder, so pilot itself
// needs no plugin code.
package pluginsource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/core/plugin"
	discoveryv1 "github.com/meshd/meshd/core/plugin/proto/discovery/v1"
	"github.com/meshd/meshd/modules/pilot/registry"
)

// Kind is the plugin kind this package serves.
const Kind = plugin.KindDiscovery

// New returns a registry.Source backed by a plugin instance. Run waits for
// the plugin to be up, then streams its states; it returns an error when
// the plugin goes away, and the aggregate restarts it with backoff while
// keeping the state it last reported.
func New(in *plugin.Instance) registry.Source {
	return &instanceSource{in: in, dec: &decoder{source: in.Name()}, log: in.Logger()}
}

type instanceSource struct {
	in  *plugin.Instance
	log *slog.Logger
	mu  sync.Mutex // one Run at a time owns dec
	dec *decoder
}

func (s *instanceSource) Run(ctx context.Context, sink registry.Sink) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	conn, err := s.in.Conn(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if v := conn.Protocol(); v != 1 {
		return plugin.Error(s.in.Name(), fmt.Errorf("%w: no discovery client for protocol %d", plugin.ErrIncompatible, v))
	}
	return watch(ctx, conn.ClientConn(), s.dec, s.log, sink)
}

// NewClient returns a registry.Source reading a discovery service over cc,
// naming the services it reports after source. It is the host side of the
// shim pair without the plugins module, for conformance tests and tools.
func NewClient(cc grpc.ClientConnInterface, source string, log *slog.Logger) registry.Source {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &connSource{cc: cc, dec: &decoder{source: source}, log: log}
}

type connSource struct {
	cc  grpc.ClientConnInterface
	log *slog.Logger
	mu  sync.Mutex
	dec *decoder
}

func (s *connSource) Run(ctx context.Context, sink registry.Sink) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return watch(ctx, s.cc, s.dec, s.log, sink)
}

// watch streams states from the plugin into sink until ctx ends (nil) or
// the stream breaks (an error).
func watch(ctx context.Context, cc grpc.ClientConnInterface, dec *decoder, log *slog.Logger, sink registry.Sink) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("discovery plugin client: panic: %v", r)
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := discoveryv1.NewDiscoveryClient(cc).Watch(ctx, &discoveryv1.WatchRequest{})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("discovery watch: %w", err)
	}
	dec.reset()
	for {
		chunk, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.EOF) {
				return errEnded
			}
			if s, ok := status.FromError(err); ok {
				return fmt.Errorf("discovery stream: %s: %s", s.Code(), s.Message())
			}
			return fmt.Errorf("discovery stream: %w", err)
		}
		services, problems, done, err := dec.add(chunk)
		if err != nil {
			return err
		}
		if !done {
			continue
		}
		if len(problems) > 0 {
			log.Warn("discovery plugin reported invalid services; they are left out", "dropped", len(problems), "first", problems[0].Error())
		}
		sink.Update(registry.State{Services: services})
	}
}

// Register serves src as the discovery service on s: the plugin side of the
// shim pair. Each Watch runs src.Run until the host cancels it; Watches are
// served one at a time.
func Register(s *grpc.Server, src registry.Source) error {
	discoveryv1.RegisterDiscoveryServer(s, &server{src: src, turn: make(chan struct{}, 1)})
	return nil
}

// Plugin returns the go-plugin plugin for the discovery kind: src served
// on the plugin side, a registry.Source on the host side. Conformance
// tests connect the two in one process.
func Plugin(src registry.Source) *plugin.GRPCPlugin {
	return &plugin.GRPCPlugin{
		Register: func(s *grpc.Server) error { return Register(s, src) },
		Connect: func(_ context.Context, cc *grpc.ClientConn) (any, error) {
			return NewClient(cc, "plugin", nil), nil
		},
	}
}

type server struct {
	discoveryv1.UnimplementedDiscoveryServer
	src  registry.Source
	turn chan struct{} // one Watch at a time
	enc  encoder
	gen  uint64
}

// latest is the sink the plugin's source writes to: it keeps only the
// newest state and never blocks, as registry.Sink promises.
type latest struct {
	mu    sync.Mutex
	st    *registry.State
	ready chan struct{}
}

func (l *latest) Update(st registry.State) {
	l.mu.Lock()
	l.st = &st
	l.mu.Unlock()
	select {
	case l.ready <- struct{}{}:
	default:
	}
}

func (l *latest) take() *registry.State {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.st
	l.st = nil
	return st
}

func (s *server) Watch(_ *discoveryv1.WatchRequest, stream discoveryv1.Discovery_WatchServer) error {
	ctx := stream.Context()
	select {
	case s.turn <- struct{}{}:
		defer func() { <-s.turn }()
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	s.enc = encoder{} // a new stream starts from nothing on the host side too
	l := &latest{ready: make(chan struct{}, 1)}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- safeRun(runCtx, s.src, l) }()
	send := func() error {
		st := l.take()
		if st == nil {
			return nil
		}
		s.gen++
		for _, c := range s.enc.chunks(s.gen, st.Services) {
			if err := stream.Send(c); err != nil {
				return err
			}
		}
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			cancel()
			<-errc
			return status.FromContextError(ctx.Err()).Err()
		case <-l.ready:
			if err := send(); err != nil {
				cancel()
				<-errc
				return err
			}
		case err := <-errc:
			if ctx.Err() != nil {
				return status.FromContextError(ctx.Err()).Err()
			}
			if serr := send(); serr != nil {
				return serr
			}
			if err == nil {
				err = errors.New("source returned before the host stopped it")
			}
			return status.Error(codes.Unavailable, err.Error())
		}
	}
}

func safeRun(ctx context.Context, src registry.Source, sink registry.Sink) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic in discovery source: %v", r)
		}
	}()
	return src.Run(ctx, sink)
}
