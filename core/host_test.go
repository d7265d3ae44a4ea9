package core

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/core/config"
	"github.com/meshd/meshd/core/store"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeModule is a module whose hooks are set per test.
type fakeModule struct {
	info      ModuleInfo
	provision func(*Context) error
	run       func(context.Context) error
	cleanup   func() error
	ready     func() error
}

func (f *fakeModule) MeshModule() ModuleInfo { return f.info }
func (f *fakeModule) Provision(c *Context) error {
	if f.provision != nil {
		return f.provision(c)
	}
	return nil
}
func (f *fakeModule) Run(ctx context.Context) error {
	if f.run != nil {
		return f.run(ctx)
	}
	<-ctx.Done()
	return nil
}
func (f *fakeModule) Cleanup() error {
	if f.cleanup != nil {
		return f.cleanup()
	}
	return nil
}
func (f *fakeModule) Ready() error {
	if f.ready != nil {
		return f.ready()
	}
	return nil
}

// register adds a module whose New returns proto itself, so tests can set
// hooks on the instance the host runs.
func register(t *testing.T, reg *Registry, proto *fakeModule) {
	t.Helper()
	proto.info.New = func() Module { return proto }
	if err := reg.Add(proto); err != nil {
		t.Fatal(err)
	}
}

func newTestHost(t *testing.T, reg *Registry, cfg Config) *Host {
	t.Helper()
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h, err := NewHost(HostOptions{Config: cfg, Registry: reg, Store: st, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestOrder(t *testing.T) {
	tests := []struct {
		name    string
		mods    map[ModuleID][]ModuleID // id -> requires
		enable  []ModuleID
		want    []ModuleID
		wantErr string
	}{
		{
			name:   "requirements first, ties by ID",
			mods:   map[ModuleID][]ModuleID{"pilot": {"xds", "galley"}, "xds": nil, "galley": nil, "citadel": {"xds"}},
			enable: []ModuleID{"pilot", "xds", "galley", "citadel"},
			want:   []ModuleID{"xds", "citadel", "galley", "pilot"},
		},
		{
			name:   "chain",
			mods:   map[ModuleID][]ModuleID{"a": {"b"}, "b": {"c"}, "c": nil},
			enable: []ModuleID{"a", "b", "c"},
			want:   []ModuleID{"c", "b", "a"},
		},
		{
			name:    "cycle",
			mods:    map[ModuleID][]ModuleID{"a": {"b"}, "b": {"c"}, "c": {"a"}},
			enable:  []ModuleID{"a", "b", "c"},
			wantErr: "module dependency cycle: a -> b -> c -> a",
		},
		{
			name:    "self cycle",
			mods:    map[ModuleID][]ModuleID{"a": {"a"}},
			enable:  []ModuleID{"a"},
			wantErr: "module dependency cycle: a -> a",
		},
		{
			name:    "unknown requirement",
			mods:    map[ModuleID][]ModuleID{"a": {"ghost"}},
			enable:  []ModuleID{"a"},
			wantErr: "module a requires unknown module ghost",
		},
		{
			name:    "disabled requirement",
			mods:    map[ModuleID][]ModuleID{"a": {"b"}, "b": nil},
			enable:  []ModuleID{"a"},
			wantErr: "module a requires b, which is disabled",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := NewRegistry()
			for id, req := range tt.mods {
				register(t, reg, &fakeModule{info: ModuleInfo{ID: id, Requires: req}})
			}
			got, err := reg.Order(tt.enable)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Order() error = %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(tt.wantErr, "cycle") && !errors.Is(err, ErrDependencyCycle) {
					t.Fatalf("cycle error does not wrap ErrDependencyCycle: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ids := make([]ModuleID, len(got))
			for i, info := range got {
				ids[i] = info.ID
			}
			if !slices.Equal(ids, tt.want) {
				t.Fatalf("Order() = %v, want %v", ids, tt.want)
			}
		})
	}
}

func TestRegistryRejectsBadRegistrations(t *testing.T) {
	reg := NewRegistry()
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "a"}})
	for name, m := range map[string]*fakeModule{
		"duplicate": {info: ModuleInfo{ID: "a", New: func() Module { return nil }}},
		"empty ID":  {info: ModuleInfo{New: func() Module { return nil }}},
		"nil New":   {info: ModuleInfo{ID: "b"}},
		"trailing":  {info: ModuleInfo{ID: "b-", New: func() Module { return nil }}},
		"dotted":    {info: ModuleInfo{ID: "pilot.discovery", New: func() Module { return nil }}},
		"upper":     {info: ModuleInfo{ID: "Pilot", New: func() Module { return nil }}},
	} {
		if err := reg.Add(m); err == nil {
			t.Errorf("%s: Add succeeded, want error", name)
		}
	}
}

func TestModuleIDNamespace(t *testing.T) {
	if got := ModuleID("pilot-plugins").Namespace(); got != "pilot" {
		t.Fatalf("Namespace = %q", got)
	}
	if got := ModuleID("pilot").Namespace(); got != "" {
		t.Fatalf("top-level Namespace = %q", got)
	}
}

type degradedModule struct {
	fakeModule
	why string
}

func (d *degradedModule) Degraded() string { return d.why }

func TestDegradedStaysReady(t *testing.T) {
	reg := NewRegistry()
	m := &degradedModule{fakeModule: fakeModule{info: ModuleInfo{ID: "pilot-plugins"}}, why: "plugin csv down; serving its last state"}
	m.info.New = func() Module { return m }
	if err := reg.Add(m); err != nil {
		t.Fatal(err)
	}
	h := newTestHost(t, reg, DefaultConfig())
	if err := h.Provision(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	waitFor(t, func() bool { ok, _ := h.Ready(); return ok })
	_, mods := h.Ready()
	if !mods[0].Degraded || mods[0].Detail != m.why {
		t.Fatalf("status = %+v, want degraded with the reason", mods[0])
	}
	cancel()
	<-done
	_ = h.Cleanup()
}

func TestProvisionFailureCleansUpInReverse(t *testing.T) {
	reg := NewRegistry()
	var mu sync.Mutex
	var events []string
	record := func(s string) { mu.Lock(); events = append(events, s); mu.Unlock() }
	mk := func(id ModuleID, req []ModuleID, fail bool) *fakeModule {
		return &fakeModule{
			info: ModuleInfo{ID: id, Requires: req},
			provision: func(*Context) error {
				record("provision " + string(id))
				if fail {
					return errors.New("boom")
				}
				return nil
			},
			cleanup: func() error { record("cleanup " + string(id)); return nil },
		}
	}
	register(t, reg, mk("a", nil, false))
	register(t, reg, mk("b", []ModuleID{"a"}, false))
	register(t, reg, mk("c", []ModuleID{"b"}, true))
	register(t, reg, mk("d", []ModuleID{"c"}, false))

	h := newTestHost(t, reg, DefaultConfig())
	err := h.Provision()
	if err == nil || !strings.Contains(err.Error(), "provision c: boom") {
		t.Fatalf("Provision() = %v, want provision c: boom", err)
	}
	want := []string{"provision a", "provision b", "provision c", "cleanup c", "cleanup b", "cleanup a"}
	if !slices.Equal(events, want) {
		t.Fatalf("events = %v, want %v", events, want)
	}
	// A second Cleanup (as serve would do on its way out) does nothing.
	if err := h.Cleanup(); err != nil || len(events) != len(want) {
		t.Fatalf("second Cleanup: err=%v events=%v", err, events)
	}
}

func TestProvisionFailureReportsCleanupError(t *testing.T) {
	reg := NewRegistry()
	register(t, reg, &fakeModule{
		info:      ModuleInfo{ID: "a"},
		provision: func(*Context) error { return errors.New("no port") },
		cleanup:   func() error { return errors.New("half open") },
	})
	h := newTestHost(t, reg, DefaultConfig())
	err := h.Provision()
	if err == nil || !strings.Contains(err.Error(), "no port") || !strings.Contains(err.Error(), "cleanup a: half open") {
		t.Fatalf("Provision() = %v", err)
	}
}

func TestPanicInProvisionIsAnError(t *testing.T) {
	reg := NewRegistry()
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "a"}, provision: func(*Context) error { panic("nil map") }})
	h := newTestHost(t, reg, DefaultConfig())
	if err := h.Provision(); err == nil || !strings.Contains(err.Error(), "panic: nil map") {
		t.Fatalf("Provision() = %v", err)
	}
}

