package citadel

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestRefusals(t *testing.T) {
	e := newEnv(t, "", nil)
	ctx := context.Background()
	vm := newWorkload(t, "vm", "a")
	e.join(t, vm) // vm holds a valid certificate for renewal cases

	rsa1k, _ := rsa.GenerateKey(rand.Reader, 1024)
	other := newWorkload(t, "vm", "b")
	uri := func(s string) *url.URL { u, _ := url.Parse(s); return u }

	type req struct {
		csr   string
		token string
		cert  *tls.Certificate
	}
	tests := []struct {
		name   string
		build  func(t *testing.T) req
		code   codes.Code
		reason string
	}{
		{"wrong identity with token", func(t *testing.T) req {
			return req{csr: other.csr(t, nil, nil), token: e.token(t, vm.id, time.Hour, 1)}
		}, codes.InvalidArgument, "identity_mismatch"},
		{"wrong identity with certificate", func(t *testing.T) req {
			return req{csr: other.csr(t, nil, nil), cert: vm.tlsCert(t)}
		}, codes.InvalidArgument, "identity_mismatch"},
		{"reused single-use token", func(t *testing.T) req {
			tok := e.token(t, vm.id, time.Hour, 1)
			c, closeFn := e.client(t, nil, nil)
			defer closeFn()
			if _, err := request(ctx, c, vm.csr(t, nil, nil), tok, 0); err != nil {
				t.Fatalf("first use: %v", err)
			}
			return req{csr: vm.csr(t, nil, nil), token: tok}
		}, codes.Unauthenticated, reasonAuthentication},
		{"expired token", func(t *testing.T) req {
			var nt *NewToken
			err := e.m.ns.Update(func(b *bolt.Bucket) (err error) {
				nt, err = createToken(b, vm.id, TokenRequest{TTL: time.Hour, Uses: 1}, time.Now().Add(-2*time.Hour))
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			return req{csr: vm.csr(t, nil, nil), token: nt.Token}
		}, codes.Unauthenticated, reasonAuthentication},
		{"revoked token", func(t *testing.T) req {
			nt, err := e.m.Operations().CreateToken(ctx, TokenRequest{Identity: vm.id, TTL: time.Hour, Uses: 5})
			if err != nil {
				t.Fatal(err)
			}
			if err := e.m.Operations().RevokeToken(ctx, nt.ID); err != nil {
				t.Fatal(err)
			}
			return req{csr: vm.csr(t, nil, nil), token: nt.Token}
		}, codes.Unauthenticated, reasonAuthentication},
		{"token with wrong secret", func(t *testing.T) req {
			tok := e.token(t, vm.id, time.Hour, 1)
			return req{csr: vm.csr(t, nil, nil), token: tok[:17] + strings.Repeat("A", len(tok)-17)}
		}, codes.Unauthenticated, reasonAuthentication},
		{"no credential", func(t *testing.T) req {
			return req{csr: vm.csr(t, nil, nil)}
		}, codes.Unauthenticated, reasonAuthentication},
		{"extra SAN", func(t *testing.T) req {
			return req{csr: vm.csr(t, nil, &x509.CertificateRequest{URIs: []*url.URL{uri(vm.id)}, DNSNames: []string{"bank.example.org"}}), cert: vm.tlsCert(t)}
		}, codes.InvalidArgument, "extra_san"},
		{"RSA 1024", func(t *testing.T) req {
			return req{csr: vm.csr(t, rsa1k, nil), cert: vm.tlsCert(t)}
		}, codes.InvalidArgument, "key_type"},
		{"bad signature", func(t *testing.T) req {
			b, _ := pem.Decode([]byte(vm.csr(t, nil, nil)))
			b.Bytes[len(b.Bytes)-3] ^= 0x5a
			return req{csr: string(pem.EncodeToMemory(b)), cert: vm.tlsCert(t)}
		}, codes.InvalidArgument, "bad_signature"},
		{"garbage", func(t *testing.T) req {
			return req{csr: "this is not a certificate request", cert: vm.tlsCert(t)}
		}, codes.InvalidArgument, "malformed"},
		{"garbage bytes in PEM", func(t *testing.T) req {
			junk := make([]byte, 300)
			rand.Read(junk)
			return req{csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: junk})), cert: vm.tlsCert(t)}
		}, codes.InvalidArgument, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.build(t)
			issued, ledger := e.counter("citadel_server_success_cert_issuance_count"), e.ledgerSize()
			refused := e.counter("meshd_citadel_csr_refused_total", tt.reason)
			authn, parse := e.counter("citadel_server_authentication_failure_count"), e.counter("citadel_server_csr_parsing_err_count")

			c, closeFn := e.client(t, nil, r.cert)
			defer closeFn()
			resp, err := request(ctx, c, r.csr, r.token, 0)
			if err == nil {
				t.Fatalf("issued %d certificates, want a refusal", len(resp.CertChain))
			}
			s, _ := status.FromError(err)
			if s.Code() != tt.code {
				t.Fatalf("code %v (%v), want %v", s.Code(), err, tt.code)
			}
			if msg := s.Message(); strings.Contains(msg, "identity") || strings.Contains(msg, "token") || strings.Contains(msg, "key") || strings.Contains(msg, "SAN") {
				t.Errorf("error %q is not opaque", msg)
			}
			if got := e.counter("meshd_citadel_csr_refused_total", tt.reason); got != refused+1 {
				t.Errorf("refused{reason=%s} = %v, want %v", tt.reason, got, refused+1)
			}
			wantAuthn, wantParse := authn, parse
			switch tt.reason {
			case reasonAuthentication:
				wantAuthn++
			case "malformed", "bad_signature":
				wantParse++
			}
			if got := e.counter("citadel_server_authentication_failure_count"); got != wantAuthn {
				t.Errorf("authentication failures %v, want %v", got, wantAuthn)
			}
			if got := e.counter("citadel_server_csr_parsing_err_count"); got != wantParse {
				t.Errorf("parsing errors %v, want %v", got, wantParse)
			}
			if e.counter("citadel_server_success_cert_issuance_count") != issued || e.ledgerSize() != ledger {
				t.Error("something was issued")
			}
			if !strings.Contains(e.logs.String(), "reason="+tt.reason) {
				t.Errorf("no log line with reason=%s", tt.reason)
			}
		})
	}
}

