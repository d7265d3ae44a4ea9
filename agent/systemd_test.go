package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestSystemdUnits runs Debian's systemd-analyze verify on both units
// (unknown keys, bad values, missing binaries all fail it) and checks the
// hardening they promise. Without systemd-analyze it skips, unless
// MESHD_CI=1: .ci/run must install Debian's systemd package.
func TestSystemdUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("MESHD_CI") == "1" {
			t.Fatal("systemd-analyze not found: .ci/run must install it (apt-get install -y systemd)")
		}
		t.Skip("systemd-analyze not installed (apt-get install -y systemd)")
	}
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "deploy", "systemd")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	want := []string{"User=", "StateDirectory=", "ProtectSystem=strict", "NoNewPrivileges=yes", "Restart=on-failure",
		"RestartPreventExitStatus=2", "CapabilityBoundingSet=\n", "PrivateTmp=yes", "SystemCallFilter=@system-service"}
	for _, unit := range []string{"meshd.service", "meshd-agent.service"} {
		raw, err := os.ReadFile(filepath.Join(dir, unit))
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if !strings.Contains(string(raw), "\n"+w) {
				t.Errorf("%s: no %q", unit, strings.TrimSpace(w))
			}
		}
		// verify checks that ExecStart's binary exists: point it at one
		// that does.
		text := strings.ReplaceAll(string(raw), "/usr/local/bin/meshd", self)
		path := filepath.Join(tmp, unit)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(analyze, "verify", path).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
		}
		if out, err := exec.Command(analyze, "security", "--offline=yes", path).CombinedOutput(); err == nil {
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			t.Logf("%s: %s", unit, lines[len(lines)-1])
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "meshd.sysusers")); err != nil {
		t.Error(err)
	}
}
