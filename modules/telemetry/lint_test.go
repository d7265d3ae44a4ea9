package telemetry_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	xdsapi "github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/xdstest"
)

// istioNames are the lint complaints about names meshd keeps because they
// are Istio's and dashboards query them as they are; everything meshd
// names itself must lint clean. Each entry is a metric and a phrase of
// the complaint it may draw.
var istioNames = map[string]string{
	// Istio's request duration is in milliseconds.
	"istio_request_duration_milliseconds": `base unit "seconds"`,
	// Istio's control-plane counters have no _total suffix.
	"pilot_xds_pushes":                            "_total",
	"pilot_total_xds_rejects":                     "_total",
	"citadel_server_csr_count":                    "_count",
	"citadel_server_success_cert_issuance_count":  "_count",
	"citadel_server_csr_parsing_err_count":        "_count",
	"citadel_server_authentication_failure_count": "_count",
}

// allowed reports whether a lint complaint is about an Istio name.
func allowed(metric, text string) bool {
	phrase, ok := istioNames[metric]
	return ok && strings.Contains(text, phrase)
}

// busy brings a meshd (xds and telemetry) into the state where most of its
// metrics have series: xDS pushes, an ACK and a NACK, access logs of every
// kind, an overflowing metric, dropped messages and a rejected stream.
func busy(t *testing.T) *env {
	t.Helper()
	e := start(t, map[string]any{
		"metrics":  map[string]any{"seriesLimits": map[string]any{"istio_request_bytes": 2}},
		"receiver": map[string]any{"maxMessageBytes": 8192, "maxStreamsPerConnection": 4},
	})
	bookinfo(t, e)

	cc := xdstest.Dial(t, e.xdsAddr)
	x := xdstest.NewSotw(t, cc, xdstest.Node("productpage-v1-1", "default"))
	x.Subscribe(xdsapi.ClusterType)
	r := x.Recv(5 * time.Second)
	x.Nack(r, "", "cluster rejected for the test")
	x.Ack(r)

	n := node(t, "sidecar", reviewsIP, "reviews-v1-545d", "reviews-v1", "default", "bookinfo-reviews")
	s := openALS(t, cc, n, "meshd/http/inbound")
	var batch []*datav3.HTTPAccessLogEntry
	for i := range 50 {
		batch = append(batch, req{cluster: "inbound|80||", authority: fmt.Sprintf("svc-%d", i), code: 200, ms: int64(i)}.entry())
	}
	s.http(batch...)
	s.http(req{cluster: "inbound|80||", authority: strings.Repeat("x", 9000), code: 200}.entry())
	must(t, s.close())
	return e
}

// TestMetricsLint lints a scrape of a busy meshd with client_golang's
// promlint, the linter inside `promtool check metrics`.
func TestMetricsLint(t *testing.T) {
	e := busy(t)
	_, body := e.get(t, "/metrics")
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if !allowed(p.Metric, p.Text) {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
	for _, name := range []string{"pilot_xds_pushes", "istio_requests_total", "istio_tcp_connections_opened_total",
		"meshd_telemetry_series_overflow_total", "meshd_telemetry_als_messages_dropped_total", "meshd_bus_events_published_total"} {
		if !strings.Contains(body, "\n"+name+"{") {
			t.Errorf("the scrape has no %s series; the busy meshd is not busy enough to lint it", name)
		}
	}
}

// TestPromtoolCheckMetrics runs Debian's `promtool check metrics` on a
// scrape of a busy meshd. promtool exits 3 when it has complaints; the
// test passes when every complaint is about one of Istio's names.
func TestPromtoolCheckMetrics(t *testing.T) {
	bin, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("MESHD_CI") == "1" {
			t.Fatal("promtool is not installed; .ci/run must install it (apt-get install -y prometheus)")
		}
		t.Skip("promtool is not installed (Debian: apt-get install prometheus); MESHD_CI=1 makes this a failure")
	}
	e := busy(t)
	_, body := e.get(t, "/metrics")
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && exit.ExitCode() == 3: // lint complaints, judged below
	default:
		t.Fatalf("promtool check metrics: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if line == "" {
			continue
		}
		metric, text, _ := strings.Cut(line, " ")
		if !allowed(metric, text) {
			t.Errorf("promtool: %s", line)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", body)
	}
}
