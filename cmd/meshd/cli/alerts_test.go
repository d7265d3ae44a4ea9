package cli

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/store"
)

const alertRules = "../../../deploy/prometheus/meshd-alerts.yaml"

// TestAlertRules keeps deploy/prometheus honest: promtool accepts the rules
// and passes their unit tests (each alert fires on the series that should
// raise it and not on healthy ones), and every metric they query is one a
// meshd with the default modules registers, so a renamed metric cannot
// leave an alert silently watching nothing.
func TestAlertRules(t *testing.T) {
	t.Run("every queried metric exists", func(t *testing.T) {
		known := registeredMetrics(t)
		for _, name := range queriedMetrics(t) {
			if !known[name] {
				t.Errorf("%s queries %s, which meshd does not register", alertRules, name)
			}
		}
	})
	t.Run("promtool", func(t *testing.T) {
		bin, err := exec.LookPath("promtool")
		if err != nil {
			if os.Getenv("MESHD_CI") == "1" {
				t.Fatal("promtool is not installed; .ci/run must install it (apt-get install -y prometheus)")
			}
			t.Skip("promtool is not installed (Debian: apt-get install prometheus); MESHD_CI=1 makes this a failure")
		}
		for _, args := range [][]string{
			{"check", "rules", filepath.Base(alertRules)},
			{"test", "rules", "meshd-alerts_test.yaml"},
		} {
			cmd := exec.Command(bin, args...)
			cmd.Dir = filepath.Dir(alertRules)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				t.Errorf("promtool %v: %v\n%s", args, err, out.String())
			}
		}
	})
}

// queriedMetrics returns the metric names the rules' expressions use: the
// identifiers left once label matchers and by (...) lists are taken out,
// other than function calls and PromQL's keywords. Histogram series are
// reduced to their family.
func queriedMetrics(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(alertRules)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Rules []struct {
				Expr string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	matchers := regexp.MustCompile(`\{[^}]*\}`)
	grouping := regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	ident := regexp.MustCompile(`\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?`)
	keywords := map[string]bool{"or": true, "and": true, "unless": true, "bool": true, "offset": true, "up": true} // up is Prometheus's own
	seen := map[string]bool{}
	var out []string
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			expr := grouping.ReplaceAllString(matchers.ReplaceAllString(r.Expr, ""), "")
			for _, m := range ident.FindAllStringSubmatch(expr, -1) {
				name := strings.TrimSuffix(m[1], "_bucket")
				if m[2] != "" || keywords[name] || seen[name] {
					continue // a function call, a keyword, or seen
				}
				seen[name] = true
				out = append(out, name)
			}
		}
	}
	if len(out) < 12 {
		t.Fatalf("found only %v in the rules; the parser is off", out)
	}
	return out
}

// registeredMetrics provisions a host with the default modules (nothing
// runs; xds listens on free ports) and collects the names of every metric family
// described to its registry, series or not.
func registeredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	cfg := core.DefaultConfig()
	cfg.DataDir = t.TempDir()
	// Provisioning xds binds its listeners: any free port, never 15010.
	cfg.Modules = map[string]map[string]any{"xds": {"address": "127.0.0.1:0", "tlsAddress": "127.0.0.1:0"}}
	st, err := store.Open(cfg.DataDir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg := prometheus.NewRegistry()
	host, err := core.NewHost(core.HostOptions{Config: cfg, Store: st, Metrics: reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := host.Provision(); err != nil {
		t.Fatal(err)
	}
	defer host.Cleanup()
	ch := make(chan *prometheus.Desc)
	go func() { reg.Describe(ch); close(ch) }()
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	known := map[string]bool{}
	for d := range ch {
		if m := fq.FindStringSubmatch(d.String()); m != nil {
			known[m[1]] = true
		}
	}
	return known
}
