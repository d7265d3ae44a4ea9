package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if code, ok := runChild(); ok {
		os.Exit(code)
	}
	goleak.VerifyTestMain(m)
}

// testAgent is an agent running in the test process.
type testAgent struct {
	t      testing.TB
	a      *Agent
	cfg    *Config
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

// agentConfig is a config for an agent of shop/billing against m, with its
// data dir in dir.
func agentConfig(t testing.TB, m *meshd, dir string, mutate func(*Config)) *Config {
	t.Helper()
	cfg := Default()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.ControlPlane.Address = m.addr
	cfg.ControlPlane.RootCertFile = m.rootsFile(dir)
	cfg.ControlPlane.DialTimeout = 5 * time.Second
	cfg.ControlPlane.RetryMax = 200 * time.Millisecond
	cfg.Identity = IdentityConfig{TrustDomain: testTD, Namespace: "shop", ServiceAccount: "billing",
		JoinTokenFile: filepath.Join(dir, "join-token")}
	cfg.Workload.Name = "vm-1"
	cfg.Workload.Address = "127.0.0.1"
	if mutate != nil {
		mutate(&cfg)
	}
	if err := cfg.complete(); err != nil {
		t.Fatal(err)
	}
	return &cfg
}

func writeToken(t testing.TB, cfg *Config, token string) {
	t.Helper()
	if err := os.WriteFile(cfg.Identity.JoinTokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startAgent runs an agent until the test ends or stop is called.
func startAgent(t testing.TB, cfg *Config) *testAgent {
	t.Helper()
	ta := &testAgent{t: t, cfg: cfg, logs: &syncBuffer{}, done: make(chan error, 1)}
	var err error
	ta.a, err = New(cfg, Options{Logger: slog.New(slog.NewTextHandler(ta.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ta.cancel = cancel
	go func() { ta.done <- ta.a.Run(ctx) }()
	t.Cleanup(func() { ta.stop() })
	return ta
}

// stop stops the agent and returns Run's error (idempotent).
func (ta *testAgent) stop() error {
	if ta.cancel == nil {
		return nil
	}
	ta.cancel()
	ta.cancel = nil
	select {
	case err := <-ta.done:
		if ta.t.Failed() {
			ta.t.Logf("agent log:\n%s", ta.logs.String())
		}
		return err
	case <-time.After(20 * time.Second):
		ta.t.Fatalf("agent did not stop\n%s", ta.logs.String())
		return nil
	}
}

// wait waits for Run to return by itself.
func (ta *testAgent) wait(timeout time.Duration) error {
	ta.t.Helper()
	select {
	case err := <-ta.done:
		ta.cancel()
		ta.cancel = nil
		return err
	case <-time.After(timeout):
		ta.t.Fatalf("agent still running after %s\n%s", timeout, ta.logs.String())
		return nil
	}
}

// ready waits until the agent has a certificate and its session is up.
func (ta *testAgent) ready() *creds {
	ta.t.Helper()
	eventually(ta.t, 20*time.Second, "agent connected", func() bool { return ta.a.connected.Load() })
	return ta.a.cur.Load()
}
