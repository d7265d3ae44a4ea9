package galleycli_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/galley"
	"github.com/meshd/meshd/modules/galley/galleycli"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const routes = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.example.com]
  http:
  - route:
    - destination: {host: reviews.example.com}
    timeout: %s
`

const reviews = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.example.com]
  location: MESH_INTERNAL
  resolution: DNS
  ports: [{number: 9080, name: http, protocol: HTTP}]
`

// server is galley under a real core.Host with its admin API on loopback.
type server struct {
	dir, data string
	host      *core.Host
	srv       *httptest.Server
	stop      func()
}

func startServer(t *testing.T, dir string) *server {
	s := &server{dir: dir, data: filepath.Join(dir, "data")}
	reg := core.NewRegistry()
	require.NoError(t, reg.Add(new(galley.Module)))
	cfg := core.DefaultConfig()
	cfg.DataDir = s.data
	cfg.Modules = map[string]map[string]any{"galley": {"paths": []any{filepath.Join(dir, "mesh")}, "debounce": "10ms"}}
	st, err := store.Open(s.data, store.Options{})
	require.NoError(t, err)
	host, err := core.NewHost(core.HostOptions{Config: cfg, Registry: reg, Store: st, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	require.NoError(t, host.Provision())
	s.host = host
	s.srv = httptest.NewServer(host.AdminHandler())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- host.Run(ctx) }()
	stopped := false
	s.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		require.NoError(t, <-done)
		s.srv.Close()
		require.NoError(t, host.Cleanup())
		require.NoError(t, st.Close())
	}
	t.Cleanup(s.stop)
	require.Eventually(t, func() bool { ok, _ := host.Ready(); return ok }, 10*time.Second, 5*time.Millisecond)
	return s
}

func (s *server) admin() string { return strings.TrimPrefix(s.srv.URL, "http://") }

// run runs `meshd config <args>` and returns its output and error.
func run(args ...string) (string, error) {
	root := &cobra.Command{Use: "meshd", SilenceUsage: true, SilenceErrors: true}
	config := &cobra.Command{Use: "config"}
	config.AddCommand(galleycli.NewConfigCommands(nil)...)
	root.AddCommand(config)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"config"}, args...))
	err := root.Execute()
	return out.String(), err
}

func write(t *testing.T, path, data string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(data), 0o644))
}

func TestCommands(t *testing.T) {
	dir := t.TempDir()
	mesh := filepath.Join(dir, "mesh")
	write(t, filepath.Join(mesh, "reviews.yaml"), reviews)
	write(t, filepath.Join(mesh, "routes.yaml"), fmt.Sprintf(routes, "1s"))
	s := startServer(t, dir)
	waitRev := func(n int) {
		t.Helper()
		require.Eventually(t, func() bool {
			out, err := run("history", "--admin", s.admin(), "--limit", "1")
			return err == nil && strings.Contains(out, fmt.Sprintf("\n%d *", n))
		}, 10*time.Second, 10*time.Millisecond)
	}
	waitRev(1)
	for i, d := range []string{"2s", "3s"} {
		write(t, filepath.Join(mesh, "routes.yaml"), fmt.Sprintf(routes, d))
		waitRev(i + 2)
	}
	a := s.admin()

	out, err := run("history", "--admin", a)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 4, out)
	require.Regexp(t, `^REVISION\s+TIME\s+REASON\s+OBJECTS\s+CHANGES\s+ORIGINS$`, lines[0])
	require.Regexp(t, `^3 \*\s+\S+ \S+\s+change\s+2\s+~1\s+.*routes\.yaml$`, lines[1])
	require.Regexp(t, `^1\s+\S+ \S+\s+change\s+2\s+\+2\s+.*reviews\.yaml, .*routes\.yaml$`, lines[3])

	out, err = run("history", "2", "--admin", a)
	require.NoError(t, err)
	require.Contains(t, out, "revision 2 ")
	require.Contains(t, out, "~ VirtualService/shop/reviews  ("+filepath.Join(mesh, "routes.yaml")+")")

	// -o yaml is config galley reads back.
	out, err = run("history", "2", "-o", "yaml", "--admin", a)
	require.NoError(t, err)
	require.Contains(t, out, "timeout: 2s")
	res := galley.New(galley.Options{}).CheckBytes("rev2.yaml", []byte(out))
	require.Empty(t, res.Findings)
	require.Len(t, res.Objects, 2)

	out, err = run("diff", "1", "3", "--admin", a)
	require.NoError(t, err)
	require.Contains(t, out, "revision 1 -> 3: 0 added, 1 changed, 0 removed\n")
	require.Contains(t, out, "--- VirtualService/shop/reviews@1 (")
	require.Contains(t, out, "-      timeout: 1s\n+      timeout: 3s\n")

	out, err = run("diff", "--admin", a, "-o", "json")
	require.NoError(t, err)
	require.Contains(t, out, `"from": 2`)

	out, err = run("rollback", "1", "--admin", a)
	require.NoError(t, err)
	require.Equal(t, "rolled back to revision 1 as revision 4: 0 added, 1 updated, 0 removed\nthe current content of every file is held until it changes\n", out)
	out, err = run("history", "--admin", a, "--limit", "1")
	require.NoError(t, err)
	require.Contains(t, out, "rollback to 1")

	// Errors are one clear line.
	_, err = run("history", "99", "--admin", a)
	require.ErrorContains(t, err, "no such revision: 99 (history holds 1 to 4)")
	_, err = run("rollback", "x", "--admin", a)
	require.ErrorContains(t, err, `revision "x": want a positive number`)
	_, err = run("history", "-o", "yaml", "--admin", a)
	require.ErrorContains(t, err, `--output "yaml": want text or json`)

	// A stopped meshd's store, read directly.
	s.stop()
	_, err = run("history", "--admin", a)
	require.ErrorContains(t, err, "is meshd running?")
	out, err = run("diff", "3", "4", "--data-dir", s.data)
	require.NoError(t, err)
	require.Contains(t, out, "-      timeout: 3s\n+      timeout: 1s\n")
	out, err = run("history", "--data-dir", s.data)
	require.NoError(t, err)
	require.Contains(t, out, "4 *")
}
