// Package telemetry is meshd's telemetry module: what Mixer did for Istio,
// off the request path. It
//
//   - serves Envoy's access-log service (envoy.service.accesslog.v3.
//     AccessLogService/StreamAccessLogs) on the xDS ports and turns the
//     entries into Istio's request metrics (istio_requests_total,
//     istio_request_duration_milliseconds, istio_request_bytes,
//     istio_response_bytes, istio_tcp_*) with Istio's labels, on the one
//     registry the admin port serves at /metrics (receiver.go, labels.go);
//   - bounds their cardinality per metric, folding what does not fit into
//     an __overflow__ series (internal/series);
//   - gives pilot the access-log and tracing config for the listeners and
//     clusters it generates (envoy.go, contract in package api);
//   - exports access logs to sinks: the built-in JSON-lines file
//     (package filesink) and whatever other modules add (sinks.go);
//   - serves /debug/telemetryz.
//
// See README.md for the label mapping and docs/telemetry.md for operators.
package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/bus"
	"github.com/meshd/meshd/modules/telemetry/api"
	"github.com/meshd/meshd/modules/telemetry/filesink"
	"github.com/meshd/meshd/modules/telemetry/internal/series"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// ID is the module ID and config section name.
const ID = api.ID

func init() { core.Register(new(Module)) }

// Module is the telemetry module. Besides the lifecycle hooks it
// implements api.EnvoyConfig and api.SinkRegistry.
type Module struct {
	running atomic.Bool

	cfg    *Config
	log    *slog.Logger
	m      *metrics
	envoy  *envoyConfig
	recv   *receiver
	peers  *peers
	sinks  *sinks
	file   *filesink.Sink
	sub    *bus.Subscription
	status statusSource // nil when the xds module gives no status
}

// Interface guards.
var (
	_ core.Provisioner  = (*Module)(nil)
	_ core.Runner       = (*Module)(nil)
	_ core.Readier      = (*Module)(nil)
	_ core.CleanerUpper = (*Module)(nil)
	_ api.EnvoyConfig   = (*Module)(nil)
	_ api.SinkRegistry  = (*Module)(nil)
)

// MeshModule implements core.Module.
func (*Module) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{
		ID:          ID,
		New:         func() core.Module { return new(Module) },
		Requires:    []core.ModuleID{"xds"},
		Config:      func() any { return Default() },
		Description: "access-log service turning proxies' logs into Istio's request metrics, tracing config for proxies, access-log sinks",
	}
}

// xdsDep is what telemetry needs of the xds module.
type xdsDep interface {
	xdsapi.ServiceRegistry
}

type statusSource interface {
	Statuses() []xdsapi.ProxyStatus
}

// deps is what the module takes from the host; tests fill it directly.
type deps struct {
	cfg           *Config
	log           *slog.Logger
	reg           prometheus.Registerer
	trustDomain   string
	clusterDomain string
	bus           *bus.Bus // nil: no proxy events
	status        statusSource
}

// Provision registers the access-log service on the xDS ports, the
// metrics and /debug/telemetryz, and opens the file sink.
func (m *Module) Provision(ctx *core.Context) error {
	cfg, err := core.ConfigAs[Config](ctx)
	if err != nil {
		return err
	}
	x, err := core.Dep[xdsDep](ctx, "xds")
	if err != nil {
		return err
	}
	st, _ := x.(statusSource)
	if err := m.setup(deps{cfg: cfg, log: ctx.Logger(), reg: ctx.Metrics(), trustDomain: ctx.Mesh().TrustDomain,
		clusterDomain: ctx.Mesh().ClusterDomain, bus: ctx.Bus(), status: st}); err != nil {
		return err
	}
	if err := x.RegisterService(m.registerALS, false); err != nil {
		return err
	}
	ctx.HandleAdmin("GET /debug/telemetryz", http.HandlerFunc(m.telemetryz))
	return nil
}

