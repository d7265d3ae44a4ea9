package core

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/meshd/meshd/core/bus"
	"github.com/meshd/meshd/core/config"
	"github.com/meshd/meshd/core/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// HostOptions are what the host is built from. cmd/meshd fills them; tests
// build their own with a private registry.
type HostOptions struct {
	Config   Config
	Registry *Registry    // default: DefaultRegistry()
	Store    *store.Store // required
	Logger   *slog.Logger // default: slog.Default()
	// Metrics is the one registry for every module; a fresh one with Go and
	// process collectors is made when nil.
	Metrics *prometheus.Registry
	// Version is reported in meshd_build_info.
	Version string
}

// Host runs a set of modules: provision in dependency order, run together,
// clean up in reverse.
type Host struct {
	cfg      Config
	registry *Registry
	store    *store.Store
	log      *slog.Logger
	metrics  *prometheus.Registry
	bus      *bus.Bus
	admin    *http.ServeMux

	order   []ModuleInfo
	configs map[ModuleID]any

	mu          sync.Mutex
	instances   map[ModuleID]Module
	provisioned []ModuleID // in provision order
	runErr      map[ModuleID]error
	running     atomic.Bool
	cleanedUp   bool

	// snapMu is held while POST /store/snapshot writes one.
	snapMu sync.Mutex
}

// NewHost resolves the enabled modules and decodes their config sections. It
// starts nothing, so every config mistake surfaces before any port is opened.
func NewHost(opts HostOptions) (*Host, error) {
	if opts.Registry == nil {
		opts.Registry = DefaultRegistry()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Store == nil {
		return nil, errors.New("host: no store")
	}
	if opts.Metrics == nil {
		opts.Metrics = prometheus.NewRegistry()
		opts.Metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	enabled, configs, err := ResolveModules(opts.Registry, opts.Config.Modules)
	if err != nil {
		return nil, err
	}
	order, err := opts.Registry.Order(enabled)
	if err != nil {
		return nil, err
	}
	h := &Host{
		cfg:       opts.Config,
		registry:  opts.Registry,
		store:     opts.Store,
		log:       opts.Logger,
		metrics:   opts.Metrics,
		admin:     http.NewServeMux(),
		order:     order,
		configs:   configs,
		instances: map[ModuleID]Module{},
		runErr:    map[ModuleID]error{},
	}
	h.bus = bus.New(bus.Options{BufferSize: opts.Config.Bus.BufferSize, Registerer: opts.Metrics})
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meshd_build_info", Help: "Always 1; labelled with the meshd version.",
	}, []string{"version"})
	build.WithLabelValues(opts.Version).Set(1)
	opts.Metrics.MustRegister(build)
	h.routes()
	return h, nil
}

// ResolveModules decides which registered modules are enabled and decodes
// each enabled module's section over its defaults. A section for a module
// that does not exist is an unknown key.
func ResolveModules(reg *Registry, sections map[string]map[string]any) ([]ModuleID, map[ModuleID]any, error) {
	ids := make([]string, 0, len(sections))
	for id := range sections {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if _, ok := reg.Get(ModuleID(id)); !ok {
			return nil, nil, &config.KeyError{Path: "modules." + id, Err: fmt.Errorf("%w (no such module; see `meshd modules list`)", config.ErrUnknownKey)}
		}
	}
	var enabled []ModuleID
	configs := map[ModuleID]any{}
	for _, info := range reg.All() {
		section := sections[string(info.ID)]
		on := !info.DisabledByDefault
		rest := map[string]any{}
		for k, v := range section {
			if k == "enabled" {
				b, err := strconv.ParseBool(fmt.Sprint(v))
				if err != nil {
					return nil, nil, &config.KeyError{Path: "modules." + string(info.ID) + ".enabled", Err: fmt.Errorf("not a boolean: %v", v)}
				}
				on = b
				continue
			}
			rest[k] = v
		}
		if !on {
			continue
		}
		enabled = append(enabled, info.ID)
		if info.Config == nil {
			if len(rest) > 0 {
				for k := range rest {
					return nil, nil, &config.KeyError{Path: "modules." + string(info.ID) + "." + k, Err: fmt.Errorf("%w (module %s takes no config)", config.ErrUnknownKey, info.ID)}
				}
			}
			continue
		}
		cfg := info.Config()
		prefix := "modules." + string(info.ID)
		if err := config.Decode(rest, cfg, prefix); err != nil {
			return nil, nil, err
		}
		if v, ok := cfg.(interface{ Validate() error }); ok {
			if err := v.Validate(); err != nil {
				return nil, nil, validationError(prefix, err)
			}
		}
		configs[info.ID] = cfg
	}
	return enabled, configs, nil
}

// validationError turns a module config's Validate error into a KeyError on
// the key it names, so the CLI can point at the file and line. Messages that
// start with the section's path ("modules.xds.debounce: ...") keep their
// key; others are about the section as a whole, or name a key relative to
// it ("root.lifetime: ...").
func validationError(prefix string, err error) error {
	msg := err.Error()
	rel := strings.TrimPrefix(strings.TrimPrefix(msg, prefix), ".")
	if key, reason, ok := strings.Cut(rel, ": "); ok && !strings.ContainsAny(key, " \t") {
		path := prefix
		if key != "" {
			path += "." + key
		}
		return &config.KeyError{Path: path, Err: errors.New(reason)}
	}
	return &config.KeyError{Path: prefix, Err: errors.New(strings.TrimPrefix(rel, ": "))}
}

// Modules returns the enabled modules in dependency order.
func (h *Host) Modules() []ModuleInfo { return slices.Clone(h.order) }

