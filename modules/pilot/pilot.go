// Package pilot is meshd's pilot module: it turns services, endpoints and
// the config galley accepted into what each proxy needs, and hands that to
// the xds module to serve.
//
// It runs the registry aggregate (ServiceEntries and WorkloadEntries from
// galley, workloads registered at run time, and any discovery source
// another module adds), rebuilds its index whenever config or the registry
// changes, and asks for a push: a full one when routing config or a
// service definition changed, an EDS-only one naming the affected clusters
// when only endpoints did. It registers one generator per resource type
// (CDS, EDS, LDS, RDS) that serves proxyless gRPC clients from
// generate/proxyless and Envoy sidecars and gateways from generate/envoy,
// both over the shared builders in generate.
//
// See README.md for config, events, metrics and the admin API.
package pilot

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/bus"
	galleyapi "github.com/meshd/meshd/modules/galley/api"
	pilotapi "github.com/meshd/meshd/modules/pilot/api"
	"github.com/meshd/meshd/modules/pilot/generate"
	"github.com/meshd/meshd/modules/pilot/generate/envoy"
	"github.com/meshd/meshd/modules/pilot/generate/proxyless"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
	telemetryapi "github.com/meshd/meshd/modules/telemetry/api"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// ID is the module ID and the key of its config section (modules.pilot).
const ID core.ModuleID = "pilot"

func init() { core.Register(new(Module)) }

// Config is the modules.pilot section.
type Config struct {
	RootNamespace string   `mapstructure:"rootNamespace" doc:"namespace whose DestinationRules and Sidecar apply mesh-wide; Istio's istio-system, so Istio YAML's mesh-wide rules apply unchanged"`
	Registries    []string `mapstructure:"registries" doc:"registry precedence, highest first: when two registries know the same service (host name and namespace), the first one's definition and endpoints win and the clash is reported. Registries not listed come after, by name. config is ServiceEntries, WorkloadEntries and run-time registrations"`
	MaxWorkloads  int      `mapstructure:"maxWorkloads" doc:"run-time workload registrations kept at most; more are refused (HTTP 429), so a misbehaving agent fleet cannot grow memory without bound"`
}

// Default returns the defaults.
func Default() Config {
	return Config{
		RootNamespace: "istio-system",
		Registries:    []string{registry.SourceConfig},
		MaxWorkloads:  10000,
	}
}

// Validate checks values decoding cannot.
func (c *Config) Validate() error {
	var errs []error
	if c.RootNamespace == "" {
		errs = append(errs, errors.New("modules.pilot.rootNamespace: must not be empty"))
	}
	seen := map[string]bool{}
	for i, r := range c.Registries {
		switch {
		case r == "":
			errs = append(errs, fmt.Errorf("modules.pilot.registries[%d]: must not be empty", i))
		case seen[r]:
			errs = append(errs, fmt.Errorf("modules.pilot.registries[%d]: %q listed twice", i, r))
		}
		seen[r] = true
	}
	if c.MaxWorkloads < 0 {
		errs = append(errs, errors.New("modules.pilot.maxWorkloads: must not be negative"))
	}
	return errors.Join(errs...)
}

// Module is the pilot module.
type Module struct {
	cfg    *Config
	log    *slog.Logger
	mesh   core.MeshConfig
	xds    xdsapi.XDS
	galley galleyapi.Accepted
	bus    *bus.Bus
	sub    *bus.Subscription
	m      *metrics

	agg    *registry.Aggregate
	config *registry.ConfigSource
	envoy  *envoy.Generator
	cache  *generate.Cache
	ext    []any
	tc     telemetryapi.EnvoyConfig // nil when telemetry is off

	scopeMu sync.Mutex
	scopeIx *index.Index
	scopes  map[string]*generate.Scope

	// ix is the index generators read; swapped whole, read without locks.
	ix atomic.Pointer[index.Index]
	// synced is set once the first full push is asked for; generators
	// refuse to serve before.
	synced atomic.Bool

	// Owned by Run's loop.
	snap       *galleyapi.Snapshot
	view       *registry.View
	hosts      *hostIndex
	digest     uint64
	pushedOnce bool
	pushedRev  uint64 // config revision of the last push

	mu      sync.Mutex
	running bool
	state   state
}

