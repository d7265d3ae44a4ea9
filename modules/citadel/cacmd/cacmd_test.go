package cacmd

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/citadel"
	"github.com/meshd/meshd/modules/citadel/ca"
	"github.com/meshd/meshd/xds"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// meshd runs citadel and xds under a real host with its admin API on an
// httptest server, until stop.
type meshd struct {
	dir   string
	admin string
	stop  func()
}

func startMeshd(t *testing.T, dir string) *meshd {
	t.Helper()
	reg := core.NewRegistry()
	for _, m := range []core.Module{new(citadel.Module), new(xds.Module)} {
		if err := reg.Add(m); err != nil {
			t.Fatal(err)
		}
	}
	cfg := core.DefaultConfig()
	cfg.DataDir = dir
	cfg.Mesh.TrustDomain = "example.org"
	cfg.Modules = map[string]map[string]any{
		"citadel": {"rotation": map[string]any{"checkInterval": "20ms"}},
		"xds":     {"address": "127.0.0.1:0", "tlsAddress": "127.0.0.1:0"},
	}
	st, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := core.NewHost(core.HostOptions{Config: cfg, Registry: reg, Store: st, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Provision(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.Run(ctx) }()
	srv := httptest.NewServer(h.AdminHandler())
	m := &meshd{dir: dir, admin: strings.TrimPrefix(srv.URL, "http://")}
	stopped := false
	m.stop = func() {
		if stopped {
			return
		}
		stopped = true
		srv.Close()
		cancel()
		<-done
		h.Cleanup()
		st.Close()
	}
	t.Cleanup(m.stop)
	return m
}

// run runs `meshd ca args...` and returns its output.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := NewCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(t, args...)
	if err != nil {
		t.Fatalf("meshd ca %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func TestAdminAndOffline(t *testing.T) {
	m := startMeshd(t, t.TempDir())
	admin := []string{"--admin", m.admin}
	a := func(args ...string) []string { return append(append([]string{}, admin...), args...) }

	// Tokens through the admin API.
	out := mustRun(t, a("token", "create", "--identity", "vm/billing", "--uses", "2", "--ttl", "1h")...)
	tok := strings.SplitN(out, "\n", 2)[0]
	id, _, ok := strings.Cut(tok, ".")
	if !ok || len(id) != 16 || !strings.Contains(out, "spiffe://example.org/ns/vm/sa/billing") || !strings.Contains(out, "shown only once") {
		t.Fatalf("token create:\n%s", out)
	}
	if out := mustRun(t, a("token", "list")...); !strings.Contains(out, id) || !strings.Contains(out, "active") || !strings.Contains(out, "0/2") {
		t.Fatalf("token list:\n%s", out)
	}
	var infos []citadel.TokenInfo
	if err := json.Unmarshal([]byte(mustRun(t, a("token", "list", "-o", "json")...)), &infos); err != nil || len(infos) != 1 || infos[0].ID != id {
		t.Fatalf("token list -o json: %v %+v", err, infos)
	}
	mustRun(t, a("token", "revoke", tok)...) // the whole token is accepted
	if out := mustRun(t, a("token", "list")...); strings.Contains(out, id) {
		t.Fatalf("revoked token listed as active:\n%s", out)
	}
	if out := mustRun(t, a("token", "list", "--all")...); !strings.Contains(out, "revoked") {
		t.Fatalf("token list --all:\n%s", out)
	}
	if _, err := run(t, a("token", "revoke", "0000000000000000")...); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("revoking an unknown token: %v", err)
	}
	if _, err := run(t, a("token", "create", "--identity", "spiffe://other.org/ns/a/sa/b")...); err == nil {
		t.Fatal("token for another trust domain created")
	}

	// Status, roots, certs.
	out = mustRun(t, a("status")...)
	for _, want := range []string{"self-signed", "example.org", "idle", "active", "yes", "0 connected"} {
		if !strings.Contains(out, want) {
			t.Fatalf("status lacks %q:\n%s", want, out)
		}
	}
	roots := mustRun(t, a("roots")...)
	if certs, err := ca.ParseCertsPEM([]byte(roots)); err != nil || len(certs) != 1 {
		t.Fatalf("roots: %v\n%s", err, roots)
	}
	if out := mustRun(t, a("certs", "list")...); !strings.Contains(out, "serving certificate") {
		t.Fatalf("certs list:\n%s", out)
	}

	// Rotation: no proxies are connected, so it runs to the end.
	if out := mustRun(t, a("rotate")...); !strings.Contains(out, "staged") && !strings.Contains(out, "switched") {
		t.Fatalf("rotate:\n%s", out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(mustRun(t, a("status")...), "last rotation") {
		if time.Now().After(deadline) {
			t.Fatal("rotation did not finish")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if newRoots := mustRun(t, a("roots")...); newRoots == roots {
		t.Fatal("roots unchanged after rotation")
	}

	// The store is locked while meshd runs.
	if _, err := run(t, "--data-dir", m.dir, "status"); err == nil || !strings.Contains(err.Error(), "--admin") {
		t.Fatalf("--data-dir on a running meshd: %v", err)
	}
	m.stop()
	if _, err := run(t, a("status")...); err == nil || !strings.Contains(err.Error(), "is meshd running") {
		t.Fatalf("admin API of a stopped meshd: %v", err)
	}

	// Offline, against the stopped meshd's store.
	off := []string{"--data-dir", m.dir}
	o := func(args ...string) []string { return append(append([]string{}, off...), args...) }
	if out := mustRun(t, o("status")...); !strings.Contains(out, "idle") || !strings.Contains(out, "meshd is not running") {
		t.Fatalf("offline status:\n%s", out)
	}
	out = mustRun(t, o("token", "create", "--identity", "ns/vm/sa/db")...)
	if !strings.Contains(out, "spiffe://example.org/ns/vm/sa/db") {
		t.Fatalf("offline token create (trust domain from the store):\n%s", out)
	}
	if out := mustRun(t, o("certs", "list", "--all", "-o", "json")...); !strings.Contains(out, `"authenticator": "self: serving certificate"`) {
		t.Fatalf("offline certs list:\n%s", out)
	}
	if out := mustRun(t, o("rotate")...); !strings.Contains(out, "rotation requested") {
		t.Fatalf("offline rotate:\n%s", out)
	}

	// The next start acts on the offline request and knows the token.
	m = startMeshd(t, m.dir)
	deadline = time.Now().Add(5 * time.Second)
	for {
		var s citadel.Status
		json.Unmarshal([]byte(mustRun(t, "--admin", m.admin, "status", "-o", "json")), &s)
		if s.BundleVersion >= 5 && s.Phase == citadel.PhaseIdle {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("offline rotation request not carried out: %+v", s)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if out := mustRun(t, "--admin", m.admin, "token", "list"); !strings.Contains(out, "spiffe://example.org/ns/vm/sa/db") {
		t.Fatalf("token created offline not listed:\n%s", out)
	}
}

func TestVerify(t *testing.T) {
	dir := t.TempDir()
	cert, key, err := ca.NewSelfSignedRoot(ca.RootOptions{Algorithm: ca.ECDSAP256, Lifetime: time.Hour, TrustDomain: "example.org"})
	if err != nil {
		t.Fatal(err)
	}
	auth, err := ca.NewAuthority(key, []*x509.Certificate{cert})
	if err != nil {
		t.Fatal(err)
	}
	other, _, _ := ca.NewSelfSignedRoot(ca.RootOptions{Algorithm: ca.ECDSAP256, Lifetime: time.Hour, TrustDomain: "example.org"})
	lk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(lk.Public())
	id := ca.SPIFFEID("example.org", "vm", "a")
	leaf, err := auth.Issue(&ca.LeafRequest{PublicKey: lk.Public(), RawSPKI: spki, URIs: []string{id}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, der ...[]byte) string {
		var b []byte
		for _, d := range der {
			b = append(b, ca.EncodeCertPEM(d)...)
		}
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		return p
	}
	chain, good, bad := write("chain.pem", leaf.DER), write("roots.pem", cert.Raw), write("other.pem", other.Raw)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"verify", "--bundle", good, chain}, "OK " + id},
		{[]string{"verify", "--bundle", good, "--trust-domain", "example.org", chain}, "OK"},
		{[]string{"verify", "--bundle", good, "--trust-domain", "other.org", chain}, "not in trust domain"},
		{[]string{"verify", "--bundle", bad, chain}, "does not verify"},
		{[]string{"verify", "--bundle", good, good}, "not a workload certificate"},
		{[]string{"verify", chain}, "--bundle is required"},
	}
	for _, tt := range tests {
		out, err := run(t, tt.args...)
		if err != nil {
			out += err.Error()
		}
		if !strings.Contains(out, tt.want) {
			t.Errorf("meshd ca %v: %q, want %q", tt.args, out, tt.want)
		}
	}
}

func TestBadOutputAndRefusedAdmin(t *testing.T) {
	if _, err := run(t, "-o", "yaml", "status"); err == nil || !strings.Contains(err.Error(), "text or json") {
		t.Fatalf("-o yaml: %v", err)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	if _, err := run(t, "--admin", addr, "status"); err == nil || !strings.Contains(err.Error(), "--data-dir") {
		t.Fatalf("no admin API: %v", err)
	}
	if _, err := run(t, "--data-dir", t.TempDir(), "status"); err == nil || !strings.Contains(err.Error(), "no meshd store") {
		t.Fatalf("empty data dir: %v", err)
	}
}
