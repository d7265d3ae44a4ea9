package agent

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// fakeEnvoy is a shell script named envoy: it records each start (pid and
// arguments) and SIGTERM in a log, and either runs until told to stop or
// exits at once when $FAKE_ENVOY_EXIT is set.
const fakeEnvoy = `#!/bin/sh
echo "start $$ $*" >> "$FAKE_ENVOY_LOG"
if [ -n "$FAKE_ENVOY_EXIT" ]; then exit "$FAKE_ENVOY_EXIT"; fi
trap 'echo "term $$" >> "$FAKE_ENVOY_LOG"; exit 0' TERM
while :; do sleep 0.05; done
`

// installFakeEnvoy puts the fake envoy first on PATH and returns its log.
func installFakeEnvoy(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "envoy"), []byte(fakeEnvoy), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	log := filepath.Join(dir, "envoy.log")
	t.Setenv("FAKE_ENVOY_LOG", log)
	return log
}

type envoyEvent struct {
	what string // start or term
	pid  int
	args string
	at   time.Time
}

func readEnvoyLog(t *testing.T, path string) []envoyEvent {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []envoyEvent
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, " ", 3)
		if len(f) < 2 {
			continue
		}
		pid, _ := strconv.Atoi(f[1])
		e := envoyEvent{what: f[0], pid: pid}
		if len(f) == 3 {
			e.args = f[2]
		}
		out = append(out, e)
	}
	return out
}

func count(evs []envoyEvent, what string) int {
	n := 0
	for _, e := range evs {
		if e.what == what {
			n++
		}
	}
	return n
}

func supervisorConfig(admin string) EnvoyConfig {
	c := Default().Envoy
	c.Enabled = true
	c.AdminAddress = admin
	c.DrainDuration = 200 * time.Millisecond
	c.StopTimeout = 2 * time.Second
	c.RestartBackoff = 100 * time.Millisecond
	c.MaxRestartBackoff = 400 * time.Millisecond
	return c
}

// TestEnvoySupervision: Envoy found on PATH is started with the
// bootstrap, restarted with backoff when it dies, and on stop drained
// through its admin API and then terminated.
func TestEnvoySupervision(t *testing.T) {
	log := installFakeEnvoy(t)
	var drains atomic.Int32
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/drain_listeners" && r.URL.Query().Has("graceful") {
			drains.Add(1)
		}
	}))
	defer admin.Close()
	s, err := newEnvoySupervisor(supervisorConfig(strings.TrimPrefix(admin.URL, "http://")), "/data/envoy-bootstrap.json", os.Stderr, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.run(ctx) }()
	defer func() { cancel(); <-done }()

	eventually(t, 5*time.Second, "envoy started", func() bool { return count(readEnvoyLog(t, log), "start") == 1 })
	first := readEnvoyLog(t, log)[0]
	if !strings.HasPrefix(first.args, "-c /data/envoy-bootstrap.json --disable-hot-restart --drain-time-s 1") {
		t.Fatalf("args: %s", first.args)
	}
	// Envoy dies: it is started again.
	if err := syscall.Kill(first.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "envoy restarted", func() bool { return count(readEnvoyLog(t, log), "start") == 2 })

	// Stop: drain first, then SIGTERM, and the process is gone.
	cancel()
	<-done
	if drains.Load() != 1 {
		t.Errorf("%d drain requests", drains.Load())
	}
	evs := readEnvoyLog(t, log)
	last := evs[len(evs)-1]
	if last.what != "term" || last.pid != evs[len(evs)-2].pid {
		t.Fatalf("last events: %+v", evs)
	}
	if err := syscall.Kill(last.pid, 0); err == nil {
		t.Errorf("envoy %d still running", last.pid)
	}
}

// TestEnvoyCrashLoopBacksOff: an Envoy that exits at once is restarted
// with growing waits, up to the maximum.
func TestEnvoyCrashLoopBacksOff(t *testing.T) {
	log := installFakeEnvoy(t)
	t.Setenv("FAKE_ENVOY_EXIT", "1")
	s, err := newEnvoySupervisor(supervisorConfig("127.0.0.1:1"), "/b.json", os.Stderr, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var starts []time.Time
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(starts) < 5 && time.Now().Before(deadline) {
		if n := count(readEnvoyLog(t, log), "start"); n > len(starts) {
			starts = append(starts, time.Now())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if len(starts) < 5 {
		t.Fatalf("%d starts", len(starts))
	}
	// Waits 100, 200, 400, 400 ms (minus process start time).
	for i, want := range []time.Duration{100, 200, 400, 400} {
		gap := starts[i+1].Sub(starts[i])
		if gap < want*time.Millisecond-20*time.Millisecond || gap > want*time.Millisecond+time.Second {
			t.Errorf("restart %d after %s, want about %dms", i+1, gap, want)
		}
	}
}

func TestEnvoyNotFound(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := newEnvoySupervisor(supervisorConfig("127.0.0.1:15000"), "/b.json", os.Stderr, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "envoy.enabled is true but") {
		t.Fatalf("got %v", err)
	}
}

// TestAgentRunsEnvoy: with envoy.enabled, the agent starts Envoy on the
// bootstrap it wrote, once it has a certificate, and stops it with itself.
func TestAgentRunsEnvoy(t *testing.T) {
	log := installFakeEnvoy(t)
	m := startMeshd(t, "", "", nil)
	cfg := agentConfig(t, m, t.TempDir(), func(c *Config) {
		c.Envoy = supervisorConfig("127.0.0.1:1")
		c.Envoy.DrainDuration = 0
	})
	writeToken(t, cfg, m.token("shop", "billing", 1))
	ta := startAgent(t, cfg)
	ta.ready()
	eventually(t, 5*time.Second, "envoy started", func() bool { return count(readEnvoyLog(t, log), "start") == 1 })
	if ev := readEnvoyLog(t, log)[0]; !strings.Contains(ev.args, "-c "+cfg.Envoy.BootstrapFile) {
		t.Fatalf("args %q", ev.args)
	}
	if _, err := os.Stat(cfg.Envoy.BootstrapFile); err != nil {
		t.Fatal(err)
	}
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	if count(readEnvoyLog(t, log), "term") != 1 {
		t.Fatalf("envoy not terminated: %+v", readEnvoyLog(t, log))
	}
}