// state is what /debug/pilotz and Ready report.
type state struct {
	Ready         bool      `json:"ready"`
	Waiting       string    `json:"waiting,omitempty"`
	IndexVersion  string    `json:"indexVersion"`
	Revision      uint64    `json:"configRevision"`
	RegistryVer   uint64    `json:"registryVersion"`
	LastPush      string    `json:"lastPush,omitempty"`
	LastPushAt    time.Time `json:"lastPushAt,omitzero"`
	LastReason    string    `json:"lastPushReason,omitempty"`
	FullPushes    uint64    `json:"fullPushes"`
	EDSPushes     uint64    `json:"edsPushes"`
	LastEDSNames  []string  `json:"lastEdsClusters,omitempty"`
	IndexBuilds   uint64    `json:"indexBuilds"`
	LastBuildTime string    `json:"lastIndexBuildTime,omitempty"`
}

var (
	_ core.Provisioner   = (*Module)(nil)
	_ core.Runner        = (*Module)(nil)
	_ core.Readier       = (*Module)(nil)
	_ pilotapi.Registrar = (*Module)(nil)
	_ registry.Adder     = (*Module)(nil)
)

// MeshModule implements core.Module.
func (*Module) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{
		ID:          ID,
		New:         func() core.Module { return new(Module) },
		Requires:    []core.ModuleID{"xds", "galley"},
		Uses:        []core.ModuleID{telemetryapi.ID},
		Config:      func() any { c := Default(); return &c },
		Description: "service registry and traffic rules: ServiceEntry, WorkloadEntry, VirtualService, DestinationRule and Sidecar to xDS for Envoy and proxyless gRPC",
	}
}

// Provision wires pilot to xds and galley, registers its generators and
// admin routes. Discovery modules add their sources after this, from their
// own Provision.
func (m *Module) Provision(ctx *core.Context) error {
	cfg, err := core.ConfigAs[Config](ctx)
	if err != nil {
		return err
	}
	m.cfg, m.log, m.mesh, m.bus = cfg, ctx.Logger(), ctx.Mesh(), ctx.Bus()
	if m.xds, err = core.Dep[xdsapi.XDS](ctx, "xds"); err != nil {
		return err
	}
	if m.galley, err = core.Dep[galleyapi.Accepted](ctx, "galley"); err != nil {
		return err
	}
	if m.m, err = newMetrics(ctx.Metrics()); err != nil {
		return err
	}
	m.agg = registry.New(m.log, cfg.Registries)
	m.config = registry.NewConfigSource()
	if err := m.agg.Add(registry.SourceConfig, m.config); err != nil {
		return err
	}
	m.cache = generate.NewCache()
	// Security is always on: whatever PeerAuthentication,
	// AuthorizationPolicy, RequestAuthentication and mesh.rateLimits say is
	// enforced by every Envoy and proxyless server (package security).
	m.ext = append(m.ext, envoy.Security{}, proxyless.Servers{})
	m.envoy = envoy.New(envoy.Options{Extensions: slices.Clone(m.ext)})
	switch tc, err := core.Dep[telemetryapi.EnvoyConfig](ctx, telemetryapi.ID); {
	case errors.Is(err, core.ErrModuleDisabled):
	case err != nil:
		return err
	default:
		m.tc = tc
		m.ext = append(m.ext, telemetryExtension{tc})
		m.envoy = envoy.New(envoy.Options{Extensions: slices.Clone(m.ext)})
	}
	m.snap = m.galley.Accepted()
	m.config.SetConfig(m.snap)
	m.ix.Store(index.New(m.mesh, cfg.RootNamespace, nil, m.snap))
	m.state.Waiting = "registry sources have not reported yet"

	for _, t := range []string{xdsapi.ClusterType, xdsapi.EndpointType, xdsapi.ListenerType, xdsapi.RouteType} {
		if err := m.xds.RegisterGenerator(t, &generator{m: m, typeURL: t}); err != nil {
			return err
		}
	}
	// Subscribe now, not in Run: an accepted revision published between
	// Provision and Run must not be missed.
	m.sub = m.bus.Subscribe(string(ID), galleyapi.TopicConfigAccepted)
	m.routes(ctx)
	return nil
}

