package galley

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/bus"
	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/galley/analyze"
	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/source"
)

func init() { core.Register(new(Module)) }

// ID is the module ID and config section name.
const ID core.ModuleID = "galley"

// FileSourceName is the name of the file source in logs and configz.
const FileSourceName = "files"

// syncTimeout bounds the wait for every source's first full report before
// galley applies what it has (a source that never syncs must not keep the
// files from being applied).
const syncTimeout = 30 * time.Second

// maxLoggedFindings caps the findings logged per rejection;
// /debug/configz has them all.
const maxLoggedFindings = 20

// Module is the galley module: it runs the config sources, accepts or
// rejects each change (engine.go), keeps accepted revisions in the store
// (store.go), serves the admin API (admin.go) and publishes accepted config
// to pilot.
type Module struct {
	cfg     *Config
	log     *slog.Logger
	bus     *bus.Bus
	mesh    core.MeshConfig
	metrics *metrics
	store   *revStore
	engine  *engine

	mu         sync.Mutex
	sources    []*sourceRun
	validators []NamedValidator
	started    bool
	hosts      atomic.Pointer[hostIndex]

	// Reports from sources wait here for the run loop.
	inMu    sync.Mutex
	queue   map[string]queued
	syncs   []syncMark
	wake    chan struct{}
	recheck chan struct{}

	ready atomic.Bool
}

// hostIndex holds the registry pilot handed over.
type hostIndex struct {
	hosts     analyze.HostIndex
	workloads analyze.WorkloadIndex
}

type queued struct {
	update api.Update
	source string
}

// syncMark records a source's Synced call and the origins it had reported.
type syncMark struct {
	source string
	seen   map[string]bool
}

// sourceRun is one source and what galley tracks of it.
type sourceRun struct {
	name   string
	src    api.ConfigSource
	mu     sync.Mutex
	seen   map[string]bool
	synced bool // reported its full state at least once
	runs   int
	err    string
}

// MeshModule implements core.Module.
func (*Module) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{
		ID:          ID,
		New:         func() core.Module { return new(Module) },
		Config:      func() any { return Default() },
		Description: "config: Istio YAML from files (and other sources), validated and analyzed before it is accepted; accepted revisions with history, diff and rollback",
	}
}

// Interface guards.
var (
	_ core.Provisioner = (*Module)(nil)
	_ core.Runner      = (*Module)(nil)
	_ core.Readier     = (*Module)(nil)
	_ api.Galley       = (*Module)(nil)
	_ api.Accepted     = (*Module)(nil)
)

// deps is what the module takes from the host; tests fill it directly.
type deps struct {
	cfg     *Config
	log     *slog.Logger
	ns      *store.Namespace
	bus     *bus.Bus
	metrics prometheus.Registerer
	mesh    core.MeshConfig
	now     func() time.Time
}

// Provision loads the last accepted revision from the store, so that it
// serves before any file is read, and sets up the file source and the
// admin API.
func (m *Module) Provision(ctx *core.Context) error {
	cfg, err := core.ConfigAs[Config](ctx)
	if err != nil {
		return err
	}
	err = m.setup(deps{
		cfg: cfg, log: ctx.Logger(), ns: ctx.Store(), bus: ctx.Bus(), metrics: ctx.Metrics(),
		mesh: ctx.Mesh(), now: time.Now,
	})
	if err != nil {
		return err
	}
	m.routes(ctx.HandleAdmin)
	return nil
}

// setup is Provision without the host.
func (m *Module) setup(d deps) error {
	if err := d.cfg.Validate(); err != nil {
		return err
	}
	if d.now == nil {
		d.now = time.Now
	}
	m.cfg, m.log, m.bus, m.mesh = d.cfg, d.log, d.bus, d.mesh
	m.queue = map[string]queued{}
	m.wake = make(chan struct{}, 1)
	m.recheck = make(chan struct{}, 1)
	var err error
	if m.metrics, err = newMetrics(d.metrics); err != nil {
		return err
	}
	if m.store, err = newRevStore(d.ns, d.cfg.History); err != nil {
		return err
	}
	m.engine = newEngine(m.store, m.checker, m.log, d.now, engineHooks{accepted: m.onAccepted, rejected: m.onRejected})
	if err := m.engine.restore(); err != nil {
		return err
	}
	snap := m.engine.Accepted()
	m.metrics.revision.Set(float64(snap.Revision()))
	m.metrics.setObjects(m.engine.kindCounts())
	if snap.Revision() > 0 {
		m.ready.Store(true)
		m.log.Info("serving the last accepted config from the store until sources are read", "revision", snap.Revision(), "objects", snap.Len())
	}
	if len(d.cfg.Paths) > 0 {
		files := source.NewFiles(source.FilesOptions{Paths: d.cfg.Paths, Debounce: d.cfg.Debounce, Log: m.log.With("source", FileSourceName)})
		m.sources = append(m.sources, &sourceRun{name: FileSourceName, src: files})
	}
	return nil
}

