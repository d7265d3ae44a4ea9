package agent

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/citadel"
	"github.com/meshd/meshd/xds"
)

const testTD = "example.org"

// captured registers a module instance the test keeps.
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

// meshd is an in-process meshd with the xds and citadel modules: the CA
// on the TLS port and the trust bundle over SDS, which is all the agent's
// identity needs.
type meshd struct {
	t      testing.TB
	dir    string
	addr   string // TLS address
	ca     *citadel.Module
	cancel context.CancelFunc
	done   chan error
	host   *core.Host
	st     *store.Store
	logs   *syncBuffer
}

// startMeshd starts meshd in dir (a new temp dir when empty) on addr (a
// free port when empty) with citadel's config section.
func startMeshd(t testing.TB, dir, addr string, citadelCfg map[string]any) *meshd {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	m := &meshd{t: t, dir: dir, ca: new(citadel.Module), done: make(chan error, 1), logs: &syncBuffer{}}
	x := new(xds.Module)
	reg := core.NewRegistry()
	for _, mod := range []core.Module{capture(m.ca), capture(x)} {
		if err := reg.Add(mod); err != nil {
			t.Fatal(err)
		}
	}
	if citadelCfg == nil {
		citadelCfg = map[string]any{}
	}
	cfg := core.DefaultConfig()
	cfg.DataDir = dir
	cfg.Mesh.TrustDomain = testTD
	cfg.Modules = map[string]map[string]any{
		"citadel": citadelCfg,
		"xds":     {"address": "127.0.0.1:0", "tlsAddress": addr, "debounce": map[string]any{"quiet": "0s", "max": "50ms"}},
	}
	var err error
	if m.st, err = store.Open(dir, store.Options{}); err != nil {
		t.Fatal(err)
	}
	m.host, err = core.NewHost(core.HostOptions{Config: cfg, Registry: reg, Store: m.st,
		Logger: slog.New(slog.NewTextHandler(m.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err == nil {
		err = m.host.Provision()
	}
	if err != nil {
		m.st.Close()
		t.Fatal(err)
	}
	m.addr = x.TLSAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() { m.done <- m.host.Run(ctx) }()
	t.Cleanup(m.stop)
	return m
}

// stop stops meshd (idempotent).
func (m *meshd) stop() {
	if m.cancel == nil {
		return
	}
	m.cancel()
	<-m.done
	m.host.Cleanup()
	m.st.Close()
	m.cancel = nil
	if m.t.Failed() {
		m.t.Logf("meshd log:\n%s", m.logs.String())
	}
}

// restart stops meshd and starts it again on the same data dir and port.
func (m *meshd) restart(citadelCfg map[string]any) *meshd {
	m.stop()
	return startMeshd(m.t, m.dir, m.addr, citadelCfg)
}

// token creates a join token for ns/sa.
func (m *meshd) token(ns, sa string, uses int) string {
	m.t.Helper()
	tok, err := m.ca.Operations().CreateToken(context.Background(), citadel.TokenRequest{Identity: "ns/" + ns + "/sa/" + sa, TTL: time.Hour, Uses: uses})
	if err != nil {
		m.t.Fatal(err)
	}
	return tok.Token
}

// rootsFile writes the trust bundle to a file and returns its path.
func (m *meshd) rootsFile(dir string) string {
	m.t.Helper()
	pem, _ := m.ca.TrustBundle()
	p := filepath.Join(dir, "root-cert.pem")
	if err := os.WriteFile(p, pem, 0o644); err != nil {
		m.t.Fatal(err)
	}
	return p
}

// certs returns the ledger's records for identity.
func (m *meshd) certs(identity string) []citadel.CertInfo {
	m.t.Helper()
	list, err := m.ca.Operations().ListCerts(context.Background(), citadel.CertFilter{Identity: identity, All: true})
	if err != nil {
		m.t.Fatal(err)
	}
	return list
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func (b *syncBuffer) Contains(s string) bool { return strings.Contains(b.String(), s) }

// eventually polls cond until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