// AddSource implements registry.Adder.
func (m *Module) AddSource(name string, src registry.Source) error {
	if name == registry.SourceConfig {
		return fmt.Errorf("registry source name %q is pilot's own", name)
	}
	return m.agg.Add(name, src)
}

// ProxylessListenerExtension adds listeners for proxyless gRPC proxies:
// the server-side listeners grpc-go's xDS servers ask for (gRFC A36) next
// to the client listeners pilot builds. names is nil for a full recompute
// (return every listener of the proxy) or the names asked for (return only
// those). The proxy is read as generator keys allow: its type, namespace
// and labels. Listeners must carry their routes inline, or name route
// configurations pilot serves (host:port).
type ProxylessListenerExtension interface {
	ProxylessListeners(ix *index.Index, p *xdsapi.Proxy, names []string) []*listenerv3.Listener
}

// AddExtension adds an extension to what pilot generates: ext implements
// any of the envoy package's extension interfaces (network filters, HTTP
// filters, connection manager and listener hooks for sidecars and
// gateways) and ProxylessListenerExtension. Security and telemetry modules
// call it from Provision; after pilot runs it fails.
func (m *Module) AddExtension(ext any) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.running {
		return errors.New("pilot: extensions must be added before pilot runs (from Provision)")
	}
	m.ext = append(m.ext, ext)
	m.envoy = envoy.New(envoy.Options{Extensions: slices.Clone(m.ext)})
	return nil
}

// Run runs the registry sources and rebuilds and pushes on every change
// until ctx ends.
func (m *Module) Run(ctx context.Context) error {
	m.mu.Lock()
	m.running = true
	m.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = m.agg.Run(ctx)
	}()
	defer func() { <-done }()

	ready := m.sub.Ready()
	// Until the first push, look again now and then: what it waits for
	// (galley's first accepted config) does not always announce itself.
	waiting := time.NewTicker(100 * time.Millisecond)
	defer waiting.Stop()
	for {
		reason := ""
		select {
		case <-ctx.Done():
			return nil
		case <-waiting.C:
			if m.pushedOnce {
				waiting.Stop()
				continue
			}
			reason = "start"
			if snap := m.galley.Accepted(); snap != m.snap {
				m.snap = snap
				m.config.SetConfig(snap)
			}
		case _, ok := <-ready:
			if !ok {
				ready = nil // bus closed: shutting down
				continue
			}
			reason = m.drainConfigEvents()
		case <-m.agg.Changed():
			reason = "registry"
		}
		if reason != "" {
			m.rebuild(reason)
		}
	}
}

// drainConfigEvents takes the waiting bus events and, if any says config
// changed (or events were lost), hands the accepted snapshot to the config
// source. It returns the rebuild reason, or "" when nothing changed.
func (m *Module) drainConfigEvents() string {
	reason := ""
	for _, ev := range m.sub.Drain() {
		switch ev.(type) {
		case galleyapi.ConfigAccepted:
			if reason == "" {
				reason = "config"
			}
		case bus.Resync:
			reason = "resync"
		}
	}
	if reason == "" {
		return ""
	}
	snap := m.galley.Accepted()
	if snap == m.snap && reason != "resync" {
		return ""
	}
	m.snap = snap
	m.config.SetConfig(snap) // the aggregate signals Changed; the rebuild below sees it already
	return reason
}

