package agent

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
)

func portOf(t *testing.T, addr string) uint32 {
	t.Helper()
	_, p, _ := net.SplitHostPort(addr)
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(n)
}

// runProbe runs a prober and returns it with a stop function.
func runProbe(t *testing.T, cfg ProbeConfig) (*prober, func()) {
	t.Helper()
	cfg.Host = "127.0.0.1"
	cfg.Interval, cfg.Timeout = 20*time.Millisecond, time.Second
	cfg.FailureThreshold, cfg.SuccessThreshold = 2, 1
	p := newProber(cfg, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.run(ctx) }()
	return p, func() { cancel(); <-done }
}

func waitHealth(t *testing.T, p *prober, healthy bool) {
	t.Helper()
	eventually(t, 5*time.Second, "probe verdict", func() bool { s := p.get(); return s.known && s.healthy == healthy })
}

func TestProbes(t *testing.T) {
	t.Run("tcp", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		p, stop := runProbe(t, ProbeConfig{Type: "tcp", Port: portOf(t, ln.Addr().String())})
		defer stop()
		waitHealth(t, p, true)
		ln.Close()
		waitHealth(t, p, false)
		if p.get().message == "" {
			t.Error("unhealthy without a reason")
		}
	})
	t.Run("http", func(t *testing.T) {
		var code atomic.Int32
		code.Store(200)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/healthz" {
				w.WriteHeader(404)
				return
			}
			w.WriteHeader(int(code.Load()))
		}))
		defer srv.Close()
		p, stop := runProbe(t, ProbeConfig{Type: "http", Port: portOf(t, srv.Listener.Addr().String()), Path: "/healthz"})
		defer stop()
		waitHealth(t, p, true)
		code.Store(503)
		waitHealth(t, p, false)
		code.Store(302)
		waitHealth(t, p, true)
	})
	t.Run("grpc", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer()
		hs := health.NewServer()
		healthgrpc.RegisterHealthServer(g, hs)
		go g.Serve(ln)
		defer g.Stop()
		p, stop := runProbe(t, ProbeConfig{Type: "grpc", Port: portOf(t, ln.Addr().String())})
		defer stop()
		waitHealth(t, p, true)
		hs.SetServingStatus("", healthgrpc.HealthCheckResponse_NOT_SERVING)
		waitHealth(t, p, false)
	})
	t.Run("none", func(t *testing.T) {
		p := newProber(ProbeConfig{Type: "none"}, nil)
		if s := p.get(); !s.known || !s.healthy {
			t.Fatalf("%+v", s)
		}
	})
}