// TestRefusedCSRKeepsToken: a CSR refused for its content does not spend
// the join token that came with it.
func TestRefusedCSRKeepsToken(t *testing.T) {
	e := newEnv(t, "", nil)
	w, other := newWorkload(t, "vm", "a"), newWorkload(t, "vm", "b")
	tok := e.token(t, w.id, time.Hour, 1)
	c, closeFn := e.client(t, nil, nil)
	defer closeFn()
	if _, err := request(context.Background(), c, other.csr(t, nil, nil), tok, 0); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("wrong-identity CSR: %v", err)
	}
	if _, err := request(context.Background(), c, w.csr(t, nil, nil), tok, 0); err != nil {
		t.Fatalf("token spent by a refused CSR: %v", err)
	}
}

// TestTokenUsesUnderConcurrency: N uses buy exactly N certificates however
// many callers race for them.
func TestTokenUsesUnderConcurrency(t *testing.T) {
	e := newEnv(t, "", nil)
	w := newWorkload(t, "vm", "a")
	tok := e.token(t, w.id, time.Hour, 3)
	c, closeFn := e.client(t, nil, nil)
	defer closeFn()
	csr := w.csr(t, nil, nil)
	var ok atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := request(context.Background(), c, csr, tok, 0); err == nil {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 3 {
		t.Fatalf("%d certificates for a 3-use token", ok.Load())
	}
	infos, _ := e.m.Operations().ListTokens(context.Background(), true)
	if len(infos) != 1 || infos[0].Used != 3 || infos[0].State != "used-up" {
		t.Fatalf("token after use: %+v", infos)
	}
}

func TestForeignClientCertificateRejectedInHandshake(t *testing.T) {
	e := newEnv(t, "", nil)
	stranger := newEnv(t, "", nil)
	w := newWorkload(t, "vm", "a")
	stranger.join(t, w)
	c, closeFn := e.client(t, nil, w.tlsCert(t))
	defer closeFn()
	// The client either sends the certificate and the handshake fails, or,
	// seeing that the server does not ask for its issuer, sends none and
	// the request is unauthenticated.
	_, err := request(context.Background(), c, w.csr(t, nil, nil), "", 0)
	if code := status.Code(err); code != codes.Unavailable && code != codes.Unauthenticated {
		t.Fatalf("certificate from another CA: %v", err)
	}
	if e.counter("citadel_server_success_cert_issuance_count") != 0 {
		t.Fatal("issued to a foreign certificate")
	}
}

func TestRateLimitPerCaller(t *testing.T) {
	e := newEnv(t, "", func(c *Config) { c.RateLimit = RateLimitConfig{PerCallerQPS: 0.001, Burst: 2} })
	a, b := newWorkload(t, "vm", "a"), newWorkload(t, "vm", "b")
	e.join(t, a) // one token each of a's burst of 2
	e.join(t, b)
	if err := e.renew(t, a, 0); err != nil {
		t.Fatalf("second request within the burst: %v", err)
	}
	err := e.renew(t, a, 0)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third request: %v, want ResourceExhausted", err)
	}
	if e.counter("meshd_citadel_csr_refused_total", reasonRateLimited) != 1 {
		t.Error("rate limit refusal not counted")
	}
	if err := e.renew(t, b, 0); err != nil {
		t.Fatalf("another caller was limited too: %v", err)
	}
}

