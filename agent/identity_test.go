package agent

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/modules/citadel"
)

func mode(t testing.TB, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

// TestEnrollRenewRestart: the join token buys the first certificate once;
// renewals use the certificate; a restart without the token carries on
// from the data dir.
func TestEnrollRenewRestart(t *testing.T) {
	m := startMeshd(t, "", "", nil)
	dir := t.TempDir()
	cfg := agentConfig(t, m, dir, func(c *Config) { c.Identity.CertTTL = 3 * time.Second })
	writeToken(t, cfg, m.token("shop", "billing", 1))
	ta := startAgent(t, cfg)
	first := ta.ready()
	id := cfg.SPIFFEID()

	// Safe permissions, Istio's file names, the key never in the ledger.
	if got := mode(t, cfg.DataDir); got != 0o700 {
		t.Errorf("data dir mode %v", got)
	}
	if got := mode(t, cfg.Files.Dir); got != 0o700 {
		t.Errorf("certs dir mode %v", got)
	}
	if got := mode(t, filepath.Join(cfg.Files.Dir, FileKey)); got != 0o600 {
		t.Errorf("key mode %v", got)
	}
	chain, err := os.ReadFile(filepath.Join(cfg.Files.Dir, FileCertChain))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(chain)
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil || leaf.URIs[0].String() != id {
		t.Fatalf("stored leaf: %v %v", leaf.URIs, err)
	}

	// The token is spent; take it away. Renewal runs on the certificate.
	if err := os.Remove(cfg.Identity.JoinTokenFile); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "renewal", func() bool { return ta.a.cur.Load().serial() != first.serial() })
	renewed := ta.a.cur.Load()
	var rec *citadel.CertInfo
	for _, c := range m.certs(id) {
		if c.Serial == renewed.serial() {
			rec = &c
		}
	}
	if rec == nil || !strings.HasPrefix(rec.Authenticator, "client-cert") {
		t.Fatalf("renewal not authenticated by the certificate: %+v", rec)
	}
	if renewed.key.Equal(first.key) {
		t.Error("renewal kept the old key")
	}
	// The jittered renewal point lies between 50% and 80% of the lifetime.
	life := renewed.leaf.NotAfter.Sub(renewed.leaf.NotBefore)
	if renewed.renewAt.Before(renewed.leaf.NotAfter.Add(-life/2)) || renewed.renewAt.After(renewed.leaf.NotAfter) {
		t.Errorf("renewAt %s outside the lifetime %s..%s", renewed.renewAt, renewed.leaf.NotBefore, renewed.leaf.NotAfter)
	}

	// Restart: no token, same data dir.
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	ta2 := startAgent(t, cfg)
	ta2.ready()
	if !ta2.logs.Contains("using the stored certificate") {
		t.Fatalf("restart did not use the stored certificate:\n%s", ta2.logs.String())
	}
	before := ta2.a.cur.Load().serial()
	eventually(t, 10*time.Second, "renewal after restart", func() bool { return ta2.a.cur.Load().serial() != before })
}

// TestExpiryNeedsToken: cut off from meshd for longer than a certificate
// lifetime, the agent says it needs a join token, and recovers once it has
// one.
func TestExpiryNeedsToken(t *testing.T) {
	m := startMeshd(t, "", "", nil)
	dir := t.TempDir()
	cfg := agentConfig(t, m, dir, func(c *Config) { c.Identity.CertTTL = 2 * time.Second })
	writeToken(t, cfg, m.token("shop", "billing", 1))
	ta := startAgent(t, cfg)
	first := ta.ready()
	os.Remove(cfg.Identity.JoinTokenFile)

	m.stop()
	eventually(t, 10*time.Second, "expiry noticed", func() bool {
		return ta.logs.Contains("no valid certificate") && ta.logs.Contains("there is no join token in "+cfg.Identity.JoinTokenFile)
	})
	if !ta.a.cur.Load().leaf.NotAfter.Before(time.Now()) {
		t.Fatal("certificate not expired yet")
	}
	m = m.restart(nil)
	// meshd is back, but the expired certificate cannot renew: still asking.
	time.Sleep(500 * time.Millisecond)
	if ta.a.cur.Load().serial() != first.serial() && ta.a.cur.Load().valid(time.Now()) {
		t.Fatal("renewed without a token")
	}
	writeToken(t, cfg, m.token("shop", "billing", 1))
	eventually(t, 10*time.Second, "recovery with the token", func() bool { return ta.a.cur.Load().valid(time.Now()) })
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}

	// Stopped past expiry with no token, a restart says so and exits 2.
	m.stop()
	time.Sleep(time.Until(ta.a.cur.Load().leaf.NotAfter) + 100*time.Millisecond)
	os.Remove(cfg.Identity.JoinTokenFile)
	m = m.restart(nil)
	ta3 := startAgent(t, cfg)
	err := ta3.wait(10 * time.Second)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != ExitConfig || !strings.Contains(err.Error(), "the certificate expired at") ||
		!strings.Contains(err.Error(), "meshd ca token create --identity ns/shop/sa/billing") {
		t.Fatalf("got %v", err)
	}
}

