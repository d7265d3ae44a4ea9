// Package plugins_test runs the example plugins as real processes under the
// plugins module, each through its kind's host-side shim, the way meshd's
// modules use them: the CSV source feeding pilot's registry aggregate, the
// wildcard validator checking galley objects, the stdout sink printing
// access-log records into meshd's log.
package plugins_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshd/meshd/core/plugin"
	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
	"github.com/meshd/meshd/modules/galley/pluginvalidator"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
	"github.com/meshd/meshd/modules/pilot/registry/pluginsource"
	"github.com/meshd/meshd/modules/telemetry/pluginsink"
	"github.com/meshd/meshd/modules/telemetry/pluginsink/sinktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var build = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "meshd-example-plugins-")
	if err != nil {
		return "", err
	}
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "./csv-source", "./wildcard-validator", "./stdout-sink")
	cmd.Dir = filepath.Dir(file)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return dir, nil
})

func declare(t testing.TB, name, kind, binary string, config map[string]any) plugin.PluginConfig {
	t.Helper()
	dir, err := build()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, binary)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return plugin.PluginConfig{Name: name, Kind: kind, Path: path, SHA256: hex.EncodeToString(sum[:]), Config: config}
}

// logs keeps meshd's log lines as text, for checking what plugins logged.
type logs struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logs) waitFor(t *testing.T, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		text := l.buf.String()
		l.mu.Unlock()
		for line := range strings.SplitSeq(text, "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q:\n%s", parts, text)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func start(t *testing.T, plugins ...plugin.PluginConfig) (*plugin.Module, *logs) {
	t.Helper()
	cfg := plugin.Default()
	cfg.HealthInterval, cfg.HealthTimeout = 100*time.Millisecond, time.Second
	cfg.Backoff = plugin.BackoffConfig{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond}
	cfg.Plugins = plugins
	l := &logs{}
	m := new(plugin.Module)
	if err := m.Setup(plugin.Options{Config: cfg, Logger: slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = m.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = m.Cleanup()
	})
	return m, l
}

func kill(t *testing.T, in *plugin.Instance) {
	t.Helper()
	pid := in.Status().PID
	if pid == 0 {
		t.Fatalf("%s has no process", in.Name())
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

func waitUp(t *testing.T, in *plugin.Instance, restarts int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := in.Status()
		if st.State == plugin.StateUp && st.Restarts >= restarts {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %+v", in.Name(), st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitView(t *testing.T, agg *registry.Aggregate, what string, ok func(*registry.View) bool) *registry.View {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if v := agg.View(); ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry never showed %s; view has %d services", what, len(agg.View().Services))
		}
		select {
		case <-agg.Changed():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestCSVSourceKeepsServingWhileDown: the registry keeps the plugin's
// last state while it is killed and restarted, and follows the file again
// afterwards.
func TestCSVSourceKeepsServingWhileDown(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs plugin binaries")
	}
	file := filepath.Join(t.TempDir(), "services.csv")
	write := func(rows string) {
		if err := os.WriteFile(file+".tmp", []byte("host,namespace,port,address\n"+rows), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(file+".tmp", file); err != nil {
			t.Fatal(err)
		}
	}
	write("reviews.shop.svc.cluster.local,shop,9080,10.0.0.1\nreviews.shop.svc.cluster.local,shop,9080,10.0.0.2\n")
	m, _ := start(t, declare(t, "csv", plugin.KindDiscovery, "csv-source", map[string]any{"file": file, "debounce": "10ms"}))
	in := m.Instances(plugin.KindDiscovery)[0]

	agg := registry.New(nil, nil)
	if err := agg.Add(in.Name(), pluginsource.New(in)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = agg.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	key := model.Key{Hostname: "reviews.shop.svc.cluster.local", Namespace: "shop"}
	v := waitView(t, agg, "reviews", func(v *registry.View) bool { s, ok := v.Service(key); return ok && len(s.Endpoints) == 2 })
	if s, _ := v.Service(key); s.Source != "csv" {
		t.Errorf("service source %q, want the plugin's name", s.Source)
	}

	kill(t, in)
	time.Sleep(200 * time.Millisecond) // the plugin is down or restarting now
	if s, ok := agg.View().Service(key); !ok || len(s.Endpoints) != 2 {
		t.Fatal("the registry lost the plugin's services while it was down")
	}
	waitUp(t, in, 1)
	write("reviews.shop.svc.cluster.local,shop,9080,10.0.0.1\nreviews.shop.svc.cluster.local,shop,9080,10.0.0.2\nreviews.shop.svc.cluster.local,shop,9080,10.0.0.3\n")
	waitView(t, agg, "the third endpoint after the restart", func(v *registry.View) bool { s, ok := v.Service(key); return ok && len(s.Endpoints) == 3 })
}

const wildcardConfig = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: all, namespace: shop}
spec:
  hosts: ["*.shop.example.com"]
  http:
  - route:
    - destination: {host: reviews}
`

func TestWildcardValidator(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs plugin binaries")
	}
	m, _ := start(t, declare(t, "no-wildcards", plugin.KindValidator, "wildcard-validator", map[string]any{"severity": "warning"}))
	in := m.Instances(plugin.KindValidator)[0]
	v := pluginvalidator.New(in)
	objs := decode.New(decode.Options{}).Decode("vs.yaml", []byte(wildcardConfig)).Objects
	got, err := v.Validate(context.Background(), objs)
	if err != nil {
		t.Fatal(err)
	}
	want := `vs.yaml:5: WARNING WILDCARD001 VirtualService/shop/all: spec.hosts[0]: wildcard host "*.shop.example.com" is not allowed in namespace shop; name the hosts (allowed in: no namespace)`
	if len(got) != 1 || got[0].String() != want {
		t.Fatalf("findings %v", got)
	}

	// Down: galley gets an error, not an empty (passing) result.
	kill(t, in)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := v.Validate(context.Background(), objs)
		if errors.Is(err, plugin.ErrDown) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Validate while the plugin is down: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitUp(t, in, 1)
	if got, err := v.Validate(context.Background(), []*api.Object{objs[0]}); err != nil || len(got) != 1 {
		t.Fatalf("after restart: %v %v", got, err)
	}
}

func TestStdoutSink(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs plugin binaries")
	}
	m, l := start(t, declare(t, "access-log", plugin.KindSink, "stdout-sink", map[string]any{"format": "text"}))
	s := pluginsink.New(m.Instances(plugin.KindSink)[0])
	if err := s.Export(context.Background(), sinktest.Records(3)); err != nil {
		t.Fatal(err)
	}
	// The sink's stdout is in meshd's log, tagged with the plugin.
	l.waitFor(t, "plugin=access-log", "stream=stdout", "shop/productpage-v1 -> reviews.shop.svc.cluster.local GET reviews:9080/reviews/2 400")
	l.waitFor(t, "plugin up", "plugin=access-log", "reports=stdout-sink", "version=0.1.0")
}

func TestBadConfigRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs plugin binaries")
	}
	cfg := plugin.Default()
	cfg.Plugins = []plugin.PluginConfig{declare(t, "access-log", plugin.KindSink, "stdout-sink", map[string]any{"format": "xml", "sample": 0})}
	err := new(plugin.Module).Setup(plugin.Options{Config: cfg})
	if err == nil || !strings.Contains(err.Error(), `modules.plugins.plugins[0].config.format: "xml" is not one of json, text`) {
		t.Fatalf("err %v", err)
	}
	cfg.Plugins[0].Config = map[string]any{"sample": 0}
	err = new(plugin.Module).Setup(plugin.Options{Config: cfg})
	if err == nil || !strings.Contains(err.Error(), "the plugin refused its config") || !strings.Contains(err.Error(), "sample must be at least 1") {
		t.Fatalf("err %v", err)
	}
}
