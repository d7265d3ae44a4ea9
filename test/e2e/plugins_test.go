package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	pluginBuild sync.Once
	pluginDir   string
	pluginErr   error
)

// examplePlugin returns the path and SHA-256 of an example plugin from
// examples/plugins, built once per test process.
func examplePlugin(t testing.TB, name string) (path, sum string) {
	t.Helper()
	pluginBuild.Do(func() {
		pluginDir, pluginErr = os.MkdirTemp("", "meshd-e2e-plugins-")
		if pluginErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", pluginDir+string(filepath.Separator), "./examples/plugins/csv-source", "./examples/plugins/wildcard-validator", "./examples/plugins/stdout-sink")
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			pluginErr = fmt.Errorf("go build examples/plugins: %v\n%s", err, out)
		}
	})
	if pluginErr != nil {
		t.Fatal(pluginErr)
	}
	path = filepath.Join(pluginDir, name)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(data)
	return path, hex.EncodeToString(s[:])
}

// pluginStatus is the part of /debug/plugins the tests read.
type pluginStatus struct {
	Name      string `json:"name"`
	State     string `json:"state"`
	PID       int    `json:"pid"`
	Restarts  int    `json:"restarts"`
	Version   string `json:"version"`
	LastError string `json:"lastError"`
}

func (s *Server) plugins(t testing.TB) []pluginStatus {
	t.Helper()
	code, body := s.Get(t, "/debug/plugins")
	if code != 200 {
		t.Fatalf("/debug/plugins: %d %s", code, body)
	}
	var out []pluginStatus
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("/debug/plugins: %v: %s", err, body)
	}
	return out
}

// processAlive reports whether pid is a live process (not a zombie).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