// rebuild builds a new index if config or registry changed and asks for
// the push the change needs.
func (m *Module) rebuild(reason string) {
	if !m.agg.Synced() {
		m.setWaiting("registry sources have not reported yet: " + strings.Join(m.agg.Pending(), ", "))
		return
	}
	if r, ok := m.galley.(core.Readier); ok && !m.pushedOnce {
		if err := r.Ready(); err != nil {
			m.setWaiting("galley has no accepted config yet: " + err.Error())
			return
		}
	}
	start := time.Now()
	view := m.agg.View()
	snap := m.snap
	old := m.ix.Load()
	if m.pushedOnce && view == m.view && old != nil && old.Config == snap {
		return
	}
	ix := index.New(m.mesh, m.cfg.RootNamespace, view, snap)
	digest := routingDigest(snap)
	change := registry.Diff(m.view, view)
	first := !m.pushedOnce
	routing := digest != m.digest
	oldView := m.view
	m.ix.Store(ix)
	m.synced.Store(true)
	m.handOverHosts(view)
	m.view, m.digest, m.pushedOnce = view, digest, true
	m.m.observeIndex(ix, view, time.Since(start))

	var req xdsapi.PushRequest
	var edsNames []string
	switch {
	case first:
		req = xdsapi.FullPush("start")
	case routing || change.Definitions:
		req = xdsapi.FullPush(reason)
	case len(change.Endpoints) > 0:
		names, full := m.endpointClusters(ix, oldView, view, change.Endpoints)
		if full {
			req = xdsapi.FullPush("endpoints")
		} else {
			req, edsNames = xdsapi.EndpointPush("endpoints", names...), names
			securityUpdates(&req, oldView, view, change.Endpoints, names)
		}
	default:
		if rev := snap.Revision(); rev != m.pushedRev {
			// Nothing any proxy sees changed, yet they all run this
			// revision now: say so, or status would call them behind.
			m.xds.Push(xdsapi.PushRequest{Reason: reason, Revision: rev})
			m.pushedRev = rev
		}
		m.finishBuild(ix, start, "", reason, nil)
		return // e.g. a WorkloadEntry for no service: nothing any proxy sees
	}
	if req.Full {
		m.cache.Sweep() // what the last full push did not use is gone
	}
	// Every push is built on this index, so on galley's revision snap:
	// proxies that take it run that revision (meshd status, config history).
	req.Revision = snap.Revision()
	m.pushedRev = req.Revision
	m.xds.Push(req)
	kind := "eds"
	if req.Full {
		kind = "full"
	}
	m.m.pushes.WithLabelValues(kind).Inc()
	m.finishBuild(ix, start, kind, req.Reason, edsNames)
	m.publish(view, change, req.Full)
}

func (m *Module) finishBuild(ix *index.Index, start time.Time, kind, reason string, eds []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := &m.state
	st.Ready, st.Waiting = true, ""
	st.IndexVersion, st.Revision = ix.Version, ix.Config.Revision()
	if ix.Registry != nil {
		st.RegistryVer = ix.Registry.Version
	}
	st.IndexBuilds++
	st.LastBuildTime = time.Since(start).String()
	if kind == "" {
		return
	}
	st.LastPush, st.LastReason, st.LastPushAt = kind, reason, time.Now()
	if kind == "full" {
		st.FullPushes++
		st.LastEDSNames = nil
	} else {
		st.EDSPushes++
		st.LastEDSNames = eds
	}
}

func (m *Module) setWaiting(why string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.state.Waiting = why
}

func (m *Module) publish(view *registry.View, change registry.Change, full bool) {
	ev := pilotapi.ServicesChanged{Version: view.Version, Definitions: full}
	for _, k := range change.Endpoints {
		ev.Endpoints = append(ev.Endpoints, k.Hostname+"/"+k.Namespace)
	}
	m.bus.Publish(ev)
}

