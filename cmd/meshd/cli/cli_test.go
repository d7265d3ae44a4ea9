package cli

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/config"
	"go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite docs/config-reference.md from the code")

// TestConfigReference fails when docs/config-reference.md and the defaults in
// the code disagree.
func TestConfigReference(t *testing.T) {
	path := filepath.Join("..", "..", "..", "docs", "config-reference.md")
	want := ConfigReference(core.DefaultRegistry())
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run: go test ./cmd/meshd/cli -run TestConfigReference -update)", err)
	}
	if string(got) != want {
		t.Fatalf("docs/config-reference.md is out of date with Default(); run: go test ./cmd/meshd/cli -run TestConfigReference -update")
	}
	for _, key := range []string{"`dataDir`", "`admin.address`", "`MESHD_ADMIN_ADDRESS`", "`mesh.trustDomain`"} {
		if !strings.Contains(want, key) {
			t.Errorf("reference lacks %s", key)
		}
	}
}

func run(t *testing.T, env map[string]string, args ...string) (string, string, int) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	var out, errOut bytes.Buffer
	code := Main(args, &out, &errOut)
	return out.String(), errOut.String(), code
}

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "meshd.yaml")
	if err := os.WriteFile(file, []byte("log:\n  level: warn\n  format: json\nmesh:\n  trustDomain: file.example\nshutdownTimeout: 5s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := run(t, map[string]string{
		"MESHD_LOG_LEVEL":        "error",
		"MESHD_MESH_TRUSTDOMAIN": "env.example",
	}, "config", "print", "-c", file, "--log-level", "debug")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var got struct {
		Log  struct{ Level, Format string }
		Mesh struct {
			TrustDomain string `yaml:"trustDomain"`
		}
		ShutdownTimeout string `yaml:"shutdownTimeout"`
		DataDir         string `yaml:"dataDir"`
	}
	if err := yaml.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	checks := map[string][2]string{
		"flag beats env and file": {got.Log.Level, "debug"},
		"file beats default":      {got.Log.Format, "json"},
		"env beats file":          {got.Mesh.TrustDomain, "env.example"},
		"file duration":           {got.ShutdownTimeout, "5s"},
		"default kept":            {got.DataDir, "./data"},
	}
	for name, c := range checks {
		if c[0] != c[1] {
			t.Errorf("%s: got %q, want %q", name, c[0], c[1])
		}
	}
}

func TestConfigFileErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"syntax", "admin:\n  address: [\n", "meshd.yaml:2: did not find expected node content"},
		{"unknown root key", "dataDir: x\nstorage: y\n", "meshd.yaml:2: storage: unknown key"},
		{"unknown nested key", "admin:\n  pprof: true\n  adress: x\n", "meshd.yaml:3: admin.adress: unknown key"},
		{"not a mapping", "- a\n", "config must be a mapping"},
		{"bad enum", "log:\n  level: loud\n", `meshd.yaml:2: log.level: "loud" is not one of debug, info, warn, error`},
		{"root validation", "dataDir: x\nstore:\n  snapshots:\n    keep: 0\n", "meshd.yaml:4: store.snapshots.keep: must be at least 1"},
		{"mesh validation", "mesh:\n  rateLimits:\n  - name: r\n    namespace: shop\n    tokenBucket: {maxTokens: 0, fillInterval: 1s}\n", "meshd.yaml:5: mesh.rateLimits[0].tokenBucket.maxTokens: must be at least 1"},
		{"unknown module", "modules:\n  pilotx:\n    enabled: true\n", "meshd.yaml:2: modules.pilotx: unknown key"},
		{"module validation", "modules:\n  xds:\n    debounce:\n      quiet: 2s\n      max: 1s\n", "meshd.yaml:3: modules.xds.debounce: need 0 <= quiet (2s) <= max (1s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "meshd.yaml")
			if err := os.WriteFile(file, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, errOut, code := run(t, nil, "config", "print", "-c", file)
			if code != 1 || !strings.Contains(errOut, tt.want) {
				t.Fatalf("exit %d, stderr %q; want 1 and %q", code, errOut, tt.want)
			}
			if strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
				t.Fatalf("want one line, got %q", errOut)
			}
		})
	}
}

func TestConfigPrintRedactsSecrets(t *testing.T) {
	// Every key marked `secret:"true"` in any registered module is set
	// through its environment variable; config print must show none of them.
	env := map[string]string{}
	for _, info := range core.DefaultRegistry().All() {
		if info.Config == nil {
			continue
		}
		for _, f := range config.Fields(info.Config(), "modules."+string(info.ID)) {
			if f.Secret && f.Type == "string" {
				env[config.EnvVar("modules."+string(info.ID)+".enabled")] = "true"
				env[f.EnvVar()] = "s3cr3t-" + f.Path
			}
		}
	}
	if len(env) == 0 {
		t.Skip("no registered module declares a secret string key")
	}
	out, errOut, code := run(t, env, "config", "print")
	if code != 0 {
		t.Fatalf("config print: %d %s", code, errOut)
	}
	if strings.Contains(out, "s3cr3t-") {
		t.Fatalf("config print leaks a secret:\n%s", out)
	}
	if !strings.Contains(out, "<redacted>") {
		t.Fatalf("config print shows no <redacted> value:\n%s", out)
	}
}