// checker returns a Checker with the current registry and validators.
func (m *Module) checker() *Checker {
	opts := Options{
		Mesh:             m.mesh,
		RootNamespace:    m.mesh.RootNamespace,
		ValidatorTimeout: m.cfg.Validators.Timeout,
		FailurePolicy:    FailurePolicy(m.cfg.Validators.FailurePolicy),
	}
	if h := m.hosts.Load(); h != nil {
		opts.Hosts, opts.Workloads = h.hosts, h.workloads
	}
	m.mu.Lock()
	opts.Validators = slices.Clone(m.validators)
	m.mu.Unlock()
	return New(opts)
}

// Accepted implements api.Accepted.
func (m *Module) Accepted() *api.Snapshot { return m.engine.Accepted() }

// AddSource implements api.Galley.
func (m *Module) AddSource(name string, src api.ConfigSource) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started {
		return api.ErrStarted
	}
	if name == "" || src == nil {
		return errors.New("galley: AddSource needs a name and a source")
	}
	for _, s := range m.sources {
		if s.name == name {
			return fmt.Errorf("galley: source %q added twice", name)
		}
	}
	m.sources = append(m.sources, &sourceRun{name: name, src: src})
	return nil
}

// AddValidator implements api.Galley.
func (m *Module) AddValidator(name string, v api.Validator) error {
	if name == "" || v == nil {
		return errors.New("galley: AddValidator needs a name and a validator")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, nv := range m.validators {
		if nv.Name == name {
			return fmt.Errorf("galley: validator %q added twice", name)
		}
	}
	m.validators = append(m.validators, NamedValidator{Name: name, Validator: v})
	m.engine.invalidateBaseline()
	return nil
}

// SetHostIndex implements api.Galley. It never waits for a check in
// progress; pending rejections are tried again with the new registry.
func (m *Module) SetHostIndex(h api.HostIndex) {
	if h == nil {
		m.hosts.Store(nil)
	} else {
		hi := &hostIndex{hosts: h}
		if w, ok := h.(analyze.WorkloadIndex); ok {
			hi.workloads = w
		}
		m.hosts.Store(hi)
	}
	m.engine.invalidateBaseline()
	signal(m.recheck)
}

// Ready implements core.Readier: galley is ready once it has an accepted
// snapshot, from the store or from the first read of its sources.
func (m *Module) Ready() error {
	if m.ready.Load() {
		return nil
	}
	var waiting []string
	m.mu.Lock()
	for _, s := range m.sources {
		s.mu.Lock()
		if !s.synced {
			waiting = append(waiting, s.name)
		}
		s.mu.Unlock()
	}
	m.mu.Unlock()
	if len(waiting) > 0 {
		return fmt.Errorf("%w: waiting for config sources %s", core.ErrNotReady, strings.Join(waiting, ", "))
	}
	return fmt.Errorf("%w: first config not applied yet", core.ErrNotReady)
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Run runs the sources and applies what they report until ctx ends.
func (m *Module) Run(ctx context.Context) error {
	m.mu.Lock()
	m.started = true
	sources := slices.Clone(m.sources)
	m.mu.Unlock()

	var wg sync.WaitGroup
	defer wg.Wait()
	for _, s := range sources {
		wg.Go(func() { m.runSource(ctx, s) })
	}
	signal(m.wake) // with no sources there is nothing to wait for

	gate := time.NewTimer(syncTimeout)
	defer gate.Stop()
	open := false
	var retry *time.Timer
	var retryC <-chan time.Time
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	for {
		recheck := false
		select {
		case <-ctx.Done():
			return nil
		case <-m.wake:
		case <-m.recheck:
			recheck = true
		case <-retryC:
			retryC, recheck = nil, true
		case <-gate.C:
			if !open {
				m.log.Warn("not every config source reported within the sync timeout; applying what arrived", "timeout", syncTimeout, "waiting", m.Ready())
				open = true
			}
		}
		if !open {
			if !m.allSynced(sources) {
				continue
			}
			open = true
		}
		updates, srcs := m.take()
		if len(updates) > 0 {
			m.engine.apply(ctx, updates, srcs)
		}
		if recheck && ctx.Err() == nil {
			m.engine.retry(ctx)
		}
		if !m.ready.Load() {
			m.ready.Store(true)
			snap := m.engine.Accepted()
			m.log.Info("config sources read", "revision", snap.Revision(), "objects", snap.Len())
		}
		m.metrics.rejected.Set(float64(m.rejectedCount()))
		if retryC == nil && m.engine.pendingValidatorFailures() {
			if retry == nil {
				retry = time.NewTimer(m.cfg.Validators.RetryInterval)
			} else {
				retry.Reset(m.cfg.Validators.RetryInterval)
			}
			retryC = retry.C
		}
	}
}

func (m *Module) allSynced(sources []*sourceRun) bool {
	for _, s := range sources {
		s.mu.Lock()
		ok := s.synced
		s.mu.Unlock()
		if !ok {
			return false
		}
	}
	return true
}

func (m *Module) rejectedCount() int {
	n := 0
	for _, o := range m.engine.status.Load().origins {
		if o.State == StateRejected {
			n++
		}
	}
	return n
}

// take empties the queue. Sources that synced get removals for the origins
// galley holds from them that they did not report.
func (m *Module) take() ([]api.Update, map[string]string) {
	m.inMu.Lock()
	q, syncs := m.queue, m.syncs
	m.queue, m.syncs = map[string]queued{}, nil
	m.inMu.Unlock()
	srcs := make(map[string]string, len(q))
	updates := make([]api.Update, 0, len(q))
	for _, name := range slices.Sorted(maps.Keys(q)) {
		updates = append(updates, q[name].update)
		srcs[name] = q[name].source
	}
	for _, s := range syncs {
		for _, origin := range m.engine.originsOf(s.source) {
			if !s.seen[origin] && srcs[origin] == "" {
				updates = append(updates, api.Update{Origin: origin, Removed: true})
				srcs[origin] = s.source
			}
		}
	}
	return updates, srcs
}

// runSource runs s until ctx ends, restarting it with backoff when it
// fails. A failing source degrades galley (its config stays as last
// accepted) but never stops meshd.
func (m *Module) runSource(ctx context.Context, s *sourceRun) {
	backoff := time.Second
	for {
		s.mu.Lock()
		s.seen = map[string]bool{}
		s.runs++
		s.mu.Unlock()
		start := time.Now()
		err := safeRun(ctx, s.src, &sink{m: m, s: s})
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("returned before shutdown")
		}
		s.mu.Lock()
		s.err = err.Error()
		s.mu.Unlock()
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		m.log.Error("config source failed; restarting it", "source", s.name, "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func safeRun(ctx context.Context, src api.ConfigSource, sink api.Sink) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return src.Run(ctx, sink)
}

// sink is what a source reports to.
type sink struct {
	m *Module
	s *sourceRun
}

func (k *sink) Update(updates ...api.Update) {
	k.s.mu.Lock()
	for _, u := range updates {
		k.s.seen[u.Origin] = true
	}
	k.s.mu.Unlock()
	k.m.inMu.Lock()
	for _, u := range updates {
		k.m.queue[u.Origin] = queued{update: u, source: k.s.name}
	}
	k.m.inMu.Unlock()
	signal(k.m.wake)
}

func (k *sink) Synced() {
	k.s.mu.Lock()
	k.s.synced = true
	seen := maps.Clone(k.s.seen)
	k.s.mu.Unlock()
	k.m.inMu.Lock()
	k.m.syncs = append(k.m.syncs, syncMark{source: k.s.name, seen: seen})
	k.m.inMu.Unlock()
	signal(k.m.wake)
}

// onAccepted reports an accepted change: log, metrics, bus.
func (m *Module) onAccepted(a acceptance) {
	m.metrics.passed.Add(float64(a.accepted))
	for i, f := range a.warnings {
		if i == maxLoggedFindings {
			m.log.Warn(fmt.Sprintf("... and %d more warnings (see /debug/configz)", len(a.warnings)-i))
			break
		}
		m.log.Warn(f.String())
	}
	if a.revision == 0 {
		return
	}
	m.metrics.revision.Set(float64(a.revision))
	m.metrics.setObjects(a.kinds)
	var added, updated, removed int
	keys := make([]api.Key, len(a.changes))
	for i, c := range a.changes {
		keys[i] = c.Key
		switch c.Op {
		case OpAdd:
			added++
		case OpUpdate:
			updated++
		case OpRemove:
			removed++
		}
	}
	msg := "config accepted"
	attrs := []any{"revision", a.revision, "origins", trimList(a.origins, 10), "added", added, "updated", updated, "removed", removed, "objects", a.objects}
	if a.rollbackTo > 0 {
		msg = "config rolled back"
		attrs = append(attrs, "to", a.rollbackTo)
	}
	m.log.Info(msg, attrs...)
	if m.bus != nil {
		m.bus.Publish(api.ConfigAccepted{Revision: a.revision, Changed: keys})
	}
}

// onRejected reports a rejected change: log with file:line findings,
// metrics, bus. A retry that fails the same way again is only logged at
// debug level.
func (m *Module) onRejected(origin string, a *attempt, repeat bool) {
	errs := api.CountFindings(a.findings).Errors
	if repeat {
		m.log.Debug("config change still rejected", "origin", origin, "errors", errs)
		return
	}
	m.metrics.failed.Inc()
	m.log.Warn("config change rejected; the last accepted config of this origin keeps serving", "origin", origin, "errors", errs, "retrying", a.retry)
	n := 0
	for _, f := range a.findings {
		if f.Severity != api.SeverityError {
			continue
		}
		if n == maxLoggedFindings {
			m.log.Warn(fmt.Sprintf("... and %d more errors (see /debug/configz)", errs-n), "origin", origin)
			break
		}
		m.log.Warn(f.String(), "origin", origin)
		n++
	}
	if m.bus != nil {
		m.bus.Publish(api.ConfigRejected{Source: origin, Errors: errs})
	}
}

func trimList(s []string, n int) string {
	if len(s) <= n {
		return strings.Join(s, ",")
	}
	return strings.Join(s[:n], ",") + fmt.Sprintf(",... (%d more)", len(s)-n)
}
