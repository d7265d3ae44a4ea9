package citadel

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/citadel/ca"
	"github.com/meshd/meshd/xds/server"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	pb "istio.io/api/security/v1alpha1"
)

const testTD = "example.org"

// testXDS is the xDS engine (xds/server) with what the xds module adds
// around it for citadel: EnableTLS, and serving. It serves the TLS port
// (xDS and the CSR service) and a plaintext port (xDS only) on loopback.
type testXDS struct {
	*server.Server
	mu      sync.Mutex
	cfg     *tls.Config
	servers []*grpc.Server
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	plain   string // plaintext xDS address
}

func newTestXDS() *testXDS {
	return &testXDS{Server: server.New(server.Options{TrustDomain: testTD, DebounceQuiet: -1, Logger: slog.New(slog.DiscardHandler)})}
}

func (x *testXDS) EnableTLS(cfg *tls.Config) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.cfg = cfg.Clone()
	return nil
}

// serve starts both ports and the push loop and returns the TLS address.
func (x *testXDS) serve() (string, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	x.cancel = cancel
	var addrs []string
	for _, creds := range []credentials.TransportCredentials{credentials.NewTLS(x.cfg), nil} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		g := x.NewGRPCServer(creds)
		x.servers = append(x.servers, g)
		x.wg.Go(func() { g.Serve(lis) })
		addrs = append(addrs, lis.Addr().String())
	}
	x.plain = addrs[1]
	x.wg.Go(func() { x.Run(ctx) })
	return addrs[0], nil
}

func (x *testXDS) stop() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.cancel == nil {
		return
	}
	x.cancel()
	x.Stop()
	for _, g := range x.servers {
		g.Stop()
	}
	x.wg.Wait()
	x.cancel = nil
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// env is one CA with its store, fake xDS server and metrics.
type env struct {
	t    testing.TB
	dir  string
	st   *store.Store
	m    *Module
	x    *testXDS
	addr string
	reg  *prometheus.Registry
	logs *syncBuffer
	cfg  *Config
	stop context.CancelFunc
	done chan struct{}
}

func testConfig() *Config {
	c := Default()
	c.RateLimit.PerCallerQPS = 0
	c.Rotation.CheckInterval = 20 * time.Millisecond
	return c
}

