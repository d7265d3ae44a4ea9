package security_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/bus"
	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/citadel/ca"
	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/pilot"
	"github.com/meshd/meshd/modules/pilot/internal/pilottest"
	"github.com/meshd/meshd/xds"
)

func TestMain(m *testing.M) {
	switch os.Getenv(envChild) {
	case "server":
		os.Exit(runServerChild())
	case "client":
		os.Exit(runClientChild())
	}
	goleak.VerifyTestMain(m)
}

// fakeGalley stands in for the galley module: it serves the snapshot a
// test sets and announces it on the bus, as galley does.
type fakeGalley struct {
	bus  *bus.Bus
	mu   sync.Mutex
	snap *galleyapi.Snapshot
	rev  uint64
}

func (g *fakeGalley) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{ID: "galley", New: func() core.Module { return g }}
}

func (g *fakeGalley) Provision(ctx *core.Context) error {
	g.bus = ctx.Bus()
	return nil
}

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

// env is meshd's xds and pilot modules and a fake galley in one host.
type env struct {
	pilot  *pilot.Module
	xds    *xds.Module
	galley *fakeGalley
}

func (e *env) xdsAddr() string { return e.xds.Addr().String() }

// start runs the host with yaml as the first accepted config and waits
// until pilot is ready.
func start(t *testing.T, yaml string) *env {
	t.Helper()
	e := &env{pilot: new(pilot.Module), xds: new(xds.Module), galley: &fakeGalley{}}
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
		"pilot": {"rootNamespace": "istio-system"},
	}
	st, err := store.Open(cfg.DataDir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelInfo
	}
	h, err := core.NewHost(core.HostOptions{Config: cfg, Registry: reg, Store: st,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Provision(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
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
	waitFor(t, 5*time.Second, "pilot ready", func() error { return e.pilot.Ready() })
	return e
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

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

// mesh is a CA made the way citadel makes its self-signed root, issuing
// workload certificates into directories laid out like the agent's
// (cert-chain.pem, key.pem, root-cert.pem), which the file_watcher
// certificate provider of each child's bootstrap reads.
type mesh struct {
	authority *ca.Authority
	rootPEM   []byte
}

func newMesh(t *testing.T) *mesh {
	t.Helper()
	root, key, err := ca.NewSelfSignedRoot(ca.RootOptions{Algorithm: ca.ECDSAP256, Lifetime: 24 * time.Hour, TrustDomain: "cluster.local", Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.NewAuthority(key, []*x509.Certificate{root})
	if err != nil {
		t.Fatal(err)
	}
	return &mesh{authority: a, rootPEM: ca.EncodeCertPEM(root.Raw)}
}

// issue writes a workload's certificate for spiffe://cluster.local/ns/<ns>/sa/<sa>
// and returns its directory.
func (m *mesh) issue(t *testing.T, ns, sa string) string {
	t.Helper()
	key, err := ca.GenerateKey(ca.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := m.authority.Issue(&ca.LeafRequest{
		PublicKey: key.Public(), RawSPKI: spki,
		URIs:      []string{"spiffe://cluster.local/ns/" + ns + "/sa/" + sa},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	der, err := ca.MarshalKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string][]byte{
		"cert-chain.pem": ca.EncodeCertPEM(leaf.DER),
		"key.pem":        pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		"root-cert.pem":  m.rootPEM,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