func (m *Module) setup(d deps) error {
	if err := d.cfg.Validate(); err != nil {
		return err
	}
	m.cfg, m.log, m.status = d.cfg, d.log, d.status
	var err error
	if m.m, err = newMetrics(d.reg); err != nil {
		return err
	}
	if m.envoy, err = newEnvoyConfig(d.cfg); err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	fam := func(labels []int, specs []series.MetricSpec) (*series.Family, error) {
		return series.NewFamily(series.Options{Labels: labels, Metrics: specs, Registerer: d.reg,
			OverflowTotal: m.m.overflow, SeriesCount: m.m.seriesCount})
	}
	m.peers = newPeers()
	m.sinks = newSinks(m.m, d.cfg.SinkQueue)
	m.recv = &receiver{cfg: &d.cfg.Receiver, trustDomain: d.trustDomain, domain: d.clusterDomain, m: m.m,
		peers: m.peers, sinks: m.sinks, stop: make(chan struct{}), perConn: map[string]int{}}
	if m.recv.http, err = fam(httpLabels, httpSpecs(&d.cfg.Metrics)); err != nil {
		return err
	}
	if m.recv.tcp, err = fam(tcpLabels, tcpSpecs(&d.cfg.Metrics)); err != nil {
		return err
	}
	if fc := d.cfg.FileSink; fc.Path != "" {
		if m.file, err = filesink.New(filesink.Options{Path: fc.Path, MaxBytes: fc.MaxBytes, MaxBackups: fc.MaxBackups}); err != nil {
			return fmt.Errorf("modules.telemetry.fileSink: %w", err)
		}
		if err := m.sinks.add("file", m.file); err != nil {
			return err
		}
	}
	if d.bus != nil {
		m.sub = d.bus.Subscribe(string(ID), xdsapi.TopicProxyConnected, xdsapi.TopicProxyDisconnected)
	}
	return nil
}

// registerALS registers the access-log service on a gRPC server.
func (m *Module) registerALS(g grpc.ServiceRegistrar) {
	alsv3.RegisterAccessLogServiceServer(g, m.recv)
}

// Run exports to the sinks, follows proxies connecting to xDS, expires
// idle series, and ends every access-log stream when ctx ends.
func (m *Module) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { m.sinks.run(ctx) })
	wg.Go(func() { m.maintain(ctx) })
	if m.sub != nil {
		wg.Go(func() { m.watchProxies(ctx) })
	}
	m.running.Store(true)
	<-ctx.Done()
	m.running.Store(false)
	m.recv.shutdown()
	wg.Wait()
	return nil
}

// watchProxies keeps the address book of xDS-connected proxies.
func (m *Module) watchProxies(ctx context.Context) {
	for {
		events, err := m.sub.Next(ctx)
		if err != nil {
			return
		}
		for _, e := range events {
			switch e := e.(type) {
			case xdsapi.ProxyConnected:
				if e.Proxy != nil {
					m.peers.add("xds/"+e.ConnID, e.Proxy)
				}
			case xdsapi.ProxyDisconnected:
				m.peers.remove("xds/" + e.ConnID)
			case bus.Resync:
				// Events were lost: forget xDS connections that are gone.
				// Ones that connected meanwhile come back when they
				// reconnect or open an access-log stream.
				live := map[string]bool{}
				if m.status != nil {
					for _, st := range m.status.Statuses() {
						live["xds/"+st.ConnID] = true
					}
				}
				m.peers.retain(func(conn string) bool { return !strings.HasPrefix(conn, "xds/") || live[conn] })
			}
		}
	}
}

// peerRebuildDelay coalesces bursts of connects into one rebuild of the
// address book.
const peerRebuildDelay = 100 * time.Millisecond

// maintain rebuilds the address book after changes and expires idle
// series.
func (m *Module) maintain(ctx context.Context) {
	var tick <-chan time.Time
	idle := m.cfg.Metrics.SeriesIdleTimeout
	if idle > 0 {
		t := time.NewTicker(min(max(idle/4, time.Second), time.Minute))
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.peers.dirty:
			select {
			case <-ctx.Done():
				return
			case <-time.After(peerRebuildDelay):
			}
			m.m.peers.Set(float64(m.peers.rebuild()))
		case now := <-tick:
			before := now.Add(-idle).Unix()
			n := m.recv.http.Expire(before, now.Unix()) + m.recv.tcp.Expire(before, now.Unix())
			m.m.expired.Add(float64(n))
		}
	}
}

// Ready reports whether the module runs.
func (m *Module) Ready() error {
	if !m.running.Load() {
		return core.ErrNotReady
	}
	return nil
}