func waitProcessGone(t testing.TB, pid int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("plugin process %d outlived meshd by %s", pid, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// csvPluginConfig is a meshd.yaml running the CSV discovery plugin.
func csvPluginConfig(t testing.TB, dir, sum string) string {
	t.Helper()
	path, realSum := examplePlugin(t, "csv-source")
	if sum == "" {
		sum = realSum
	}
	csv := filepath.Join(dir, "services.csv")
	if err := os.WriteFile(csv, []byte("host,namespace,port,address\nechoes.shop.svc.cluster.local,shop,8080,127.0.0.1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`modules:
  plugins:
    healthInterval: 200ms
    backoff: {initial: 100ms, max: 1s}
    plugins:
    - name: csv
      kind: discovery
      path: %s
      sha256: "%s"
      config:
        file: %s
        pollInterval: 1s
`, path, sum, csv)
}

// TestPluginsNoOrphans: a plugin process never outlives `meshd serve`,
// whether meshd shuts down on SIGTERM or is killed outright.
func TestPluginsNoOrphans(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs meshd")
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			s := Start(t, Options{Dir: dir, Config: csvPluginConfig(t, dir, "")})
			s.WaitReady(t, 60*time.Second)
			sts := s.plugins(t)
			if len(sts) != 1 || sts[0].State != "up" || sts[0].PID == 0 {
				t.Fatalf("plugins %+v", sts)
			}
			pid := sts[0].PID
			if !strings.Contains(s.Output(), "plugin=csv") {
				t.Errorf("meshd's log has no line tagged plugin=csv:\n%s", s.Output())
			}
			code := s.Stop(t, sig, 20*time.Second)
			if sig == syscall.SIGTERM && code != 0 {
				t.Errorf("meshd exited %d after SIGTERM", code)
			}
			waitProcessGone(t, pid, 5*time.Second)
		})
	}
}

// TestPluginsWrongChecksum: meshd refuses to run a plugin binary whose
// SHA-256 is not the one in meshd.yaml, and says so.
func TestPluginsWrongChecksum(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs meshd")
	}
	dir := t.TempDir()
	_, real := examplePlugin(t, "csv-source")
	wrong := strings.Repeat("ab", 32)
	s := Start(t, Options{Dir: dir, Config: csvPluginConfig(t, dir, wrong)})
	code := s.Wait(t, 30*time.Second)
	out := s.Output()
	if code == 0 {
		t.Fatalf("meshd started with a wrong plugin checksum:\n%s", out)
	}
	for _, want := range []string{`plugin "csv"`, "checksum mismatch", "has sha256 " + real, "meshd.yaml says " + wrong, "refusing to run it"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestPluginsList: `meshd plugins list` against a running meshd.
func TestPluginsList(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs meshd")
	}
	dir := t.TempDir()
	s := Start(t, Options{Dir: dir, Config: csvPluginConfig(t, dir, "")})
	s.WaitReady(t, 60*time.Second)
	out, code := Run(t, dir, nil, "plugins", "list", "--admin", s.Admin)
	if code != 0 {
		t.Fatalf("meshd plugins list exited %d:\n%s", code, out)
	}
	for _, want := range []string{"NAME", "csv", "discovery", "csv-source", "0.1.0", "up"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestPluginsValidator: galley runs the wildcard-validator plugin on the
// config it reads; a file with a wildcard host is rejected with the
// plugin's finding, the others are accepted.
func TestPluginsValidator(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs meshd")
	}
	dir := t.TempDir()
	mesh := filepath.Join(dir, "mesh")
	if err := os.MkdirAll(mesh, 0o700); err != nil {
		t.Fatal(err)
	}
	vs := func(name, host string) string {
		return fmt.Sprintf("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: %s, namespace: shop}\nspec:\n  hosts: [%q]\n  http:\n  - route:\n    - destination: {host: reviews.shop.svc.cluster.local}\n", name, host)
	}
	if err := os.WriteFile(filepath.Join(mesh, "good.yaml"), []byte(vs("good", "reviews.shop.svc.cluster.local")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mesh, "wild.yaml"), []byte(vs("wild", "*.shop.example.com")), 0o600); err != nil {
		t.Fatal(err)
	}
	path, sum := examplePlugin(t, "wildcard-validator")
	s := Start(t, Options{Dir: dir, Config: fmt.Sprintf(`modules:
  galley:
    paths: [./mesh]
  plugins:
    plugins:
    - name: no-wildcards
      kind: validator
      path: %s
      sha256: "%s"
`, path, sum)})
	s.WaitReady(t, 60*time.Second)
	var z struct {
		Validators []string `json:"validators"`
		Origins    []struct {
			Origin       string `json:"origin"`
			State        string `json:"state"`
			LastRejected *struct {
				Errors   int `json:"errors"`
				Findings []struct {
					Code    string `json:"code"`
					Message string `json:"message"`
					Line    int    `json:"line"`
				} `json:"findings"`
			} `json:"lastRejected"`
		} `json:"origins"`
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, body := s.Get(t, "/debug/configz")
		if err := json.Unmarshal([]byte(body), &z); err != nil {
			t.Fatal(err)
		}
		rejected, accepted := false, false
		for _, o := range z.Origins {
			switch {
			case strings.HasSuffix(o.Origin, "wild.yaml") && o.LastRejected != nil:
				for _, f := range o.LastRejected.Findings {
					if f.Code == "WILDCARD001" && f.Line == 5 && strings.Contains(f.Message, `"*.shop.example.com"`) {
						rejected = true
					}
				}
				if !rejected {
					t.Fatalf("wild.yaml rejected without the plugin's finding: %+v", *o.LastRejected)
				}
			case strings.HasSuffix(o.Origin, "good.yaml") && o.LastRejected == nil && o.State != "":
				accepted = true
			}
		}
		if rejected && accepted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("galley did not reject wild.yaml and accept good.yaml:\n%s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(z.Validators) != 1 || z.Validators[0] != "no-wildcards" {
		t.Errorf("galley's validators: %v", z.Validators)
	}
}
