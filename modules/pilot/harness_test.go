package pilot

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/bus"
	"github.com/meshd/meshd/core/store"
	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/pilot/internal/pilottest"
	"github.com/meshd/meshd/xds"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(envChild) != "" {
		os.Exit(runChild())
	}
	goleak.VerifyTestMain(m)
}

// fakeGalley stands in for the galley module: it serves the snapshot a
// test sets and announces it on the bus, as galley does.
type fakeGalley struct {
	// notReady makes Ready fail, as galley does before its first
	// accepted config.
	notReady atomic.Bool
	bus      *bus.Bus
	mu       sync.Mutex
	snap     *galleyapi.Snapshot
	rev      uint64
	hosts    []galleyapi.HostIndex // every SetHostIndex
}

// Ready implements core.Readier.
func (g *fakeGalley) Ready() error {
	if g.notReady.Load() {
		return errors.New("waiting for config sources files")
	}
	return nil
}

// SetHostIndex records what pilot hands over.
func (g *fakeGalley) SetHostIndex(h galleyapi.HostIndex) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.hosts = append(g.hosts, h)
}

func (g *fakeGalley) hostIndexes() []galleyapi.HostIndex {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.hosts)
}

func (g *fakeGalley) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{ID: "galley", New: func() core.Module { return g }}
}

func (g *fakeGalley) Provision(ctx *core.Context) error {
	g.bus = ctx.Bus()
	return nil
}

// Accepted implements galleyapi.Accepted.
func (g *fakeGalley) Accepted() *galleyapi.Snapshot {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.snap
}

// apply accepts yaml as the next revision and announces it.
func (g *fakeGalley) apply(t testing.TB, yaml string) {
	t.Helper()
	g.mu.Lock()
	g.rev++
	g.snap = pilottest.Snapshot(t, g.rev, yaml)
	rev := g.rev
	g.mu.Unlock()
	if g.bus != nil {
		g.bus.Publish(galleyapi.ConfigAccepted{Revision: rev})
	}
}

// captured registers a pre-made module instance, so the test can reach it.
type captured struct {
	core.Module
	info core.ModuleInfo
}

func (c captured) MeshModule() core.ModuleInfo { return c.info }

func capture(m core.Module) captured {
	info := m.MeshModule()
	info.New = func() core.Module { return m }
	return captured{Module: m, info: info}
}

// env is meshd's xds, pilot and a fake galley in one in-process host.
type env struct {
	host   *core.Host
	pilot  *Module
	xds    *xds.Module
	galley *fakeGalley
	admin  *httptest.Server
	cancel context.CancelFunc
	done   chan error
}

// XDSAddr is the plaintext xDS address.
func (e *env) XDSAddr() string { return e.xds.Addr().String() }

// start runs the host with yaml as the first accepted config and waits
// until pilot is ready. beforeRun, when given, runs between Provision and
// Run (to add registry sources) and then start does not wait.
func start(t testing.TB, yaml string, pilotCfg map[string]any, beforeRun ...func(*env)) *env {
	t.Helper()
	e := &env{pilot: new(Module), xds: new(xds.Module), galley: &fakeGalley{}, done: make(chan error, 1)}
	e.galley.apply(t, yaml)
	reg := core.NewRegistry()
	for _, m := range []core.Module{capture(e.pilot), capture(e.xds), e.galley} {
		if err := reg.Add(m); err != nil {
			t.Fatal(err)
		}
	}
	cfg := core.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.Modules = map[string]map[string]any{
		"xds":   {"address": "127.0.0.1:0", "tlsAddress": "127.0.0.1:0", "debounce": map[string]any{"quiet": "5ms", "max": "50ms"}},
		"pilot": pilotCfg,
	}
	st, err := store.Open(cfg.DataDir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	logLevel := slog.LevelWarn
	if testing.Verbose() {
		logLevel = slog.LevelInfo
	}
	h, err := core.NewHost(core.HostOptions{Config: cfg, Registry: reg, Store: st,
		Logger: slog.New(slog.NewTextHandler(logWriter(t), &slog.HandlerOptions{Level: logLevel}))})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Provision(); err != nil {
		t.Fatal(err)
	}
	e.host = h
	for _, f := range beforeRun {
		f(e)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.done <- h.Run(ctx) }()
	e.admin = httptest.NewServer(h.AdminHandler())
	t.Cleanup(func() {
		e.admin.Close()
		cancel()
		select {
		case err := <-e.done:
			if err != nil {
				t.Errorf("host: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("host did not stop within 10s")
		}
		if err := h.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if len(beforeRun) == 0 {
		waitFor(t, 5*time.Second, "pilot ready", func() error { return e.pilot.Ready() })
	}
	return e
}

// logWriter sends logs to the test log.
func logWriter(t testing.TB) io.Writer { return testWriter{t} }

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// waitFor polls f until it returns nil or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// do sends an admin request and returns the status and body.
func (e *env) do(t testing.TB, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, e.admin.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var errNotYet = errors.New("not yet")
