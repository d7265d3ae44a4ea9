// Package xds is meshd's xds module: it serves what other modules generate
// to Envoy sidecars, Envoy gateways and proxyless gRPC clients, over ADS
// (state of the world and delta) and the per-type xDS services.
//
// Other modules reach it through the interfaces in xds/api:
//
//	x, err := core.Dep[api.XDS](ctx, "xds")
//
// pilot registers the CDS, EDS, LDS and RDS generators and asks for pushes,
// citadel registers the SDS generator and the CSR service and enables the
// TLS port, telemetry registers the access-log service. The engine itself
// lives in xds/server; this package wires it to the host: config, listeners,
// metrics, events and the admin routes /debug/syncz and /debug/config_dump.
package xds

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/server"
)

// ID is the module ID and the key of its config section (modules.xds).
const ID core.ModuleID = "xds"

func init() { core.Register(new(Module)) }

// Config is the modules.xds section.
type Config struct {
	Address                 string          `mapstructure:"address" doc:"plaintext xDS listen address (ADS state-of-the-world and delta, per-type services); Istio's 15010. Keep it on loopback unless the network is trusted"`
	TLSAddress              string          `mapstructure:"tlsAddress" doc:"xDS and CA over TLS, opened when citadel enables TLS; Istio's 15012"`
	MaxStreams              int             `mapstructure:"maxStreams" doc:"concurrent xDS streams over all connections; more are refused with RESOURCE_EXHAUSTED"`
	MaxStreamsPerConnection uint32          `mapstructure:"maxStreamsPerConnection" doc:"HTTP/2 concurrent streams per client connection"`
	RequestRate             float64         `mapstructure:"requestRate" doc:"requests per second one stream may send; faster senders are slowed down, not disconnected"`
	RequestBurst            int             `mapstructure:"requestBurst" doc:"requests one stream may send at once before requestRate applies"`
	MaxTypesPerStream       int             `mapstructure:"maxTypesPerStream" doc:"distinct type URLs one stream may watch; more closes the stream"`
	WriteBufferSize         int             `mapstructure:"writeBufferSize" doc:"bytes of each connection's write buffer, borrowed from a pool only while writing"`
	Keepalive               KeepaliveConfig `mapstructure:"keepalive"`
	Debounce                DebounceConfig  `mapstructure:"debounce"`
}

// KeepaliveConfig configures gRPC keepalive on the xDS ports.
type KeepaliveConfig struct {
	Time              time.Duration `mapstructure:"time" doc:"ping a client after this long without activity"`
	Timeout           time.Duration `mapstructure:"timeout" doc:"close the connection when a ping is not answered within this"`
	MinClientInterval time.Duration `mapstructure:"minClientInterval" doc:"clients pinging more often than this are disconnected"`
}

// DebounceConfig configures push debouncing.
type DebounceConfig struct {
	Quiet time.Duration `mapstructure:"quiet" doc:"push once no change arrived for this long"`
	Max   time.Duration `mapstructure:"max" doc:"push at the latest this long after the first change, however busy"`
}

// Default returns the defaults: Istio's ports on loopback, limits that
// leave room for thousands of proxies, a 50 ms quiet window.
func Default() Config {
	return Config{
		Address:                 "127.0.0.1:15010",
		TLSAddress:              "127.0.0.1:15012",
		MaxStreams:              20000,
		MaxStreamsPerConnection: 100,
		RequestRate:             50,
		RequestBurst:            200,
		MaxTypesPerStream:       32,
		WriteBufferSize:         64 << 10,
		Keepalive:               KeepaliveConfig{Time: 30 * time.Second, Timeout: 10 * time.Second, MinClientInterval: 10 * time.Second},
		Debounce:                DebounceConfig{Quiet: 50 * time.Millisecond, Max: time.Second},
	}
}

