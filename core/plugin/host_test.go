package plugin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meshd/meshd/core/bus"
)

// logCapture is an slog handler that keeps every record with its
// attributes flattened, so tests can look for what a plugin logged.
type logCapture struct {
	mu    *sync.Mutex
	recs  *[]capturedRecord
	attrs []slog.Attr
}

type capturedRecord struct {
	Level slog.Level
	Msg   string
	Attrs map[string]string
}

func newLogCapture() *logCapture {
	return &logCapture{mu: &sync.Mutex{}, recs: &[]capturedRecord{}}
}

func (c *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (c *logCapture) Handle(_ context.Context, r slog.Record) error {
	rec := capturedRecord{Level: r.Level, Msg: r.Message, Attrs: map[string]string{}}
	for _, a := range c.attrs {
		rec.Attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool { rec.Attrs[a.Key] = a.Value.String(); return true })
	c.mu.Lock()
	*c.recs = append(*c.recs, rec)
	c.mu.Unlock()
	return nil
}
func (c *logCapture) WithAttrs(as []slog.Attr) slog.Handler {
	return &logCapture{mu: c.mu, recs: c.recs, attrs: append(append([]slog.Attr(nil), c.attrs...), as...)}
}
func (c *logCapture) WithGroup(string) slog.Handler { return c }

// find returns the first record whose message contains msg.
func (c *logCapture) find(msg string) (capturedRecord, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range *c.recs {
		if strings.Contains(r.Msg, msg) {
			return r, true
		}
	}
	return capturedRecord{}, false
}

func (c *logCapture) waitFor(t *testing.T, msg string) capturedRecord {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if r, ok := c.find(msg); ok {
			return r
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no log record containing %q", msg)
	return capturedRecord{}
}

// fastConfig supervises quickly, so restarts happen within a test.
func fastConfig(plugins ...PluginConfig) *Config {
	c := Default()
	c.HealthInterval = 100 * time.Millisecond
	c.HealthTimeout = 300 * time.Millisecond
	c.Backoff = BackoffConfig{Initial: 50 * time.Millisecond, Max: 400 * time.Millisecond}
	c.StartTimeout = 5 * time.Second
	c.Plugins = plugins
	return c
}

type testHost struct {
	m       *Module
	bus     *bus.Bus
	log     *logCapture
	metrics *prometheus.Registry
	admin   *http.ServeMux
}

// setup provisions a plugins module; it is cleaned up when the test ends.
func setup(t *testing.T, cfg *Config) (*testHost, error) {
	t.Helper()
	h := &testHost{m: new(Module), bus: bus.New(bus.Options{}), log: newLogCapture(), metrics: prometheus.NewRegistry(), admin: http.NewServeMux()}
	t.Cleanup(func() {
		_ = h.m.Cleanup()
		h.bus.Close()
	})
	err := h.m.Setup(Options{Config: cfg, Logger: slog.New(h.log), Bus: h.bus, Metrics: h.metrics, Admin: h.admin.Handle})
	return h, err
}

// run runs the module until the test ends.
func (h *testHost) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = h.m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

func waitGone(t *testing.T, pid int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive after %s", pid, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitState(t *testing.T, in *Instance, want State, within time.Duration) Status {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st := in.Status()
		if st.State == want {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("plugin %s is %s (%s), want %s", st.Name, st.State, st.LastError, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStartConfigureAndStop(t *testing.T) {
	h, err := setup(t, fastConfig(testPlugin("greeter", "ok", map[string]any{
		"GREETING": "hello from the plugin", // keys match in any case (viper lowercases)
		"log":      "a warning from the plugin",
		"count":    "7",
	})))
	if err != nil {
		t.Fatal(err)
	}
	ins := h.m.Instances(KindSink)
	if len(ins) != 1 || len(h.m.Instances(KindDiscovery)) != 0 {
		t.Fatalf("instances: %d sinks", len(ins))
	}
	st := ins[0].Status()
	if st.State != StateUp || st.Plugin != "test-plugin" || st.Version != "1.2.3" || st.Protocol != 1 || st.PID == 0 || st.Restarts != 0 {
		t.Fatalf("status %+v", st)
	}
	conn, err := ins[0].Current()
	if err != nil || conn.Info().Kind != KindSink || conn.Protocol() != 1 {
		t.Fatalf("current: %v %+v", err, conn)
	}

	// What the plugin prints to stdout and logs arrives in meshd's log,
	// tagged with the plugin's name.
	out := h.log.waitFor(t, "hello from the plugin")
	if out.Attrs["plugin"] != "greeter" || out.Attrs["stream"] != "stdout" || out.Level != slog.LevelInfo {
		t.Errorf("stdout line %+v", out)
	}
	warn := h.log.waitFor(t, "a warning from the plugin")
	if warn.Attrs["plugin"] != "greeter" || warn.Level != slog.LevelWarn || warn.Attrs["count"] != "7" {
		t.Errorf("log line %+v", warn)
	}
	if n := testutil.ToFloat64(h.m.upGauge.WithLabelValues("greeter", KindSink)); n != 1 {
		t.Errorf("meshd_plugin_up = %v", n)
	}

	// /debug/plugins is what `meshd plugins list` reads.
	rec := httptest.NewRecorder()
	h.admin.ServeHTTP(rec, httptest.NewRequest("GET", "/debug/plugins", nil))
	var sts []Status
	if err := json.Unmarshal(rec.Body.Bytes(), &sts); err != nil || len(sts) != 1 || sts[0].Name != "greeter" || sts[0].State != StateUp {
		t.Fatalf("/debug/plugins: %v %s", err, rec.Body)
	}

	if err := h.m.Cleanup(); err != nil {
		t.Fatal(err)
	}
	waitGone(t, st.PID, 5*time.Second)
	if st := ins[0].Status(); st.State != StateStopped {
		t.Errorf("after cleanup: %s", st.State)
	}
	if _, err := ins[0].Conn(context.Background()); !errors.Is(err, ErrStopped) {
		t.Errorf("Conn after cleanup: %v", err)
	}
}

func TestRefusals(t *testing.T) {
	exe, sum := self()
	wrongSum := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name string
		pc   PluginConfig
		want []string
		ran  bool // whether the binary may have been executed
	}{
		{"checksum", PluginConfig{Name: "x", Kind: KindSink, Path: exe, SHA256: wrongSum, Args: []string{"-meshd-test-plugin=ok"}},
			[]string{`plugin "x"`, "checksum mismatch", "has sha256 " + sum, "meshd.yaml says " + wrongSum, "refusing to run it"}, false},
		{"missing binary", PluginConfig{Name: "x", Kind: KindSink, Path: "/nonexistent/plugin", SHA256: sum},
			[]string{"open binary", "no such file"}, false},
		{"wrong kind", testPlugin("x", "wrongkind", nil),
			[]string{"incompatible plugin", `declares kind "sink"`, `is a "validator" plugin`}, true},
		{"no handshake", testPlugin("x", "nohandshake", nil),
			[]string{"did not answer the meshd plugin handshake"}, true},
		{"unknown key", testPlugin("x", "ok", map[string]any{"greting": "typo"}),
			[]string{"plugin config", "modules.plugins.plugins[0].config.greting: unknown key", "greeting, log, crashAfter"}, true},
		{"bad type", testPlugin("x", "ok", map[string]any{"crashAfter": "soon"}),
			[]string{"config.crashAfter: invalid value soon: want duration"}, true},
		{"not allowed", testPlugin("x", "ok", map[string]any{"mode": "c"}),
			[]string{`config.mode: "c" is not one of a, b`}, true},
		{"refused", testPlugin("x", "ok", map[string]any{"refuse": true}),
			[]string{"the plugin refused its config", "refusing config as asked (instance x, protocol 1)"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marker := t.TempDir()
			t.Setenv("MESHD_PLUGIN_TEST_MARKER", marker)
			_, err := setup(t, fastConfig(tc.pc))
			if err == nil {
				t.Fatal("setup succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			ents, _ := os.ReadDir(marker)
			if !tc.ran && len(ents) > 0 {
				t.Errorf("the binary ran %d times", len(ents))
			}
			for _, e := range ents { // every process that ran is gone
				pid, _ := strconv.Atoi(e.Name())
				waitGone(t, pid, 5*time.Second)
			}
		})
	}
}

func TestStartTimeout(t *testing.T) {
	cfg := fastConfig(testPlugin("slow", "slowstart", nil))
	cfg.StartTimeout = 300 * time.Millisecond
	marker := t.TempDir()
	t.Setenv("MESHD_PLUGIN_TEST_MARKER", marker)
	start := time.Now()
	_, err := setup(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "no handshake within modules.plugins.startTimeout") {
		t.Fatalf("err %v", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("start took %s", d)
	}
	ents, _ := os.ReadDir(marker)
	for _, e := range ents {
		pid, _ := strconv.Atoi(e.Name())
		waitGone(t, pid, 5*time.Second)
	}
}

func TestConfigValidate(t *testing.T) {
	_, sum := self()
	cfg := Default()
	cfg.Plugins = []PluginConfig{
		{Name: "Bad Name", Kind: "discovery", Path: "/x", SHA256: sum},
		{Name: "a", Kind: "frobnicator", Path: "", SHA256: "xyz"},
		{Name: "a", Kind: "sink", Path: "/x"},
		{Name: "b", Kind: "sink", Path: "/x", SHA256: "0"},
	}
	err := cfg.Validate()
	for _, w := range []string{
		`plugins[0].name: "Bad Name" must be`,
		`plugins[1].kind: "frobnicator" is not one of discovery, validator, signer, sink`,
		"plugins[1].path: required",
		`plugins[1].sha256: "xyz" is not a hex SHA-256`,
		`plugins[2].name: "a" is also the name of plugins[1]`,
		"plugins[2].sha256: required",
		`plugins[3].sha256: "0" is not a hex SHA-256 (64 hex digits); YAML read it as a number: put it in quotes`,
	} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v lacks %q", err, w)
		}
	}
}

// events collects plugin events from the bus.
func events(t *testing.T, b *bus.Bus) func(want bus.Topic) bus.Event {
	sub := b.Subscribe("test", "plugins.*")
	return func(want bus.Topic) bus.Event {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for {
			evs, err := sub.Next(ctx)
			if err != nil {
				t.Fatalf("waiting for %s: %v", want, err)
			}
			for _, e := range evs {
				if e.Topic() == want {
					return e
				}
			}
		}
	}
}

func TestRestartAfterCrashAndKill(t *testing.T) {
	h, err := setup(t, fastConfig(testPlugin("crashy", "ok", map[string]any{"crashAfter": "300ms"})))
	if err != nil {
		t.Fatal(err)
	}
	next := events(t, h.bus)
	h.run(t)
	in := h.m.Instances(KindSink)[0]
	first := in.Status().PID

	// It exits by itself: down, then up again as a new process.
	down := next(TopicPluginDown).(PluginDown)
	if down.Name != "crashy" || !strings.Contains(down.Reason, "exited") {
		t.Errorf("down event %+v", down)
	}
	up := next(TopicPluginUp).(PluginUp)
	if up.Restarts < 1 || up.PID == first || up.Version != "1.2.3" {
		t.Errorf("up event %+v (first pid %d)", up, first)
	}
	waitGone(t, first, 5*time.Second)
	if n := testutil.ToFloat64(h.m.restartCount.WithLabelValues("crashy", KindSink)); n < 1 {
		t.Errorf("restarts metric %v", n)
	}
	if _, ok := h.log.find("plugin down; its consumers keep its last good state"); !ok {
		t.Error("no log line for the crash")
	}
}

func TestKilledPluginRestarts(t *testing.T) {
	h, err := setup(t, fastConfig(testPlugin("victim", "ok", nil)))
	if err != nil {
		t.Fatal(err)
	}
	next := events(t, h.bus)
	h.run(t)
	in := h.m.Instances(KindSink)[0]
	old, _ := in.Current()
	pid := in.Status().PID
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	next(TopicPluginDown)
	select {
	case <-old.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("old connection's Done not closed")
	}
	next(TopicPluginUp)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := in.Conn(ctx)
	if err != nil || c == old {
		t.Fatalf("conn after restart: %v (same: %v)", err, c == old)
	}
	st := in.Status()
	if st.Restarts != 1 || st.PID == pid || st.State != StateUp {
		t.Fatalf("status %+v", st)
	}
}

func TestHungPluginRestarts(t *testing.T) {
	h, err := setup(t, fastConfig(testPlugin("hung", "ok", nil)))
	if err != nil {
		t.Fatal(err)
	}
	next := events(t, h.bus)
	h.run(t)
	in := h.m.Instances(KindSink)[0]
	pid := in.Status().PID
	// SIGSTOP: the process is alive but answers nothing.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	down := next(TopicPluginDown).(PluginDown)
	if !strings.Contains(down.Reason, "health check") {
		t.Errorf("down reason %q", down.Reason)
	}
	if d := Degraded(h.m.instances); d != "" && !strings.Contains(d, "plugin hung (sink)") {
		t.Errorf("degraded %q", d)
	}
	next(TopicPluginUp)
	waitGone(t, pid, 10*time.Second)
	if st := in.Status(); st.PID == pid || st.State != StateUp {
		t.Errorf("status %+v", st)
	}
	if d := h.m.Degraded(); d != "" {
		t.Errorf("degraded after restart: %q", d)
	}
}

func TestDownWhileRestartFails(t *testing.T) {
	// The binary's checksum changes under a running plugin: restarts are
	// refused, the instance stays down and says why, and it comes back
	// once the binary is right again.
	exe, sum := self()
	dir := t.TempDir()
	bin := dir + "/plugin"
	copyFile(t, exe, bin)
	pc := PluginConfig{Name: "swapped", Kind: KindSink, Path: bin, SHA256: sum, Args: []string{"-meshd-test-plugin=ok"}}
	h, err := setup(t, fastConfig(pc))
	if err != nil {
		t.Fatal(err)
	}
	next := events(t, h.bus)
	h.run(t)
	in := h.m.Instances(KindSink)[0]
	// Replace the file (rename, as installers do) and kill the process.
	if err := os.WriteFile(dir+"/other", []byte("#!/bin/sh\necho evil\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir+"/other", bin); err != nil {
		t.Fatal(err)
	}
	_ = syscall.Kill(in.Status().PID, syscall.SIGKILL)
	next(TopicPluginDown)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(in.Status().LastError, "checksum mismatch") {
		if time.Now().After(deadline) {
			t.Fatalf("status %+v", in.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := in.Current(); !errors.Is(err, ErrDown) {
		t.Errorf("Current while down: %v", err)
	}
	if d := h.m.Degraded(); !strings.Contains(d, "plugin swapped (sink)") || !strings.Contains(d, "checksum mismatch") {
		t.Errorf("degraded %q", d)
	}
	copyFile(t, exe, bin+".new")
	if err := os.Rename(bin+".new", bin); err != nil {
		t.Fatal(err)
	}
	next(TopicPluginUp)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestNoOrphans runs a host in a child process, kills it, and checks that
// its plugins die with it: by SIGTERM (the host cleans up), by SIGKILL
// (the kernel's parent-death signal), and by SIGKILL with the parent-death
// signal off (the SDK's parent watch alone).
func TestNoOrphans(t *testing.T) {
	if testing.Short() {
		t.Skip("starts host processes")
	}
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
		env  string
	}{
		{"SIGTERM", syscall.SIGTERM, ""},
		{"SIGKILL pdeathsig", syscall.SIGKILL, "MESHD_PLUGIN_TEST_NO_PARENT_WATCH=1"},
		{"SIGKILL parent watch", syscall.SIGKILL, "MESHD_PLUGIN_TEST_NO_PDEATHSIG=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fastConfig(testPlugin("one", "ok", nil), testPlugin("two", "ok", nil))
			raw, _ := json.Marshal(cfg)
			exe, _ := self()
			cmd := exec.Command(exe, "-test.run=^$")
			cmd.Env = append(os.Environ(), "MESHD_PLUGIN_TEST_HOST="+string(raw), tc.env)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			sc := bufio.NewScanner(out)
			var pids []int
			for sc.Scan() {
				if rest, ok := strings.CutPrefix(sc.Text(), "PIDS "); ok {
					for _, f := range strings.Fields(rest) {
						p, _ := strconv.Atoi(f)
						pids = append(pids, p)
					}
					break
				}
			}
			if len(pids) != 2 {
				t.Fatalf("host printed pids %v; stderr:\n%s", pids, stderr.String())
			}
			for _, p := range pids {
				if !alive(p) {
					t.Fatalf("plugin %d not running", p)
				}
			}
			if err := cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			_ = cmd.Wait()
			for _, p := range pids {
				waitGone(t, p, 5*time.Second)
			}
		})
	}
}
