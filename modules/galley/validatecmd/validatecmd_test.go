package validatecmd_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/validatecmd"
)

var update = flag.Bool("update", os.Getenv("UPDATE_GOLDEN") == "1", "rewrite golden files")

// run executes `validate args...` and returns stdout and the exit code.
func run(t *testing.T, stdin string, args ...string) (string, int) {
	t.Helper()
	cmd := validatecmd.NewValidateCommand()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err := cmd.Execute()
	require.Empty(t, errOut.String(), "the command itself prints nothing to stderr")
	if err == nil {
		return out.String(), 0
	}
	var ee *validatecmd.ExitError
	require.True(t, errors.As(err, &ee), "error %v is not an ExitError", err)
	return out.String(), ee.ExitCode()
}

// golden compares got with testdata/golden/name, rewriting it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "missing golden file; run go test -update")
	require.Equal(t, string(want), got, "output differs from %s; run go test -update if the change is intended", path)
}

func TestGolden(t *testing.T) {
	for _, c := range []struct {
		name   string
		args   []string
		golden string
		code   int
	}{
		{"clean text", []string{"testdata/clean"}, "clean.txt", validatecmd.ExitClean},
		{"clean json", []string{"-o", "json", "testdata/clean"}, "clean.json", validatecmd.ExitClean},
		{"clean strict", []string{"--strict", "testdata/clean"}, "clean.txt", validatecmd.ExitClean},
		{"warnings text", []string{"testdata/warnings"}, "warnings.txt", validatecmd.ExitClean},
		{"warnings strict", []string{"--strict", "testdata/warnings/routes.yaml"}, "warnings.txt", validatecmd.ExitWarnings},
		{"warnings json strict", []string{"--strict", "-o", "json", "testdata/warnings"}, "warnings.json", validatecmd.ExitWarnings},
		{"broken text", []string{"testdata/broken"}, "broken.txt", validatecmd.ExitErrors},
		{"broken json", []string{"--output=json", "testdata/broken"}, "broken.json", validatecmd.ExitErrors},
		{"missing path", []string{"testdata/clean", "testdata/nope.yaml"}, "missing.txt", validatecmd.ExitErrors},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, code := run(t, "", c.args...)
			require.Equal(t, c.code, code, out)
			golden(t, c.golden, out)
		})
	}
}

func TestJSONShape(t *testing.T) {
	out, code := run(t, "", "-o", "json", "testdata/broken")
	require.Equal(t, validatecmd.ExitErrors, code)
	var rep struct {
		Files    []string      `json:"files"`
		Objects  int           `json:"objects"`
		Summary  api.Counts    `json:"summary"`
		Findings []api.Finding `json:"findings"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	require.Len(t, rep.Files, 2)
	require.Equal(t, api.CountFindings(rep.Findings), rep.Summary)
	require.Positive(t, rep.Summary.Errors)
	for _, f := range rep.Findings {
		require.NotEmpty(t, f.Code)
		require.NotZero(t, f.Severity)
		require.NotZero(t, f.Line)
	}
}

func TestTextIsSortedByFileAndLine(t *testing.T) {
	out, _ := run(t, "", "testdata/broken")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Greater(t, len(lines), 3)
	prevFile, prevLine := "", 0
	for _, l := range lines[:len(lines)-1] {
		file, rest, ok := strings.Cut(l, ":")
		require.True(t, ok, l)
		num, _, _ := strings.Cut(rest, ":")
		n := 0
		for _, c := range num {
			n = n*10 + int(c-'0')
		}
		if file == prevFile {
			require.GreaterOrEqual(t, n, prevLine, l)
		} else {
			require.Greater(t, file, prevFile, l)
		}
		prevFile, prevLine = file, n
	}
}

func TestStdin(t *testing.T) {
	src, err := os.ReadFile("testdata/warnings/routes.yaml")
	require.NoError(t, err)
	out, code := run(t, string(src), "--strict", "-")
	require.Equal(t, validatecmd.ExitWarnings, code)
	require.Contains(t, out, "<stdin>:9: WARNING GAL2010 VirtualService/shop/checkout")
}

func TestFlags(t *testing.T) {
	_, code := run(t, "", "-o", "yaml", "testdata/clean")
	require.Equal(t, validatecmd.ExitErrors, code)
	_, code = run(t, "", "--default-mtls-mode", "sometimes", "testdata/clean")
	require.Equal(t, validatecmd.ExitErrors, code)

	// A mesh-wide STRICT default turns the payments DestinationRule into a
	// conflict even without the PeerAuthentication.
	out, _ := run(t, "", "--default-mtls-mode", "strict", "testdata/broken/b-routes.yaml")
	require.NotContains(t, out, "GAL3011")
	out, _ = run(t, "", "--default-mtls-mode", "STRICT", "testdata/broken/a-policies.yaml")
	require.Contains(t, out, "GAL3011")

	// The default namespace applies to objects without one.
	out, _ = run(t, "", "-n", "team-a", "--strict", "testdata/warnings")
	require.Contains(t, out, "VirtualService/shop/checkout")

	cmd := validatecmd.NewValidateCommand()
	cmd.SetArgs(nil)
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	require.Error(t, cmd.Execute(), "at least one path is required")
}

// TestMeshFromConfig: with a MeshLoader (the CLI passes one that reads -c
// meshd.yaml), the config's mesh section sets the defaults, and flags
// still win.
func TestMeshFromConfig(t *testing.T) {
	const input = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: mesh-root}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: shop}
spec:
  host: r.shop.svc.cluster.local
  trafficPolicy: {tls: {mode: DISABLE}}
`
	var gotConfig string
	load := func(cmd *cobra.Command) (core.MeshConfig, error) {
		gotConfig, _ = cmd.Flags().GetString("config")
		m := core.DefaultMeshConfig()
		m.RootNamespace = "mesh-root"
		return m, nil
	}
	exec := func(args ...string) (string, int) {
		cmd := validatecmd.NewValidateCommandWithMesh(load)
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetIn(strings.NewReader(input))
		cmd.SetArgs(args)
		var ee *validatecmd.ExitError
		if err := cmd.Execute(); errors.As(err, &ee) {
			return out.String(), ee.ExitCode()
		}
		return out.String(), 0
	}
	out, code := exec("-c", "meshd.yaml", "-")
	require.Equal(t, validatecmd.ExitErrors, code, out)
	require.Contains(t, out, "GAL3011")
	require.Equal(t, "meshd.yaml", gotConfig)

	out, code = exec("--root-namespace", "istio-system", "-")
	require.Equal(t, validatecmd.ExitClean, code, out)

	help := validatecmd.NewValidateCommandWithMesh(load).Flags().Lookup("root-namespace").Usage
	require.Contains(t, help, "default: the meshd config's mesh section, else istio-system")
}