func TestLimiter(t *testing.T) {
	l := newLimiter(10, 2)
	now := time.Now()
	for i, want := range []bool{true, true, false} {
		if got := l.allow("a", now); got != want {
			t.Fatalf("request %d: %v, want %v", i, got, want)
		}
	}
	if !l.allow("a", now.Add(100*time.Millisecond)) {
		t.Fatal("no token after refill")
	}
	for i := range 3000 {
		l.allow(string(rune(i)), now.Add(time.Hour+time.Duration(i)*time.Second))
	}
	if len(l.buckets) > 2100 {
		t.Fatalf("%d idle buckets kept", len(l.buckets))
	}
	if newLimiter(0, 0).allow("x", now) != true {
		t.Fatal("disabled limiter refused")
	}
	for _, tt := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 5555}, "id@10.0.0.1"},
		{&net.TCPAddr{IP: net.ParseIP("fd00::1"), Port: 5555}, "id@fd00::1"},
		{nil, "id"},
	} {
		if got := limitKey("id", tt.addr); got != tt.want {
			t.Errorf("limitKey(%v) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}

func TestTTL(t *testing.T) {
	s := &csrServer{leaf: LeafConfig{DefaultTTL: 24 * time.Hour, MaxTTL: 48 * time.Hour}}
	idle := &trustSnapshot{}
	staged := &trustSnapshot{stagedTTL: time.Hour}
	for _, tt := range []struct {
		req    int64
		t      *trustSnapshot
		lo, hi time.Duration
	}{
		{0, idle, 24 * time.Hour, 24 * time.Hour},
		{3600, idle, time.Hour, time.Hour},
		{1 << 40, idle, 48 * time.Hour, 48 * time.Hour},
		{0, staged, 30 * time.Minute, time.Hour},
		{60, staged, time.Minute, time.Minute},
	} {
		if got := s.ttl(tt.req, tt.t); got < tt.lo || got > tt.hi {
			t.Errorf("ttl(%d, staged=%v) = %v, want in [%v, %v]", tt.req, tt.t.stagedTTL, got, tt.lo, tt.hi)
		}
	}
}
