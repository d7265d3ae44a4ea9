package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestServeLifecycle is the foundation's end-to-end check: the built binary
// starts on its embedded default in an empty dir, becomes ready, serves
// Prometheus metrics, and exits 0 on SIGTERM.
func TestServeLifecycle(t *testing.T) {
	s := Start(t, Options{})
	s.WaitReady(t, 30*time.Second)

	code, body := s.Get(t, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	for _, name := range []string{"meshd_build_info", "go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := families[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if code, _ := s.Get(t, "/debug/pprof/"); code == 200 {
		t.Error("pprof served although admin.pprof is off")
	}

	if _, err := os.Stat(filepath.Join(s.Dir, "data", "meshd.db")); err != nil {
		t.Fatalf("embedded default did not create ./data/meshd.db: %v", err)
	}
	if code := s.Stop(t, syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0\n%s", code, s.Output())
	}
	if !strings.Contains(s.Output(), "meshd stopped") {
		t.Fatalf("no graceful stop in log:\n%s", s.Output())
	}
}

// TestServeBadStartups checks that each startup failure is one clear line
// and exit code 1, never a stack trace.
func TestServeBadStartups(t *testing.T) {
	running := Start(t, Options{})
	running.WaitReady(t, 30*time.Second)

	file := filepath.Join(t.TempDir(), "afile")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		dir    string
		config string
		args   []string
		want   string
	}{
		{name: "locked store", dir: running.Dir, args: []string{"--admin-address", FreeAddr(t)}, want: "data dir locked by another meshd"},
		{name: "admin port in use", args: []string{"--admin-address", running.Admin}, want: "address already in use"},
		{name: "unwritable data dir", args: []string{"--admin-address", FreeAddr(t), "--data-dir", filepath.Join(file, "data")}, want: "data dir " + filepath.Join(file, "data")},
		{name: "malformed YAML", config: "admin:\n  address: [\n", want: "meshd.yaml:2:"},
		{name: "unknown key", config: "admin:\n  pprof: true\n  adress: x\n", want: "meshd.yaml:3: admin.adress: unknown key"},
		{name: "unknown module", config: "modules:\n  nosuch: {}\n", want: "meshd.yaml:2: modules.nosuch: unknown key"},
		{name: "bad value", config: "shutdownTimeout: 3s\nbus:\n  bufferSize: lots\n", want: `meshd.yaml:3: bus.bufferSize: invalid value "lots"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.dir
			if dir == "" {
				dir = t.TempDir()
			}
			args := []string{"serve"}
			if tt.config != "" {
				if err := os.WriteFile(filepath.Join(dir, "meshd.yaml"), []byte(tt.config), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append(args, "-c", "meshd.yaml", "--admin-address", FreeAddr(t))
			}
			args = append(args, tt.args...)
			start := time.Now()
			out, code := Run(t, dir, []string{"MESHD_MODULES_XDS_ADDRESS=" + FreeAddr(t), "MESHD_MODULES_XDS_TLSADDRESS=" + FreeAddr(t)}, args...)
			if code != 1 {
				t.Fatalf("exit code %d, want 1\n%s", code, out)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, "meshd: ") || !strings.Contains(last, tt.want) {
				t.Fatalf("last line %q, want meshd: ...%s...\n%s", last, tt.want, out)
			}
			if strings.Contains(out, "goroutine ") || strings.Contains(out, "panic") {
				t.Fatalf("stack trace in output:\n%s", out)
			}
			if tt.name == "locked store" && time.Since(start) > 3*time.Second {
				t.Fatalf("locked store took %s to report", time.Since(start))
			}
		})
	}
}

func TestVersion(t *testing.T) {
	out, code := Run(t, t.TempDir(), nil, "version")
	if code != 0 || !strings.HasPrefix(out, "meshd dev ") {
		t.Fatalf("version: %d %q", code, out)
	}
}