func runUntilExit(t *testing.T, cfg *Config) error {
	t.Helper()
	return startAgent(t, cfg).wait(15 * time.Second)
}

func wantExit(t *testing.T, err error, substrs ...string) {
	t.Helper()
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != ExitConfig {
		t.Fatalf("want exit status 2, got %v", err)
	}
	for _, s := range substrs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
}

// TestBadInput: each problem an operator must fix ends the agent with one
// clear message and exit status 2; an unreachable meshd is retried.
func TestBadInput(t *testing.T) {
	m := startMeshd(t, "", "", nil)
	other := startMeshd(t, "", "", nil) // another CA: another root

	t.Run("no token at first start", func(t *testing.T) {
		dir := t.TempDir()
		err := runUntilExit(t, agentConfig(t, m, dir, nil))
		wantExit(t, err, "the agent has no certificate", "no join token in "+filepath.Join(dir, "join-token"), "meshd ca token create")
	})
	t.Run("refused token", func(t *testing.T) {
		dir := t.TempDir()
		cfg := agentConfig(t, m, dir, nil)
		writeToken(t, cfg, "0123456789abcdef.bogus")
		wantExit(t, runUntilExit(t, cfg), "join token 0123456789abcdef", "was refused")
	})
	t.Run("wrong root file", func(t *testing.T) {
		dir := t.TempDir()
		cfg := agentConfig(t, m, dir, func(c *Config) { c.ControlPlane.RootCertFile = other.rootsFile(t.TempDir()) })
		writeToken(t, cfg, m.token("shop", "billing", 1))
		wantExit(t, runUntilExit(t, cfg), "meshd's certificate is not trusted", m.addr)
	})
	t.Run("wrong root pin", func(t *testing.T) {
		dir := t.TempDir()
		otherRoots, _ := other.ca.TrustBundle()
		cfg := agentConfig(t, m, dir, func(c *Config) {
			c.ControlPlane.RootCertFile = ""
			c.ControlPlane.RootPin = pinOf(t, otherRoots)
		})
		writeToken(t, cfg, m.token("shop", "billing", 1))
		roots, _ := m.ca.TrustBundle()
		wantExit(t, runUntilExit(t, cfg), "no root in meshd's trust bundle matches controlPlane.rootPin", pinOf(t, roots))
	})
	t.Run("right root pin", func(t *testing.T) {
		dir := t.TempDir()
		roots, _ := m.ca.TrustBundle()
		cfg := agentConfig(t, m, dir, func(c *Config) {
			c.ControlPlane.RootCertFile = ""
			c.ControlPlane.RootPin = pinOf(t, roots)
		})
		writeToken(t, cfg, m.token("shop", "billing", 1))
		ta := startAgent(t, cfg)
		ta.ready()
		if !ta.logs.Contains("checked against the root pin") {
			t.Error("pin not used")
		}
	})
	t.Run("unreachable control plane", func(t *testing.T) {
		dir := t.TempDir()
		cfg := agentConfig(t, m, dir, func(c *Config) { c.ControlPlane.Address = "127.0.0.1:1" })
		writeToken(t, cfg, "0123456789abcdef.whatever")
		ta := startAgent(t, cfg)
		eventually(t, 10*time.Second, "retries with backoff", func() bool {
			return strings.Count(ta.logs.String(), "cannot reach meshd to obtain a certificate; retrying") >= 3
		})
		if !ta.logs.Contains("connection refused") || !ta.logs.Contains("retryIn=") {
			t.Errorf("retry message does not say why and when:\n%s", ta.logs.String())
		}
		if err := ta.stop(); err != nil {
			t.Fatalf("stop while retrying: %v", err)
		}
	})
	t.Run("corrupt key file", func(t *testing.T) {
		dir := t.TempDir()
		cfg := agentConfig(t, m, dir, nil)
		writeToken(t, cfg, m.token("shop", "billing", 1))
		ta := startAgent(t, cfg)
		ta.ready()
		ta.stop()
		key := filepath.Join(cfg.Files.Dir, FileKey)
		target, err := filepath.EvalSymlinks(key)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(target, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		wantExit(t, runUntilExit(t, cfg), "stored identity is unusable", "key:", "move "+cfg.Files.Dir+" away")
	})
}

func pinOf(t testing.TB, pemData []byte) string {
	t.Helper()
	certs, err := parseCerts(pemData)
	if err != nil {
		t.Fatal(err)
	}
	return Pin(certs[0].Raw)
}

// TestRootRotation: a root rotation reaches the agent over its xDS
// stream: first the bundle with both roots (files and SDS), then a
// certificate under the new root, then the bundle without the old one.
func TestRootRotation(t *testing.T) {
	m := startMeshd(t, "", "", map[string]any{
		"rotation": map[string]any{"checkInterval": "100ms", "ackTimeout": "10s", "stagedLeafTTL": "4s"},
		"leaf":     map[string]any{"defaultTTL": "4s", "maxTTL": "4s"},
	})
	dir := t.TempDir()
	cfg := agentConfig(t, m, dir, nil)
	writeToken(t, cfg, m.token("shop", "billing", 1))
	ta := startAgent(t, cfg)
	c := ta.ready()
	oldRoot := c.roots[0]
	if _, err := m.ca.Operations().Rotate(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "bundle with both roots", func() bool { return len(ta.a.cur.Load().roots) == 2 })
	files, err := os.ReadFile(filepath.Join(cfg.Files.Dir, FileRootCert))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(files), "BEGIN CERTIFICATE"); n != 2 {
		t.Fatalf("root-cert.pem has %d roots during the rotation", n)
	}
	eventually(t, 30*time.Second, "rotation finished at the agent", func() bool {
		c := ta.a.cur.Load()
		return len(c.roots) == 1 && !c.roots[0].Equal(oldRoot) && c.untrusted == nil &&
			c.chain[len(c.chain)-1].CheckSignatureFrom(c.roots[0]) == nil
	})
	if !ta.a.connected.Load() {
		t.Fatal("agent lost its session across the rotation")
	}
}