// Validate checks values decoding cannot.
func (c *Config) Validate() error {
	var errs []error
	if c.Address == "" {
		errs = append(errs, errors.New("modules.xds.address: must not be empty"))
	}
	if c.MaxStreams <= 0 || c.MaxStreamsPerConnection == 0 || c.MaxTypesPerStream <= 0 {
		errs = append(errs, errors.New("modules.xds: maxStreams, maxStreamsPerConnection and maxTypesPerStream must be positive"))
	}
	if c.RequestRate <= 0 || c.RequestBurst <= 0 {
		errs = append(errs, errors.New("modules.xds: requestRate and requestBurst must be positive"))
	}
	if c.Debounce.Quiet < 0 || c.Debounce.Max <= 0 || c.Debounce.Quiet > c.Debounce.Max {
		errs = append(errs, fmt.Errorf("modules.xds.debounce: need 0 <= quiet (%v) <= max (%v) and max > 0", c.Debounce.Quiet, c.Debounce.Max))
	}
	if c.Keepalive.Time <= 0 || c.Keepalive.Timeout <= 0 || c.Keepalive.MinClientInterval <= 0 {
		errs = append(errs, errors.New("modules.xds.keepalive: durations must be positive"))
	}
	return errors.Join(errs...)
}

// Module is the xds module. Its methods other than the lifecycle hooks are
// the api.XDS interface other modules use.
type Module struct {
	cfg *Config
	log *slog.Logger
	srv *server.Server

	mu       sync.Mutex
	lis      net.Listener
	tlsLis   net.Listener
	tlsCfg   *tls.Config
	running  bool
	serveErr error
}

var (
	_ api.XDS          = (*Module)(nil)
	_ core.Provisioner = (*Module)(nil)
	_ core.Runner      = (*Module)(nil)
	_ core.Readier     = (*Module)(nil)
)

// MeshModule implements core.Module.
func (*Module) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{
		ID:          ID,
		New:         func() core.Module { return new(Module) },
		Config:      func() any { c := Default(); return &c },
		Description: "xDS server: ADS (state of the world and delta) to Envoy and proxyless gRPC, push debouncing, ACK/NACK tracking",
	}
}

// Provision builds the server and binds the plaintext port, so a port in
// use fails startup rather than the first proxy.
func (m *Module) Provision(ctx *core.Context) error {
	cfg, err := core.ConfigAs[Config](ctx)
	if err != nil {
		return err
	}
	m.cfg, m.log = cfg, ctx.Logger()
	quiet := cfg.Debounce.Quiet
	if quiet == 0 {
		quiet = -1 // server.Options: 0 means default, negative means none
	}
	b := ctx.Bus()
	m.srv = server.New(server.Options{
		TrustDomain:                ctx.Mesh().TrustDomain,
		MaxStreams:                 cfg.MaxStreams,
		MaxStreamsPerConnection:    cfg.MaxStreamsPerConnection,
		RequestRate:                cfg.RequestRate,
		RequestBurst:               cfg.RequestBurst,
		MaxTypesPerStream:          cfg.MaxTypesPerStream,
		KeepaliveTime:              cfg.Keepalive.Time,
		KeepaliveTimeout:           cfg.Keepalive.Timeout,
		KeepaliveMinClientInterval: cfg.Keepalive.MinClientInterval,
		DebounceQuiet:              quiet,
		DebounceMax:                cfg.Debounce.Max,
		WriteBufferSize:            cfg.WriteBufferSize,
		Logger:                     m.log,
		Registerer:                 ctx.Metrics(),
		Publish:                    b.Publish,
	})
	lis, err := net.Listen("tcp", cfg.Address)
	if err != nil {
		return fmt.Errorf("modules.xds.address: %w", err)
	}
	m.lis = lis
	ctx.HandleAdmin("GET /debug/syncz", http.HandlerFunc(m.syncz))
	ctx.HandleAdmin("GET /debug/config_dump", http.HandlerFunc(m.configDump))
	return nil
}