func TestPanickingRunnerStopsHost(t *testing.T) {
	reg := NewRegistry()
	stopped := make(chan struct{})
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "calm"}, run: func(ctx context.Context) error {
		<-ctx.Done()
		close(stopped)
		return nil
	}})
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "wild"}, run: func(ctx context.Context) error {
		time.Sleep(10 * time.Millisecond)
		panic("index out of range")
	}})
	h := newTestHost(t, reg, DefaultConfig())
	if err := h.Provision(); err != nil {
		t.Fatal(err)
	}
	err := h.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "module wild: panic: index out of range") {
		t.Fatalf("Run() = %v, want the panic as an error", err)
	}
	select {
	case <-stopped:
	default:
		t.Fatal("the other runner was not cancelled")
	}
	if ok, mods := h.Ready(); ok {
		t.Fatalf("host reports ready after a failure: %+v", mods)
	}
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
}

func TestFirstErrorCancelsRest(t *testing.T) {
	reg := NewRegistry()
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "a"}, run: func(ctx context.Context) error { return errors.New("lost listener") }})
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "b"}})
	h := newTestHost(t, reg, DefaultConfig())
	if err := h.Provision(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.Run(context.Background()) }()
	select {
	case err := <-done:
		if err == nil || err.Error() != "module a: lost listener" {
			t.Fatalf("Run() = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after a runner failed")
	}
	_ = h.Cleanup()
}

