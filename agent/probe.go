package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
)

// healthState is the probe's verdict on the workload.
type healthState struct {
	known   bool // false until the thresholds have decided once
	healthy bool
	message string
}

// prober checks the local workload and keeps a debounced verdict: it turns
// unhealthy after failureThreshold failures in a row and healthy after
// successThreshold successes.
type prober struct {
	cfg   ProbeConfig
	check func(ctx context.Context) error

	mu      sync.Mutex
	state   healthState
	changed chan struct{}
}

// newProber returns a prober; tlsConfig gives the client TLS config of
// probes with tls set (the workload's certificate, checked against the
// bundle).
func newProber(cfg ProbeConfig, tlsConfig func() *tls.Config) *prober {
	p := &prober{cfg: cfg, changed: make(chan struct{}, 1)}
	addr := net.JoinHostPort(cfg.Host, strconv.FormatUint(uint64(cfg.Port), 10))
	scheme := "http"
	if cfg.TLS {
		scheme = "https"
	}
	switch cfg.Type {
	case "tcp":
		p.check = func(ctx context.Context) error {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return err
			}
			return c.Close()
		}
	case "http":
		url := scheme + "://" + addr + cfg.Path
		p.check = func(ctx context.Context) error {
			client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			if cfg.TLS {
				client.Transport = &http.Transport{TLSClientConfig: tlsConfig(), DisableKeepAlives: true}
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode < 200 || resp.StatusCode >= 400 {
				return fmt.Errorf("GET %s: %s", url, resp.Status)
			}
			return nil
		}
	case "grpc":
		p.check = func(ctx context.Context) error {
			creds := insecure.NewCredentials()
			if cfg.TLS {
				creds = credentials.NewTLS(tlsConfig())
			}
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
			if err != nil {
				return err
			}
			defer conn.Close()
			resp, err := healthgrpc.NewHealthClient(conn).Check(ctx, &healthgrpc.HealthCheckRequest{Service: cfg.Service})
			if err != nil {
				return err
			}
			if resp.GetStatus() != healthgrpc.HealthCheckResponse_SERVING {
				return fmt.Errorf("grpc health of %q: %s", cfg.Service, resp.GetStatus())
			}
			return nil
		}
	default: // none: always healthy
		p.state = healthState{known: true, healthy: true}
	}
	return p
}

// get returns the current verdict.
func (p *prober) get() healthState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// run probes every interval until ctx ends.
func (p *prober) run(ctx context.Context) {
	if p.check == nil {
		return
	}
	var ok, fail int
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
		err := p.check(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			ok, fail = ok+1, 0
		} else {
			ok, fail = 0, fail+1
		}
		p.mu.Lock()
		prev := p.state
		switch {
		case err == nil && ok >= p.cfg.SuccessThreshold && (!prev.known || !prev.healthy):
			p.state = healthState{known: true, healthy: true}
		case err != nil && fail >= p.cfg.FailureThreshold && (!prev.known || prev.healthy):
			p.state = healthState{known: true, healthy: false, message: err.Error()}
		case err != nil && prev.known && !prev.healthy:
			p.state.message = err.Error()
		}
		now := p.state
		p.mu.Unlock()
		if now.known && (now.healthy != prev.healthy || !prev.known) {
			select {
			case p.changed <- struct{}{}:
			default:
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probeTLS is the client TLS config of probes with tls set: the workload's
// own certificate, and the server's checked against the trust bundle and
// the mesh's trust domain (workload certificates name no host).
func (a *Agent) probeTLS() *tls.Config {
	c := a.cur.Load()
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true}
	if c == nil {
		return cfg
	}
	cfg.Certificates = []tls.Certificate{*c.tlsCrt}
	prefix := "spiffe://" + a.cfg.Identity.TrustDomain + "/"
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := verifyChain(cs.PeerCertificates, c.pool, ""); err != nil {
			return err
		}
		for _, u := range cs.PeerCertificates[0].URIs {
			if strings.HasPrefix(u.String(), prefix) {
				return nil
			}
		}
		return fmt.Errorf("the workload's certificate names no identity in trust domain %s", a.cfg.Identity.TrustDomain)
	}
	return cfg
}