// Run serves until ctx ends, then stops the gRPC servers gracefully.
func (m *Module) Run(ctx context.Context) error {
	m.mu.Lock()
	lis, tlsLis, tlsCfg := m.lis, m.tlsLis, m.tlsCfg
	m.running = true
	m.mu.Unlock()

	errc := make(chan error, 2)
	var servers []*grpc.Server
	serve := func(g *grpc.Server, l net.Listener, what string) {
		servers = append(servers, g)
		go func() {
			if err := g.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				errc <- fmt.Errorf("serve %s on %s: %w", what, l.Addr(), err)
			}
		}()
	}
	serve(m.srv.NewGRPCServer(nil), lis, "xDS")
	m.log.Info("serving xDS", "address", lis.Addr().String())
	if tlsLis != nil {
		serve(m.srv.NewGRPCServer(credentials.NewTLS(tlsCfg)), tlsLis, "xDS over TLS")
		m.log.Info("serving xDS over TLS", "address", tlsLis.Addr().String())
	}

	runCtx, cancel := context.WithCancel(ctx)
	pushDone := make(chan struct{})
	go func() { _ = m.srv.Run(runCtx); close(pushDone) }()

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		m.mu.Lock()
		m.serveErr = err
		m.mu.Unlock()
	}
	cancel()
	<-pushDone // ends every stream, so graceful stops do not wait on them
	for _, g := range servers {
		stopped := make(chan struct{})
		go func() { g.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			g.Stop()
		}
	}
	return err
}

// Cleanup closes listeners Run never served (a failed startup).
func (m *Module) Cleanup() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.srv != nil {
		m.srv.Stop()
	}
	if m.running {
		return nil
	}
	for _, l := range []net.Listener{m.lis, m.tlsLis} {
		if l != nil {
			_ = l.Close()
		}
	}
	return nil
}

// Ready reports whether the xDS servers are serving.
func (m *Module) Ready() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.serveErr != nil:
		return m.serveErr
	case !m.running:
		return core.ErrNotReady
	}
	return nil
}

// Addr returns the plaintext xDS address (useful with port 0).
func (m *Module) Addr() net.Addr { return m.lis.Addr() }

// TLSAddr returns the TLS xDS address, or nil before EnableTLS.
func (m *Module) TLSAddr() net.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tlsLis == nil {
		return nil
	}
	return m.tlsLis.Addr()
}

// RegisterGenerator implements api.GeneratorRegistry.
func (m *Module) RegisterGenerator(typeURL string, g api.Generator) error {
	return m.srv.RegisterGenerator(typeURL, g)
}

// Push implements api.Pusher.
func (m *Module) Push(req api.PushRequest) { m.srv.Push(req) }

// RegisterService implements api.ServiceRegistry.
func (m *Module) RegisterService(fn func(grpc.ServiceRegistrar), tlsOnly bool) error {
	return m.srv.RegisterService(fn, tlsOnly)
}

// Statuses implements api.StatusSource.
func (m *Module) Statuses() []api.ProxyStatus { return m.srv.Statuses() }

// AckedVersions implements api.StatusSource.
func (m *Module) AckedVersions(typeURL, name string) []string {
	return m.srv.AckedVersions(typeURL, name)
}

// EnableTLS implements api.TLSEnabler. It binds modules.xds.tlsAddress now;
// Run serves it.
func (m *Module) EnableTLS(cfg *tls.Config) error {
	if cfg == nil {
		return errors.New("xds: EnableTLS: nil config")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.running {
		return errors.New("xds: EnableTLS after start; call it from Provision")
	}
	if m.tlsLis != nil {
		return errors.New("xds: TLS already enabled")
	}
	l, err := net.Listen("tcp", m.cfg.TLSAddress)
	if err != nil {
		return fmt.Errorf("modules.xds.tlsAddress: %w", err)
	}
	m.tlsLis, m.tlsCfg = l, cfg.Clone()
	return nil
}

// syncz serves /debug/syncz: every stream's per-type sync state as JSON.
func (m *Module) syncz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(m.srv.Statuses())
}

// configDump serves /debug/config_dump?proxy=ID: what the proxy's streams
// were last sent.
func (m *Module) configDump(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("proxy")
	if id == "" {
		http.Error(w, "missing ?proxy=<node ID or conn ID>; see /debug/syncz", http.StatusBadRequest)
		return
	}
	out, found, err := m.srv.ConfigDump(id)
	switch {
	case err != nil:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	case !found:
		http.Error(w, fmt.Sprintf("no connected proxy %q", id), http.StatusNotFound)
	default:
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(out)
	}
}