// Bus returns the host's event bus.
func (h *Host) Bus() *bus.Bus { return h.bus }

// Metrics returns the host's metrics registry.
func (h *Host) Metrics() *prometheus.Registry { return h.metrics }

// AdminHandler serves the admin API: readiness, metrics, store snapshots,
// module routes and, when enabled, pprof.
func (h *Host) AdminHandler() http.Handler { return h.admin }

func (h *Host) instance(id ModuleID) (Module, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m, ok := h.instances[id]
	return m, ok
}

// Provision provisions every enabled module in dependency order. If one
// fails, everything provisioned so far (including the failing module) is
// cleaned up and both errors are reported.
func (h *Host) Provision() error {
	for _, info := range h.order {
		m := info.New()
		mctx := &Context{
			id:   info.ID,
			info: info,
			host: h,
			cfg:  h.configs[info.ID],
			log:  h.log.With("module", string(info.ID)),
		}
		h.mu.Lock()
		h.instances[info.ID] = m
		h.provisioned = append(h.provisioned, info.ID)
		h.mu.Unlock()
		err := safeCall(func() error {
			if p, ok := m.(Provisioner); ok {
				if err := p.Provision(mctx); err != nil {
					return err
				}
			}
			if v, ok := m.(Validator); ok {
				return v.Validate()
			}
			return nil
		})
		if err != nil {
			err = fmt.Errorf("provision %s: %w", info.ID, err)
			if cerr := h.Cleanup(); cerr != nil {
				err = fmt.Errorf("%w; additionally, cleanup: %w", err, cerr)
			}
			return err
		}
		h.log.Debug("module provisioned", "module", string(info.ID))
	}
	return nil
}

// Run runs every Runner under one context until ctx ends or one of them
// fails; the first error cancels the rest. A panic in a runner becomes its
// error. Run returns once every runner has returned.
func (h *Host) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	h.mu.Lock()
	ids := slices.Clone(h.provisioned)
	h.mu.Unlock()
	for _, id := range ids {
		m, _ := h.instance(id)
		r, ok := m.(Runner)
		if !ok {
			continue
		}
		wg.Go(func() {
			err := safeCall(func() error { return r.Run(ctx) })
			if err != nil && ctx.Err() == nil {
				err = fmt.Errorf("module %s: %w", id, err)
				h.mu.Lock()
				h.runErr[id] = err
				h.mu.Unlock()
				cancel(err)
			}
		})
	}
	h.running.Store(true)
	<-ctx.Done()
	h.running.Store(false)
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// Cleanup cleans up provisioned modules in reverse order and closes the bus.
// It is safe to call more than once.
func (h *Host) Cleanup() error {
	h.mu.Lock()
	if h.cleanedUp {
		h.mu.Unlock()
		return nil
	}
	h.cleanedUp = true
	ids := slices.Clone(h.provisioned)
	h.mu.Unlock()
	var errs []error
	for _, id := range slices.Backward(ids) {
		m, _ := h.instance(id)
		if c, ok := m.(CleanerUpper); ok {
			if err := safeCall(c.Cleanup); err != nil {
				errs = append(errs, fmt.Errorf("cleanup %s: %w", id, err))
			}
		}
	}
	h.bus.Close()
	return errors.Join(errs...)
}

// ModuleStatus is one module's line in the readiness report.
type ModuleStatus struct {
	Module   ModuleID `json:"module"`
	Ready    bool     `json:"ready"`
	Degraded bool     `json:"degraded,omitempty"`
	Detail   string   `json:"detail,omitempty"`
}

// Ready reports whether the host is running and every module is ready.
func (h *Host) Ready() (bool, []ModuleStatus) {
	running := h.running.Load()
	h.mu.Lock()
	ids := slices.Clone(h.provisioned)
	h.mu.Unlock()
	all := running
	out := make([]ModuleStatus, 0, len(ids))
	for _, id := range ids {
		st := ModuleStatus{Module: id, Ready: running}
		h.mu.Lock()
		rerr := h.runErr[id]
		h.mu.Unlock()
		m, _ := h.instance(id)
		switch {
		case rerr != nil:
			st.Ready, st.Detail = false, rerr.Error()
		case !running:
			st.Detail = "not running"
		default:
			if r, ok := m.(Readier); ok {
				if err := safeCall(r.Ready); err != nil {
					st.Ready, st.Detail = false, err.Error()
				}
			}
			if d, ok := m.(Degrader); ok && st.Ready {
				_ = safeCall(func() error { st.Detail = d.Degraded(); st.Degraded = st.Detail != ""; return nil })
			}
		}
		all = all && st.Ready
		out = append(out, st)
	}
	return all, out
}

func (h *Host) routes() {
	h.admin.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, r *http.Request) {
		ok, mods := h.Ready()
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(struct {
			Ready   bool           `json:"ready"`
			Modules []ModuleStatus `json:"modules"`
		}{ok, mods})
	})
	h.admin.Handle("GET /metrics", promhttp.HandlerFor(h.metrics, promhttp.HandlerOpts{Registry: h.metrics}))
	h.admin.HandleFunc("POST /store/snapshot", h.handleSnapshot)
	if h.cfg.Admin.Pprof {
		h.admin.HandleFunc("/debug/pprof/", pprof.Index)
		h.admin.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		h.admin.HandleFunc("/debug/pprof/profile", pprof.Profile)
		h.admin.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		h.admin.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
}

// safeCall turns a panic in f into an error carrying the stack, so a
// misbehaving module stops the host cleanly instead of crashing it.
func safeCall(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	return f()
}
