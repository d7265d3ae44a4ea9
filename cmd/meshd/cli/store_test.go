package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/citadel"
	"github.com/meshd/meshd/modules/citadel/ca"
	"github.com/spf13/pflag"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// testServer is `meshd serve` running in this process: the same config
// loading and serve function as the command, with its own signal channel.
type testServer struct {
	admin string
	sigs  chan os.Signal
	done  chan error
	once  bool
}

// startServer runs meshd serve on dataDir with every listener on a free
// loopback port, and waits until it is ready.
func startServer(t *testing.T, dataDir string) *testServer {
	t.Helper()
	dir := t.TempDir()
	s := &testServer{admin: freeAddr(t), sigs: make(chan os.Signal, 2), done: make(chan error, 1)}
	cfg := fmt.Sprintf(`dataDir: %s
admin:
  address: %s
log:
  level: error
mesh:
  trustDomain: example.org
modules:
  xds:
    address: %s
    tlsAddress: %s
  galley:
    paths: [%s]
`, dataDir, s.admin, freeAddr(t), freeAddr(t), filepath.Join(dir, "mesh"))
	file := filepath.Join(dir, "meshd.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	addConfigFlags(fs)
	if err := fs.Set("config", file); err != nil {
		t.Fatal(err)
	}
	reg := core.DefaultRegistry()
	l, err := loadConfig(fs, reg)
	if err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- serve(l, reg, slog.New(slog.DiscardHandler), s.sigs) }()
	t.Cleanup(func() { s.stop(t) })

	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-s.done:
			s.once = true
			close(s.sigs)
			t.Fatalf("meshd serve exited before ready: %v", err)
		default:
		}
		resp, err := client.Get("http://" + s.admin + "/healthz/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("meshd not ready within 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop shuts the server down as SIGTERM does and waits for serve to
// return, which closes the store and releases its lock.
func (s *testServer) stop(t *testing.T) {
	t.Helper()
	if s.once {
		return
	}
	s.once = true
	s.sigs <- syscall.SIGTERM
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("meshd serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("meshd serve did not stop within 30s")
	}
	close(s.sigs) // ends serve's wait for a second signal
}

// mustMain runs the CLI and fails the test unless it exits 0.
func mustMain(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := run(t, nil, args...)
	if code != 0 {
		t.Fatalf("meshd %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// rootFingerprints returns the SHA-256 of every root in `meshd ca roots`.
func rootFingerprints(t *testing.T, admin string) []string {
	t.Helper()
	certs, err := ca.ParseCertsPEM([]byte(mustMain(t, "ca", "--admin", admin, "roots")))
	if err != nil || len(certs) == 0 {
		t.Fatalf("ca roots: %v (%d roots)", err, len(certs))
	}
	var out []string
	for _, c := range certs {
		sum := sha256.Sum256(c.Raw)
		out = append(out, hex.EncodeToString(sum[:]))
	}
	slices.Sort(out)
	return out
}

type caState struct {
	roots  []string
	rootID string
	token  string
	serial string
}

func readCA(t *testing.T, admin string) (st caState, tokens []citadel.TokenInfo, certs []citadel.CertInfo) {
	t.Helper()
	st.roots = rootFingerprints(t, admin)
	var status citadel.Status
	if err := json.Unmarshal([]byte(mustMain(t, "ca", "--admin", admin, "status", "-o", "json")), &status); err != nil {
		t.Fatal(err)
	}
	for _, r := range status.Roots {
		if r.Signing {
			st.rootID = r.ID
		}
	}
	if err := json.Unmarshal([]byte(mustMain(t, "ca", "--admin", admin, "token", "list", "-o", "json")), &tokens); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(mustMain(t, "ca", "--admin", admin, "certs", "list", "--all", "--limit", "0", "-o", "json")), &certs); err != nil {
		t.Fatal(err)
	}
	return st, tokens, certs
}

// TestStoreBackupAndRestore is the operator's path: a running meshd with a
// CA, a join token and issued certificates is snapshotted with `meshd store
// snapshot`, stopped, and the snapshot restored into a new data dir with
// `meshd store restore`; meshd started there has the same root and the
// token and certificate records.
func TestStoreBackupAndRestore(t *testing.T) {
	base := t.TempDir()
	dir1 := filepath.Join(base, "data1")
	s1 := startServer(t, dir1)

	out := mustMain(t, "ca", "--admin", s1.admin, "token", "create", "--identity", "vm/billing", "--uses", "3", "--ttl", "2h")
	tokenID, _, ok := strings.Cut(strings.SplitN(out, "\n", 2)[0], ".")
	if !ok {
		t.Fatalf("token create:\n%s", out)
	}
	before, tokens, certs := readCA(t, s1.admin)
	if len(tokens) != 1 || tokens[0].ID != tokenID {
		t.Fatalf("tokens before the snapshot: %+v", tokens)
	}
	if len(certs) == 0 || before.rootID == "" {
		t.Fatalf("no certificate records or signing root before the snapshot: %+v %+v", certs, before)
	}
	serial := certs[0].Serial

	// Snapshot through the running meshd.
	var resp core.SnapshotResponse
	if err := json.Unmarshal([]byte(mustMain(t, "store", "snapshot", "--admin", s1.admin, "-o", "json")), &resp); err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(resp.Path) != filepath.Join(dir1, store.SnapshotDir) {
		t.Fatalf("snapshot at %s, want under %s/snapshots", resp.Path, dir1)
	}
	if fi, err := os.Stat(resp.Path); err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != resp.Bytes {
		t.Fatalf("snapshot file: %v %+v (response %+v)", err, fi, resp)
	}
	if out := mustMain(t, "store", "snapshot", "--admin", s1.admin); !strings.Contains(out, "snapshot: "+filepath.Join(dir1, store.SnapshotDir)) || !strings.Contains(out, "sha256:") {
		t.Fatalf("store snapshot text output:\n%s", out)
	}

	// Inspect agrees with what the server said.
	var sum store.SnapshotSummary
	if err := json.Unmarshal([]byte(mustMain(t, "store", "inspect", resp.Path, "-o", "json")), &sum); err != nil {
		t.Fatal(err)
	}
	if sum.SHA256 != resp.SHA256 || sum.Schema != resp.Schema || !slices.ContainsFunc(sum.Modules, func(m store.ModuleSummary) bool { return m.ID == "citadel" && m.Keys > 0 }) {
		t.Fatalf("inspect %+v, server said %+v", sum, resp)
	}
	if out := mustMain(t, "store", "inspect", resp.Path); !strings.Contains(out, "citadel") || !strings.Contains(out, resp.SHA256) {
		t.Fatalf("inspect text:\n%s", out)
	}

	// While meshd runs, neither restore nor an offline snapshot may touch
	// its store.
	_, errOut, code := run(t, nil, "store", "restore", resp.Path, "--data-dir", dir1)
	if code != 1 || !strings.Contains(errOut, "data dir locked by another meshd") || !strings.Contains(errOut, "stop meshd") {
		t.Fatalf("restore on a running meshd: exit %d, %q; want 1 and the lock message", code, errOut)
	}
	_, errOut, code = run(t, nil, "store", "snapshot", "--offline", "--data-dir", dir1, "--file", filepath.Join(base, "x.db"))
	if code != 1 || !strings.Contains(errOut, "data dir locked by another meshd") || !strings.Contains(errOut, "drop --offline") {
		t.Fatalf("offline snapshot of a running meshd: exit %d, %q", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(base, "x.db")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("refused offline snapshot left a file: %v", err)
	}

	// A token revoked after the snapshot must come back with the restore:
	// the restored store is the snapshot, not the live state.
	mustMain(t, "ca", "--admin", s1.admin, "token", "revoke", tokenID)
	s1.stop(t)

	// Offline snapshot of the stopped meshd works too.
	offline := filepath.Join(base, "offline.db")
	if out := mustMain(t, "store", "snapshot", "--offline", "--data-dir", dir1, "--file", offline); !strings.Contains(out, "snapshot: "+offline) {
		t.Fatalf("offline snapshot:\n%s", out)
	}
	if _, err := store.VerifySnapshot(offline); err != nil {
		t.Fatal(err)
	}

	// Restore into a new data dir and start meshd there.
	dir2 := filepath.Join(base, "data2")
	out = mustMain(t, "store", "restore", resp.Path, "--data-dir", dir2)
	if !strings.Contains(out, "restored "+filepath.Join(dir2, store.FileName)) {
		t.Fatalf("restore output:\n%s", out)
	}
	s2 := startServer(t, dir2)
	after, tokens, certs := readCA(t, s2.admin)
	if !slices.Equal(after.roots, before.roots) || after.rootID != before.rootID {
		t.Fatalf("CA root after restore %v (signing %s), before %v (signing %s)", after.roots, after.rootID, before.roots, before.rootID)
	}
	if len(tokens) != 1 || tokens[0].ID != tokenID || tokens[0].State != "active" {
		t.Fatalf("tokens after restore: %+v, want %s active", tokens, tokenID)
	}
	if !slices.ContainsFunc(certs, func(c citadel.CertInfo) bool { return c.Serial == serial }) {
		t.Fatalf("certificate %s missing from the ledger after restore", serial)
	}
	s2.stop(t)

	// Restoring over an existing store keeps it beside the restored one.
	out = mustMain(t, "store", "restore", offline, "--data-dir", dir2)
	if !strings.Contains(out, "the previous store is kept as "+filepath.Join(dir2, "meshd.db.before-restore-")) {
		t.Fatalf("restore over a store:\n%s", out)
	}
}

func TestStoreUsageErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("garbage ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"restore without data dir", []string{"store", "restore", garbage}, 2, "--data-dir is required"},
		{"restore without file", []string{"store", "restore", "--data-dir", dir}, 2, "want one snapshot FILE"},
		{"restore garbage", []string{"store", "restore", garbage, "--data-dir", filepath.Join(dir, "d")}, 2, "not a valid meshd store snapshot"},
		{"restore missing", []string{"store", "restore", filepath.Join(dir, "nope.db"), "--data-dir", filepath.Join(dir, "d")}, 2, "no such file"},
		{"inspect garbage", []string{"store", "inspect", garbage}, 2, "not a valid meshd store snapshot"},
		{"inspect bad output", []string{"store", "inspect", garbage, "-o", "yaml"}, 2, "want text or json"},
		{"unknown flag", []string{"store", "snapshot", "--bogus"}, 2, "unknown flag: --bogus"},
		{"unknown subcommand", []string{"store", "backup"}, 2, `unknown command "backup"`},
		{"online with --file", []string{"store", "snapshot", "--file", "x.db"}, 2, "need --offline"},
		{"offline without --file", []string{"store", "snapshot", "--offline", "--data-dir", dir}, 2, "--offline needs --data-dir DIR"},
		{"offline without store", []string{"store", "snapshot", "--offline", "--data-dir", dir, "--file", filepath.Join(dir, "o.db")}, 2, "no meshd store in"},
		{"no meshd running", []string{"store", "snapshot", "--admin", freeAddr(t)}, 1, "is meshd running? see --admin; for a stopped one use --offline"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := run(t, nil, tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errOut, tt.code, tt.want)
			}
			if strings.Count(strings.TrimSpace(errOut), "\n") != 0 || out != "" {
				t.Fatalf("want one line on stderr and nothing on stdout, got %q / %q", errOut, out)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "d")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused restore created the data dir: %v", err)
	}
}