// newEnv provisions a CA in a fresh data dir (or dir, when not empty) and
// serves it; cleanup stops it.
func newEnv(t testing.TB, dir string, mutate func(*Config)) *env {
	t.Helper()
	e, err := startEnv(t, dir, mutate)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func startEnv(t testing.TB, dir string, mutate func(*Config)) (*env, error) {
	if dir == "" {
		dir = t.TempDir()
	}
	cfg := testConfig()
	if mutate != nil {
		mutate(cfg)
	}
	st, err := store.Open(dir, store.Options{})
	if err != nil {
		return nil, err
	}
	e := &env{t: t, dir: dir, st: st, m: new(Module), x: newTestXDS(), reg: prometheus.NewRegistry(), logs: &syncBuffer{}, cfg: cfg}
	err = e.m.setup(deps{
		cfg: cfg, log: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		ns: st.Module(string(ID)), metrics: e.reg, trustDomain: testTD, dataDir: dir, now: time.Now,
	})
	if err == nil {
		err = e.m.attach(e.x)
	}
	if err != nil {
		st.Close()
		return nil, err
	}
	if e.addr, err = e.x.serve(); err != nil {
		st.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.stop, e.done = cancel, make(chan struct{})
	go func() { defer close(e.done); e.m.Run(ctx) }()
	t.Cleanup(e.close)
	return e, nil
}

func (e *env) close() {
	if e.stop == nil {
		return
	}
	e.stop()
	<-e.done
	e.x.stop()
	e.st.Close()
	e.stop = nil
}

// counter reads a metric (with label value lv for vectors).
func (e *env) counter(name string, lv ...string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			if len(lv) > 0 && !hasLabelValue(m, lv[0]) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	return 0
}

func hasLabelValue(m *dto.Metric, v string) bool {
	for _, l := range m.Label {
		if l.GetValue() == v {
			return true
		}
	}
	return false
}

func (e *env) ledgerSize() int {
	n := 0
	e.m.ns.View(func(b *bolt.Bucket) error {
		n = b.Bucket(bucketCerts).Stats().KeyN
		return nil
	})
	return n
}

// workload is a client: a key, and the certificate chain it holds.
type workload struct {
	id    string
	key   *ecdsa.PrivateKey
	chain []string // last response: leaf, intermediates, bundle
}

func newWorkload(t testing.TB, ns, sa string) *workload {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &workload{id: ca.SPIFFEID(testTD, ns, sa), key: k}
}

// csr makes a PEM CSR for the given URIs (the workload's own by default).
func (w *workload) csr(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) string {
	t.Helper()
	if key == nil {
		key = w.key
	}
	if tmpl == nil {
		u, _ := url.Parse(w.id)
		tmpl = &x509.CertificateRequest{URIs: []*url.URL{u}}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// tlsCert returns the workload's current certificate for mTLS.
func (w *workload) tlsCert(t testing.TB) *tls.Certificate {
	t.Helper()
	c := &tls.Certificate{PrivateKey: w.key}
	for _, p := range w.chain[:len(w.chain)-1] {
		b, _ := pem.Decode([]byte(p))
		c.Certificate = append(c.Certificate, b.Bytes)
	}
	return c
}

// bundle is the trust bundle the workload got with its last certificate.
func (w *workload) bundle(t testing.TB) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(w.chain[len(w.chain)-1])) {
		t.Fatal("no bundle in the response")
	}
	return pool
}

func (w *workload) leaf(t testing.TB) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(w.chain[0]))
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// client dials the CA verifying it against roots, presenting cert if given.
func (e *env) client(t testing.TB, roots *x509.CertPool, cert *tls.Certificate) (pb.IstioCertificateServiceClient, func()) {
	t.Helper()
	if roots == nil {
		roots = x509.NewCertPool()
		pemBytes, _ := e.m.TrustBundle()
		roots.AppendCertsFromPEM(pemBytes)
	}
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	return pb.NewIstioCertificateServiceClient(conn), func() { conn.Close() }
}

// request sends a CSR with an optional bearer token.
func request(ctx context.Context, c pb.IstioCertificateServiceClient, csr, token string, ttl time.Duration) (*pb.IstioCertificateResponse, error) {
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return c.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: csr, ValidityDuration: int64(ttl / time.Second)})
}

// token creates a join token through the module's Operations.
func (e *env) token(t testing.TB, identity string, ttl time.Duration, uses int) string {
	t.Helper()
	nt, err := e.m.Operations().CreateToken(context.Background(), TokenRequest{Identity: identity, TTL: ttl, Uses: uses})
	if err != nil {
		t.Fatal(err)
	}
	return nt.Token
}

// join gets the workload its first certificate with a fresh join token.
func (e *env) join(t testing.TB, w *workload) {
	t.Helper()
	c, closeFn := e.client(t, nil, nil)
	defer closeFn()
	resp, err := request(context.Background(), c, w.csr(t, nil, nil), e.token(t, w.id, time.Hour, 1), 0)
	if err != nil {
		t.Fatal(err)
	}
	w.chain = resp.CertChain
}

// renew renews the workload's certificate over mTLS with its current one,
// verifying the CA against the bundle the workload holds.
func (e *env) renew(t testing.TB, w *workload, ttl time.Duration) error {
	c, closeFn := e.client(t, w.bundle(t), w.tlsCert(t))
	defer closeFn()
	resp, err := request(context.Background(), c, w.csr(t, nil, nil), "", ttl)
	if err != nil {
		return err
	}
	w.chain = resp.CertChain
	return nil
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