func TestRunReturnsNilOnCancel(t *testing.T) {
	reg := NewRegistry()
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "a"}})
	h := newTestHost(t, reg, DefaultConfig())
	if err := h.Provision(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run() = %v after cancel, want nil", err)
	}
	_ = h.Cleanup()
}

func TestReadinessEndpoint(t *testing.T) {
	reg := NewRegistry()
	var mu sync.Mutex
	readyErr := errors.New("waiting for first config")
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "a"}, ready: func() error { mu.Lock(); defer mu.Unlock(); return readyErr }})
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "b"}})
	h := newTestHost(t, reg, DefaultConfig())
	if err := h.Provision(); err != nil {
		t.Fatal(err)
	}
	get := func() (int, string) {
		rec := httptest.NewRecorder()
		h.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz/ready", nil))
		return rec.Code, rec.Body.String()
	}
	if code, _ := get(); code != http.StatusServiceUnavailable {
		t.Fatalf("before Run: %d, want 503", code)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	waitFor(t, func() bool { _, body := get(); return strings.Contains(body, "waiting for first config") })
	if code, _ := get(); code != http.StatusServiceUnavailable {
		t.Fatalf("module not ready: %d, want 503", code)
	}
	mu.Lock()
	readyErr = nil
	mu.Unlock()
	if code, body := get(); code != http.StatusOK {
		t.Fatalf("all ready: %d %s, want 200", code, body)
	}
	cancel()
	<-done
	_ = h.Cleanup()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type testCfg struct {
	Quiet time.Duration `mapstructure:"quiet"`
	Max   int           `mapstructure:"max"`
	Inner struct {
		Name string `mapstructure:"name"`
	} `mapstructure:"inner"`
}

func TestModuleConfigStrictOverDefaults(t *testing.T) {
	reg := NewRegistry()
	var got *testCfg
	register(t, reg, &fakeModule{
		info: ModuleInfo{ID: "pilot", Config: func() any { return &testCfg{Quiet: 100 * time.Millisecond, Max: 7} }},
		provision: func(c *Context) error {
			cfg, err := ConfigAs[testCfg](c)
			got = cfg
			return err
		},
	})
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "off", DisabledByDefault: true}})

	t.Run("defaults kept, keys overlaid", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.Modules = map[string]map[string]any{"pilot": {"quiet": "50ms", "inner": map[string]any{"name": "x"}}}
		h := newTestHost(t, reg, cfg)
		if err := h.Provision(); err != nil {
			t.Fatal(err)
		}
		defer h.Cleanup()
		if got.Quiet != 50*time.Millisecond || got.Max != 7 || got.Inner.Name != "x" {
			t.Fatalf("config = %+v", got)
		}
		if mods := h.Modules(); len(mods) != 1 || mods[0].ID != "pilot" {
			t.Fatalf("enabled = %v, want only pilot (off is disabled by default)", mods)
		}
	})
	for _, tc := range []struct {
		name     string
		sections map[string]map[string]any
		want     string
	}{
		{"unknown nested key", map[string]map[string]any{"pilot": {"inner": map[string]any{"nmae": "x"}}}, "modules.pilot.inner.nmae: unknown key"},
		{"unknown module", map[string]map[string]any{"ghost": {}}, "modules.ghost: unknown key"},
		{"key on config-less module", map[string]map[string]any{"off": {"enabled": true, "x": 1}}, "modules.off.x: unknown key"},
		{"bad value", map[string]map[string]any{"pilot": {"max": "lots"}}, `modules.pilot.max: invalid value "lots"`},
		{"bad enabled", map[string]map[string]any{"pilot": {"enabled": "perhaps"}}, "modules.pilot.enabled: not a boolean"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Modules = tc.sections
			st, err := store.Open(t.TempDir(), store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			_, err = NewHost(HostOptions{Config: cfg, Registry: reg, Store: st})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewHost() = %v, want %q", err, tc.want)
			}
			var ke *config.KeyError
			if !errors.As(err, &ke) {
				t.Fatalf("error %T is not a *config.KeyError", err)
			}
		})
	}
}