// Cleanup ends streams, stops following the bus and closes the file sink.
func (m *Module) Cleanup() error {
	if m.recv != nil {
		m.recv.shutdown()
	}
	if m.sub != nil {
		m.sub.Close()
	}
	if m.file != nil {
		return m.file.Close()
	}
	return nil
}

// HTTPAccessLogs implements api.EnvoyConfig.
func (m *Module) HTTPAccessLogs(p *xdsapi.Proxy, dir api.Direction) []*accesslogv3.AccessLog {
	if m.envoy == nil {
		return nil
	}
	return m.envoy.HTTPAccessLogs(p, dir)
}

// TCPAccessLogs implements api.EnvoyConfig.
func (m *Module) TCPAccessLogs(p *xdsapi.Proxy, dir api.Direction) ([]*accesslogv3.AccessLog, *tcpv3.TcpProxy_TcpAccessLogOptions) {
	if m.envoy == nil {
		return nil, nil
	}
	return m.envoy.TCPAccessLogs(p, dir)
}

// Tracing implements api.EnvoyConfig.
func (m *Module) Tracing(p *xdsapi.Proxy, dir api.Direction) *hcmv3.HttpConnectionManager_Tracing {
	if m.envoy == nil {
		return nil
	}
	return m.envoy.Tracing(p, dir)
}

// Clusters implements api.EnvoyConfig.
func (m *Module) Clusters(p *xdsapi.Proxy) []*clusterv3.Cluster {
	if m.envoy == nil {
		return nil
	}
	return m.envoy.Clusters(p)
}

// Key implements api.EnvoyConfig.
func (m *Module) Key(p *xdsapi.Proxy) string {
	if m.envoy == nil {
		return ""
	}
	return m.envoy.Key(p)
}

// AddSink implements api.SinkRegistry.
func (m *Module) AddSink(name string, s api.Sink) error {
	if m.sinks == nil {
		return errors.New("telemetry: AddSink before Provision")
	}
	return m.sinks.add(name, s)
}

// Status is what /debug/telemetryz shows.
type Status struct {
	Streams  StreamStatus         `json:"streams"`
	Entries  map[string]uint64    `json:"entries"`
	Dropped  DropStatus           `json:"dropped"`
	Metrics  []series.MetricStats `json:"metrics"`
	Peers    int                  `json:"peerAddresses"`
	Sinks    []SinkStatus         `json:"sinks"`
	Tracing  TracingStatus        `json:"tracing"`
	Receiver ReceiverConfig       `json:"limits"`
}

// StreamStatus counts access-log streams.
type StreamStatus struct {
	Open int64 `json:"open"`
}

// DropStatus counts what the receiver dropped, by reason.
type DropStatus struct {
	Messages map[string]uint64 `json:"messages"`
	Entries  map[string]uint64 `json:"entries"`
}

// TracingStatus is the tracing config pushed to proxies.
type TracingStatus struct {
	Enabled         bool    `json:"enabled"`
	OTelAddress     string  `json:"otelAddress,omitempty"`
	SamplingPercent float64 `json:"samplingPercent"`
	CustomTags      int     `json:"customTags"`
}

// Status returns the module's state.
func (m *Module) Status() Status {
	r := m.recv
	return Status{
		Streams: StreamStatus{Open: r.nStreams.Load()},
		Entries: map[string]uint64{"http": r.nHTTP.Load(), "tcp": r.nTCP.Load()},
		Dropped: DropStatus{
			Messages: map[string]uint64{reasonTooLarge: r.msgTooLarge.Load(), reasonMalformed: r.msgMalformed.Load()},
			Entries:  map[string]uint64{reasonTooManyEntries: r.entriesTooMany.Load(), reasonMalformed: r.entriesMalformed.Load()},
		},
		Metrics: append(r.http.Stats(), r.tcp.Stats()...),
		Peers:   len(*m.peers.snap.Load()),
		Sinks:   m.sinks.status(),
		Tracing: TracingStatus{Enabled: m.cfg.Tracing.OTelAddress != "", OTelAddress: m.cfg.Tracing.OTelAddress,
			SamplingPercent: m.cfg.Tracing.SamplingPercent, CustomTags: len(m.cfg.Tracing.CustomTags)},
		Receiver: *r.cfg,
	}
}

func (m *Module) telemetryz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(m.Status())
}
