package agent

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/modules/pilot/autoregister/healthpb"
)

// fakeHealth answers health reports with the responses the test queues.
type fakeHealth struct {
	mu      sync.Mutex
	answers []*healthpb.HealthReportResponse
	err     error
	reports []*healthpb.HealthReport
}

func (f *fakeHealth) Report(_ context.Context, in *healthpb.HealthReport, _ ...grpc.CallOption) (*healthpb.HealthReportResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports = append(f.reports, in)
	if f.err != nil {
		return nil, f.err
	}
	if len(f.answers) == 0 {
		return &healthpb.HealthReportResponse{Registered: true}, nil
	}
	r := f.answers[0]
	if len(f.answers) > 1 {
		f.answers = f.answers[1:]
	}
	return r, nil
}

func (f *fakeHealth) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reports)
}

func reportingAgent(t *testing.T) (*Agent, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	a := bootstrapAgent(t, func(c *Config) {
		c.Workload.WorkloadGroup = "billing"
		c.Workload.Probe = ProbeConfig{Type: "none", ReportInterval: 20 * time.Millisecond}
	})
	a.log = slog.New(slog.NewTextHandler(logs, nil))
	return a, logs
}

// TestReportHealthReconnects: told twice that meshd has not seen the
// stream, the reporter restarts the session so meshd sees it again; a
// refusal is logged once and does not restart anything.
func TestReportHealthReconnects(t *testing.T) {
	a, logs := reportingAgent(t)
	refused := &healthpb.HealthReportResponse{Refused: true, Reason: "label app=x conflicts"}
	missing := &healthpb.HealthReportResponse{Reason: "meshd has not seen this workload's xDS stream"}
	f := &fakeHealth{answers: []*healthpb.HealthReportResponse{refused, refused, refused, missing, missing}}
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.reportHealth(ctx, cancel, f) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("reporter did not restart the session")
	}
	if cause := context.Cause(ctx); cause == nil || f.count() != 5 {
		t.Fatalf("cause %v after %d reports", cause, f.count())
	}
	if n := strings.Count(logs.String(), "meshd refuses to register this workload"); n != 1 {
		t.Errorf("refusal logged %d times:\n%s", n, logs.String())
	}
	if r := f.reports[0]; r.GetWorkloadName() != "billing-1" || !r.GetHealthy() {
		t.Errorf("report %v", r)
	}
}

// TestReportHealthWithoutAutoregister: a meshd without the autoregister
// module is said once, and the reporter stops.
func TestReportHealthWithoutAutoregister(t *testing.T) {
	a, logs := reportingAgent(t)
	f := &fakeHealth{err: status.Error(codes.Unimplemented, "unknown service")}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(errors.New("done"))
	done := make(chan struct{})
	go func() { defer close(done); a.reportHealth(ctx, cancel, f) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("reporter kept going")
	}
	if f.count() != 1 || !logs.Contains("autoregister module is off") {
		t.Fatalf("%d reports\n%s", f.count(), logs.String())
	}
}