type validatedCfg struct {
	Quiet time.Duration `mapstructure:"quiet"`
	Max   time.Duration `mapstructure:"max"`
}

func (c *validatedCfg) Validate() error {
	switch {
	case c.Quiet < 0:
		return errors.New("modules.push.quiet: must not be negative")
	case c.Max < c.Quiet:
		return errors.New("max must not be below quiet")
	case c.Max > time.Hour:
		return errors.New("limits.max: at most 1h") // relative to the section
	}
	return nil
}

func TestModuleConfigValidatedOnLoad(t *testing.T) {
	reg := NewRegistry()
	provisioned := false
	register(t, reg, &fakeModule{
		info:      ModuleInfo{ID: "push", Config: func() any { return &validatedCfg{Quiet: time.Millisecond, Max: time.Second} }},
		provision: func(*Context) error { provisioned = true; return nil },
	})
	for _, tc := range []struct {
		section map[string]any
		path    string
		reason  string
	}{
		{map[string]any{"quiet": "-1s"}, "modules.push.quiet", "must not be negative"},
		{map[string]any{"max": "0s"}, "modules.push", "max must not be below quiet"},
		{map[string]any{"max": "2h"}, "modules.push.limits.max", "at most 1h"},
	} {
		_, _, err := ResolveModules(reg, map[string]map[string]any{"push": tc.section})
		var ke *config.KeyError
		if !errors.As(err, &ke) || ke.Path != tc.path || ke.Err.Error() != tc.reason {
			t.Errorf("%v: got %v, want KeyError %s: %s", tc.section, err, tc.path, tc.reason)
		}
	}
	if provisioned {
		t.Fatal("a module was provisioned with an invalid config")
	}
}

func TestContextDepOnlyDeclared(t *testing.T) {
	reg := NewRegistry()
	type api interface{ Hello() string }
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "a"}})
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "c"}})
	var depErr, undeclaredErr, typeErr error
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "b", Requires: []ModuleID{"a"}}, provision: func(c *Context) error {
		_, depErr = c.Dep("a")
		_, undeclaredErr = c.Dep("c")
		_, typeErr = Dep[api](c, "a")
		return nil
	}})
	h := newTestHost(t, reg, DefaultConfig())
	if err := h.Provision(); err != nil {
		t.Fatal(err)
	}
	defer h.Cleanup()
	if depErr != nil {
		t.Fatalf("Dep(a) = %v", depErr)
	}
	if undeclaredErr == nil || !strings.Contains(undeclaredErr.Error(), "not in its Requires or Uses") {
		t.Fatalf("Dep(c) = %v, want a Requires error", undeclaredErr)
	}
	if typeErr == nil || !strings.Contains(typeErr.Error(), "does not implement") {
		t.Fatalf("Dep[api](a) = %v, want a type error", typeErr)
	}
}

func TestUsesOptionalModules(t *testing.T) {
	reg := NewRegistry()
	var order []ModuleID
	var dis, en error
	record := func(id ModuleID) func(*Context) error {
		return func(*Context) error { order = append(order, id); return nil }
	}
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "telemetry"}, provision: record("telemetry")})
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "plugins", DisabledByDefault: true}})
	register(t, reg, &fakeModule{info: ModuleInfo{ID: "a", Uses: []ModuleID{"telemetry", "plugins"}}, provision: func(c *Context) error {
		order = append(order, "a")
		_, en = c.Dep("telemetry")
		_, dis = c.Dep("plugins")
		return nil
	}})
	h := newTestHost(t, reg, DefaultConfig())
	if err := h.Provision(); err != nil {
		t.Fatal(err)
	}
	defer h.Cleanup()
	if !slices.Equal(order, []ModuleID{"telemetry", "a"}) {
		t.Fatalf("order = %v, want telemetry before its user", order)
	}
	if en != nil {
		t.Fatalf("Dep(enabled used module) = %v", en)
	}
	if !errors.Is(dis, ErrModuleDisabled) {
		t.Fatalf("Dep(disabled used module) = %v, want ErrModuleDisabled", dis)
	}
}

func TestPprofOnlyWhenEnabled(t *testing.T) {
	for _, on := range []bool{false, true} {
		cfg := DefaultConfig()
		cfg.Admin.Pprof = on
		h := newTestHost(t, NewRegistry(), cfg)
		rec := httptest.NewRecorder()
		h.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/pprof/", nil))
		if (rec.Code == http.StatusOK) != on {
			t.Fatalf("pprof=%t: GET /debug/pprof/ = %d", on, rec.Code)
		}
	}
}
