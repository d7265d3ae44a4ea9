package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/bus"
)

func init() { core.Register(new(Module)) }

// Provider is what the plugins module offers other modules. A consuming
// module lists plugin.ID in its ModuleInfo.Uses and, in Provision:
//
//	p, err := core.Dep[plugin.Provider](ctx, plugin.ID)
//	if errors.Is(err, core.ErrModuleDisabled) { /* no plugins */ }
//	for _, inst := range p.Instances(plugin.KindDiscovery) { ... }
type Provider interface {
	// Instances returns the plugins of kind declared in meshd.yaml, in the
	// order they are declared. Each is already running and configured.
	Instances(kind string) []*Instance
	// Statuses returns every plugin's status, in declaration order.
	Statuses() []Status
}

// Module is the plugins module: it launches the plugins meshd.yaml declares
// (in Provision, so a wrong checksum or config stops startup with a clear
// error), supervises them while meshd runs, and kills them in Cleanup.
type Module struct {
	cfg *Config
	log *slog.Logger
	bus *bus.Bus

	upGauge      *prometheus.GaugeVec
	restartCount *prometheus.CounterVec

	instances []*Instance
	stop      chan struct{}
	stopOnce  sync.Once
}

// Interface guards.
var (
	_ core.Provisioner  = (*Module)(nil)
	_ core.Runner       = (*Module)(nil)
	_ core.CleanerUpper = (*Module)(nil)
	_ core.Readier      = (*Module)(nil)
	_ Provider          = (*Module)(nil)
)

// MeshModule implements core.Module.
func (*Module) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{
		ID:          ID,
		New:         func() core.Module { return new(Module) },
		Config:      func() any { return Default() },
		Description: "plugin host: runs out-of-process discovery sources, validators, signers and telemetry sinks (go-plugin, gRPC, mTLS), checksummed and supervised",
	}
}

// Options are what the module takes from the host; tests fill them
// directly through New.
type Options struct {
	Config  *Config
	Logger  *slog.Logger
	Bus     *bus.Bus
	Metrics prometheus.Registerer
	Admin   func(pattern string, h http.Handler)
}

// Provision launches every declared plugin. It fails, killing whatever it
// started, when a binary's checksum differs from meshd.yaml, a plugin is not
// the kind it is declared as, or its config does not match its schema.
func (m *Module) Provision(ctx *core.Context) error {
	cfg, err := core.ConfigAs[Config](ctx)
	if err != nil {
		return err
	}
	return m.Setup(Options{Config: cfg, Logger: ctx.Logger(), Bus: ctx.Bus(), Metrics: ctx.Metrics(), Admin: ctx.HandleAdmin})
}

// Setup is Provision without a core.Context, for tests and tools.
func (m *Module) Setup(o Options) error {
	if err := o.Config.Validate(); err != nil {
		return err
	}
	m.cfg, m.log, m.bus = o.Config, o.Logger, o.Bus
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.bus == nil {
		m.bus = bus.New(bus.Options{})
	}
	m.stop = make(chan struct{})
	m.upGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meshd_plugin_up",
		Help: "1 while a plugin is running and healthy, 0 while it is down or restarting.",
	}, []string{"plugin", "kind"})
	m.restartCount = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshd_plugin_restarts_total",
		Help: "Restarts of a plugin after it crashed, stopped answering health checks or failed to start.",
	}, []string{"plugin", "kind"})
	if o.Metrics != nil {
		if err := o.Metrics.Register(m.upGauge); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
		if err := o.Metrics.Register(m.restartCount); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	if o.Admin != nil {
		o.Admin("GET /debug/plugins", http.HandlerFunc(m.serveStatus))
	}
	for _, pc := range m.cfg.Plugins {
		path, err := absPath(pc.Path)
		if err != nil {
			return Error(pc.Name, fmt.Errorf("path: %w", err))
		}
		sum, _ := parseSHA256(pc.SHA256) // checked by Validate
		in := &Instance{
			cfg: pc, path: path, sum: sum, host: m,
			log:   m.log.With("plugin", pc.Name, "kind", pc.Kind),
			state: StateStarting, upCh: make(chan struct{}),
		}
		m.upGauge.WithLabelValues(pc.Name, pc.Kind).Set(0)
		m.restartCount.WithLabelValues(pc.Name, pc.Kind)
		g, err := in.launch()
		if err != nil {
			in.setState(StateDown, err.Error())
			return Error(pc.Name, err)
		}
		m.instances = append(m.instances, in)
		in.markUp(g, false)
	}
	return nil
}

