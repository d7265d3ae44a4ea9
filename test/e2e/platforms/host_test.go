// Package platforms runs meshd beside a real Kubernetes API server and a
// real Consul agent: discovery from both, Istio config from CRDs with the
// admission webhook and status, service-account tokens at the CA, and a
// real grpc-go xDS client reaching real backends on 127.0.0.1. meshd runs
// in process (every module the binary has, plus the Kubernetes and Consul
// ones); the servers are built by test/tools/build.sh.
package platforms

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/citadel"
	"github.com/meshd/meshd/modules/citadel/kubeauth"
	"github.com/meshd/meshd/modules/galley"
	"github.com/meshd/meshd/modules/galley/kubesource"
	"github.com/meshd/meshd/modules/pilot"
	"github.com/meshd/meshd/modules/pilot/registry/consul"
	"github.com/meshd/meshd/modules/pilot/registry/kube"
	"github.com/meshd/meshd/xds"
)

func TestMain(m *testing.M) {
	if os.Getenv(envChild) != "" {
		os.Exit(runChild())
	}
	os.Exit(m.Run())
}

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

// meshd is an in-process meshd.
type meshd struct {
	host    *core.Host
	xds     *xds.Module
	pilot   *pilot.Module
	citadel *citadel.Module
	kubesrc *kubesource.Module
	admin   *httptest.Server
}

// options select the platform modules.
type options struct {
	// MeshDir is galley's file source (empty: none).
	MeshDir string
	// Kubeconfig enables the Kubernetes modules.
	Kubeconfig string
	// WebhookCert and WebhookKey serve the admission webhook.
	WebhookCert, WebhookKey string
	// ConsulAddr enables Consul discovery.
	ConsulAddr string
	// Registries is pilot's precedence.
	Registries []string
}

func startMeshd(t *testing.T, o options) *meshd {
	t.Helper()
	m := &meshd{xds: new(xds.Module), pilot: new(pilot.Module), citadel: new(citadel.Module), kubesrc: new(kubesource.Module)}
	reg := core.NewRegistry()
	for _, mod := range []core.Module{capture(m.xds), capture(m.pilot), capture(m.citadel), new(galley.Module),
		capture(m.kubesrc), new(kube.Module), new(consul.Module), new(kubeauth.Module)} {
		if err := reg.Add(mod); err != nil {
			t.Fatal(err)
		}
	}
	cfg := core.DefaultConfig()
	cfg.DataDir = t.TempDir()
	paths := []any{}
	if o.MeshDir != "" {
		paths = append(paths, o.MeshDir)
	}
	registries := []any{"config", "kubernetes", "consul"}
	if o.Registries != nil {
		registries = nil
		for _, r := range o.Registries {
			registries = append(registries, r)
		}
	}
	cfg.Modules = map[string]map[string]any{
		"xds":    {"address": "127.0.0.1:0", "tlsAddress": "127.0.0.1:0", "debounce": map[string]any{"quiet": "5ms", "max": "50ms"}},
		"galley": {"paths": paths, "debounce": "20ms"},
		"pilot":  {"registries": registries},
	}
	if o.Kubeconfig != "" {
		cfg.Modules[string(kube.ModuleID)] = map[string]any{"enabled": true, "kubeconfig": o.Kubeconfig}
		src := map[string]any{"enabled": true, "kubeconfig": o.Kubeconfig, "crdRecheck": "2s"}
		if o.WebhookCert != "" {
			src["webhook"] = map[string]any{"address": "127.0.0.1:0", "certFile": o.WebhookCert, "keyFile": o.WebhookKey}
		}
		cfg.Modules[string(kubesource.ModuleID)] = src
		cfg.Modules[string(kubeauth.ModuleID)] = map[string]any{"enabled": true, "kubeconfig": o.Kubeconfig, "audiences": []any{"istio-ca"}}
	}
	if o.ConsulAddr != "" {
		cfg.Modules[string(consul.ModuleID)] = map[string]any{"enabled": true, "address": o.ConsulAddr, "minInterval": "50ms"}
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
		Logger: slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: level}))})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Provision(); err != nil {
		t.Fatal(err)
	}
	m.host = h
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	m.admin = httptest.NewServer(h.AdminHandler())
	t.Cleanup(func() {
		m.admin.Close()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("host: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("host did not stop within 15s")
		}
		if err := h.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, body := m.get(t, "/healthz/ready")
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("meshd not ready: %s", body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return m
}

func (m *meshd) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(m.admin.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// registryz is the part of /debug/registryz the tests read.
type registryz struct {
	Services []struct {
		Hostname  string `json:"hostname"`
		Namespace string `json:"namespace"`
		Source    string `json:"source"`
		Endpoints []struct {
			Address string `json:"address"`
			Port    uint32 `json:"port"`
			Health  string `json:"health"`
		} `json:"endpoints"`
	} `json:"services"`
	Conflicts []struct {
		Hostname  string   `json:"hostname"`
		Namespace string   `json:"namespace"`
		Winner    string   `json:"winner"`
		Losers    []string `json:"losers"`
	} `json:"conflicts"`
}

func (m *meshd) registry(t *testing.T) registryz {
	t.Helper()
	code, body := m.get(t, "/debug/registryz")
	if code != http.StatusOK {
		t.Fatalf("registryz: %d %s", code, body)
	}
	var r registryz
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("registryz: %v\n%s", err, body)
	}
	return r
}

// waitRegistry polls /debug/registryz until cond holds.
func (m *meshd) waitRegistry(t *testing.T, what string, cond func(registryz) bool) registryz {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := m.registry(t)
		if cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			_, body := m.get(t, "/debug/registryz")
			t.Fatalf("registry never showed %s:\n%s", what, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