// TestOfflineThroughRotation: an agent that slept through a whole root
// rotation cannot trust meshd and says so; given the current roots and a
// join token, it gets a certificate under the new root.
func TestOfflineThroughRotation(t *testing.T) {
	m := startMeshd(t, "", "", map[string]any{"rotation": map[string]any{"checkInterval": "100ms"}})
	dir := t.TempDir()
	cfg := agentConfig(t, m, dir, nil)
	writeToken(t, cfg, m.token("shop", "billing", 1))
	ta := startAgent(t, cfg)
	old := ta.ready()
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	os.Remove(cfg.Identity.JoinTokenFile)

	if _, err := m.ca.Operations().Rotate(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "rotation finished", func() bool {
		pem, _ := m.ca.TrustBundle()
		roots, _ := parseCerts(pem)
		return len(roots) == 1 && !roots[0].Equal(old.roots[0])
	})

	ta = startAgent(t, cfg)
	eventually(t, 10*time.Second, "untrusted meshd reported", func() bool {
		return ta.logs.Contains("cannot trust meshd") && ta.logs.Contains("put the current ones from meshd ca roots")
	})
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}

	m.rootsFile(dir) // the operator fetches the current roots
	writeToken(t, cfg, m.token("shop", "billing", 1))
	ta = startAgent(t, cfg)
	eventually(t, 15*time.Second, "certificate under the new root", func() bool {
		c := ta.a.cur.Load()
		return c != nil && c.serial() != old.serial() && c.chain[len(c.chain)-1].CheckSignatureFrom(c.roots[0]) == nil && ta.a.connected.Load()
	})
	if !ta.logs.Contains("meshd refuses this agent's certificate") {
		t.Errorf("the rejected certificate was not recognised:\n%s", ta.logs.String())
	}
}