// configPath is the config key of the named plugin, for error messages.
func (m *Module) configPath(name string) string {
	for i, pc := range m.cfg.Plugins {
		if pc.Name == name {
			return fmt.Sprintf("modules.%s.plugins[%d]", ID, i)
		}
	}
	return "modules." + ID
}

// Instances implements Provider.
func (m *Module) Instances(kind string) []*Instance {
	var out []*Instance
	for _, in := range m.instances {
		if in.cfg.Kind == kind {
			in.mu.Lock()
			in.claimed = true
			in.mu.Unlock()
			out = append(out, in)
		}
	}
	return out
}

// Statuses implements Provider.
func (m *Module) Statuses() []Status {
	out := make([]Status, 0, len(m.instances))
	for _, in := range m.instances {
		out = append(out, in.Status())
	}
	return out
}

// Run supervises every plugin until ctx ends: a plugin that exits or fails
// its health check is killed and restarted with backoff. A plugin never
// stops meshd; Run returns nil.
func (m *Module) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, in := range m.instances {
		in.mu.Lock()
		claimed := in.claimed
		in.mu.Unlock()
		if !claimed {
			in.log.Warn("no enabled module uses this plugin's kind; it runs but nothing reads it", "kind", in.cfg.Kind)
		}
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := safeSupervise(ctx, in); err != nil {
					in.log.Error("plugin supervisor failed; restarting it", "err", err)
				}
			}
		})
	}
	wg.Wait()
	return nil
}

func safeSupervise(ctx context.Context, in *Instance) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
			sleep(ctx, in.host.cfg.Backoff.Initial)
		}
	}()
	in.supervise(ctx)
	return nil
}

// Cleanup kills every plugin process. It is safe after a partial
// Provision and safe to call twice.
func (m *Module) Cleanup() error {
	if m.stop == nil {
		return nil
	}
	m.stopOnce.Do(func() { close(m.stop) })
	var wg sync.WaitGroup
	for _, in := range m.instances {
		wg.Go(in.stop)
	}
	wg.Wait()
	return nil
}

// Ready implements core.Readier. The plugins module is ready once
// provisioned: every plugin started then. A plugin that goes down later
// degrades its consumer instead (see Degraded), since the consumer keeps
// serving the last good state it had.
func (m *Module) Ready() error { return nil }

// Degraded describes the plugins that are down, or returns "" when all are
// up: for readiness detail and status pages.
func (m *Module) Degraded() string {
	return Degraded(m.instances)
}

// Degraded describes the instances that are not up, or returns "". A
// consuming module can use it for its own readiness detail.
func Degraded(ins []*Instance) string {
	var parts []string
	for _, in := range ins {
		st := in.Status()
		if st.State == StateUp || st.State == StateStopped {
			continue
		}
		p := fmt.Sprintf("plugin %s (%s) %s since %s", st.Name, st.Kind, st.State, st.Since.UTC().Format("15:04:05"))
		if st.LastError != "" {
			p += ": " + st.LastError
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}

func (m *Module) serveStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(m.Statuses())
}

// Lookup returns the instances of kind for a consuming module: its Provision
// calls it with its core.Context. The consumer must list plugin.ID in its
// ModuleInfo.Uses. With the plugins module disabled it returns no instances
// and no error.
func Lookup(ctx *core.Context, kind string) ([]*Instance, error) {
	return lookup(ctx, kind)
}

// Attach hands the plugins of kind to the module that consumes them: it
// looks them up, gets consumer (which the calling module lists in Uses) as
// T, and calls add for each instance. It returns the instances, for
// Degraded, and nothing when no plugin of kind is declared. Declaring
// plugins whose consumer is disabled is an error naming them, since they
// would silently do nothing.
func Attach[T any](ctx *core.Context, kind string, consumer core.ModuleID, add func(T, *Instance) error) ([]*Instance, error) {
	ins, err := lookup(ctx, kind)
	if err != nil || len(ins) == 0 {
		return nil, err
	}
	dep, err := core.Dep[T](ctx, consumer)
	if errors.Is(err, core.ErrModuleDisabled) {
		names := make([]string, len(ins))
		for i, in := range ins {
			names[i] = in.Name()
		}
		return nil, fmt.Errorf("modules.plugins declares %s plugins (%s) but %s is disabled", kind, strings.Join(names, ", "), consumer)
	}
	if err != nil {
		return nil, err
	}
	for _, in := range ins {
		if err := add(dep, in); err != nil {
			return nil, Error(in.Name(), err)
		}
	}
	return ins, nil
}

func lookup(ctx *core.Context, kind string) ([]*Instance, error) {
	p, err := core.Dep[Provider](ctx, ID)
	if errors.Is(err, core.ErrModuleDisabled) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return p.Instances(kind), nil
}