// endpointClusters returns the cluster names an endpoint-only change
// touches: every port, and every subset any DestinationRule defines, of the
// changed services. It asks for a full push instead when the change cannot
// be an EDS push: a DNS service (its endpoints live in the cluster) or, with
// sidecars connected, a change in which addresses serve which service port
// (a sidecar's inbound listeners follow its own address's services).
func (m *Module) endpointClusters(ix *index.Index, old, cur *registry.View, keys []model.Key) ([]string, bool) {
	sidecars := -1 // unknown until needed
	var names []string
	for _, k := range keys {
		svc, ok := cur.Service(k)
		if !ok {
			return nil, true
		}
		if svc.Resolution != model.ResolutionStatic {
			return nil, true
		}
		if prev, ok := old.Service(k); ok && !sameTargets(prev, svc) {
			if sidecars < 0 {
				sidecars = m.sidecarCount()
			}
			if sidecars > 0 {
				return nil, true
			}
		}
		subsets := append([]string{""}, ix.SubsetNames(svc.Hostname)...)
		for _, p := range svc.Ports {
			for _, sub := range subsets {
				names = append(names, index.ClusterName(p.Number, sub, svc.Hostname))
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names), false
}

// sameTargets reports whether two versions of a service have the same
// (address, port, service port) triples, whatever their weights, health,
// labels or localities.
func sameTargets(a, b *model.Service) bool {
	if len(a.Endpoints) != len(b.Endpoints) {
		return false
	}
	for i := range a.Endpoints {
		x, y := a.Endpoints[i], b.Endpoints[i]
		if x.Address != y.Address || x.Port != y.Port || x.ServicePort != y.ServicePort {
			return false
		}
	}
	return true
}

func (m *Module) sidecarCount() int {
	n := 0
	for _, st := range m.xds.Statuses() {
		if st.Type == xdsapi.Sidecar {
			n++
		}
	}
	return n
}

// routingKinds are the kinds whose change can alter routing config; the
// others (ServiceEntry, WorkloadEntry, WorkloadGroup) reach proxies through
// the registry, whose diff tells definitions from endpoints.
func registryKind(k galleyapi.Kind) bool {
	return k == galleyapi.KindServiceEntry || k == galleyapi.KindWorkloadEntry || k == galleyapi.KindWorkloadGroup
}

// routingDigest fingerprints every object of the snapshot that is not a
// registry kind, so editing a WorkloadEntry's weight is an endpoint change
// and not a full push.
func routingDigest(snap *galleyapi.Snapshot) uint64 {
	h := fnv.New64a()
	var buf []byte
	for _, o := range snap.Objects() {
		if registryKind(o.Kind) {
			continue
		}
		buf = append(buf[:0], o.Kind.Kind...)
		buf = append(buf, 0)
		buf = append(buf, o.Namespace...)
		buf = append(buf, 0)
		buf = append(buf, o.Name...)
		buf = append(buf, 0)
		buf = strconv.AppendUint(buf, objectHash(o), 36)
		buf = append(buf, 0)
		h.Write(buf)
	}
	return h.Sum64()
}

// Ready reports whether pilot has pushed its first full config, or why not.
func (m *Module) Ready() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state.Ready {
		return nil
	}
	if m.state.Waiting != "" {
		return fmt.Errorf("%w: %s", core.ErrNotReady, m.state.Waiting)
	}
	return core.ErrNotReady
}

// Cleanup releases the bus subscription.
func (m *Module) Cleanup() error {
	if m.sub != nil {
		m.sub.Close()
	}
	return nil
}

// RegisterWorkload implements api.Registrar.
func (m *Module) RegisterWorkload(w pilotapi.Workload) error {
	if err := w.Validate(); err != nil {
		return fmt.Errorf("register workload %s/%s: %w", w.Namespace, w.Name, err)
	}
	if m.cfg.MaxWorkloads > 0 {
		list := m.config.Workloads()
		if len(list) >= m.cfg.MaxWorkloads && !slices.ContainsFunc(list, func(x pilotapi.Workload) bool {
			return x.Namespace == w.Namespace && x.Name == w.Name
		}) {
			return fmt.Errorf("register workload %s/%s: %w (%d)", w.Namespace, w.Name, ErrTooManyWorkloads, m.cfg.MaxWorkloads)
		}
	}
	if err := m.config.Register(w); err != nil {
		return err
	}
	m.m.workloads.Set(float64(len(m.config.Workloads())))
	return nil
}

// DeregisterWorkload implements api.Registrar.
func (m *Module) DeregisterWorkload(namespace, name string) bool {
	ok := m.config.Deregister(namespace, name)
	m.m.workloads.Set(float64(len(m.config.Workloads())))
	return ok
}

// Workloads implements api.Registrar.
func (m *Module) Workloads() []pilotapi.Workload { return m.config.Workloads() }

// ErrTooManyWorkloads is returned when modules.pilot.maxWorkloads is reached.
var ErrTooManyWorkloads = errors.New("too many registered workloads; see modules.pilot.maxWorkloads")

func (m *Module) pushedOnceAtomic() bool { return m.synced.Load() }

// Index returns the index generators read now (for tests and debugging).
func (m *Module) Index() *index.Index { return m.ix.Load() }
