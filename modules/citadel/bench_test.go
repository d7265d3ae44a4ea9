package citadel

// CA throughput benchmarks (goal G4 of the performance research). They
// measure fixed scenarios, so run each once:
//
//	go test -run '^$' -bench 'BenchmarkCA' -benchtime 1x ./modules/citadel/
//
// Every figure is also reported as CPU time per certificate (getrusage),
// because the 2-core machine is shared. Results go to docs/benchmarks.md.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/modules/citadel/ca"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	pb "istio.io/api/security/v1alpha1"
)

// benchWorkload is a workload with a certificate from the CA (issued
// in-process during setup) and a CSR for its renewal.
type benchWorkload struct {
	ID      string `json:"id"`
	CertPEM string `json:"cert"`
	KeyPEM  string `json:"key"`
	CSR     string `json:"csr"`
}

func (w *benchWorkload) tlsCert() (tls.Certificate, error) {
	return tls.X509KeyPair([]byte(w.CertPEM), []byte(w.KeyPEM))
}

// benchEnv is a CA tuned as in production except that the per-caller limit
// is set out of reach (each benchmark caller renews thousands of times a
// second) while still being on the path, and logging is off.
//
// CITADEL_BENCH_DIR puts the store under another directory, e.g. /dev/shm
// to see what the ledger's fsyncs cost on the machine's disk.
func benchEnv(b *testing.B) *env {
	dir := ""
	if parent := os.Getenv("CITADEL_BENCH_DIR"); parent != "" {
		var err error
		if dir, err = os.MkdirTemp(parent, "citadel-bench-"); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
	}
	e := newEnv(b, dir, func(c *Config) {
		c.RateLimit = RateLimitConfig{PerCallerQPS: 1e9, Burst: 1 << 30}
		c.Rotation.CheckInterval = time.Hour
	})
	e.m.server.log = slog.New(slog.DiscardHandler)
	return e
}

// prepare makes n workloads with certificates and CSRs, on every core.
func prepare(b *testing.B, e *env, n int) []*benchWorkload {
	out := make([]*benchWorkload, n)
	signer := e.m.trust.Load().signer
	var next atomic.Int64
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				id := ca.SPIFFEID(testTD, fmt.Sprintf("ns%d", i%50), fmt.Sprintf("sa%d", i))
				key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				u, _ := url.Parse(id)
				csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
				if err != nil {
					b.Error(err)
					return
				}
				spki, _ := x509.MarshalPKIXPublicKey(key.Public())
				now := time.Now()
				leaf, err := signer.Issue(&ca.LeafRequest{PublicKey: key.Public(), RawSPKI: spki, URIs: []string{id},
					NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour)})
				if err != nil {
					b.Error(err)
					return
				}
				keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
				out[i] = &benchWorkload{
					ID:      id,
					CertPEM: string(ca.EncodeCertPEM(leaf.DER)),
					KeyPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
					CSR:     string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	return out
}

// floorSign is the in-process floor: parse and verify the CSR, then
// x509.CreateCertificate (which verifies its own signature again) and PEM.
func floorSign(csrPEM string, caCert *x509.Certificate, caKey any) error {
	blk, _ := pem.Decode([]byte(csrPEM))
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return err
	}
	if err := csr.CheckSignature(); err != nil {
		return err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, URIs: csr.URIs, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, csr.PublicKey, caKey)
	if err != nil {
		return err
	}
	_ = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runFor runs fn on workers goroutines for d and counts successes.
type runResult struct {
	ok, failed int
	wall, cpu  time.Duration
}

func (r runResult) add(o runResult) runResult {
	return runResult{ok: r.ok + o.ok, failed: r.failed + o.failed, wall: r.wall + o.wall, cpu: r.cpu + o.cpu}
}
func (r runResult) rate() float64     { return float64(r.ok) / r.wall.Seconds() }
func (r runResult) cpuPerOp() float64 { return float64(r.cpu.Microseconds()) / float64(max(r.ok, 1)) }
func (r runResult) String() string {
	return fmt.Sprintf("%d ok, %d failed, %.0f/s, %.0f CPU-µs each", r.ok, r.failed, r.rate(), r.cpuPerOp())
}
func runFor(d time.Duration, workers int, fn func(worker int) error) runResult {
	var ok, failed atomic.Int64
	cpu0, start := cpuTime(), time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				if fn(w) == nil {
					ok.Add(1)
				} else {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return runResult{ok: int(ok.Load()), failed: int(failed.Load()), wall: time.Since(start), cpu: cpuTime() - cpu0}
}

// benchClients dials one mTLS connection per workload.
func benchClients(b *testing.B, e *env, wls []*benchWorkload) ([]pb.IstioCertificateServiceClient, func()) {
	pemBytes, _ := e.m.TrustBundle()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	var conns []*grpc.ClientConn
	var clients []pb.IstioCertificateServiceClient
	for _, w := range wls {
		cert, err := w.tlsCert()
		if err != nil {
			b.Fatal(err)
		}
		conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{cert}})))
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, conn)
		clients = append(clients, pb.NewIstioCertificateServiceClient(conn))
	}
	return clients, func() {
		for _, c := range conns {
			c.Close()
		}
	}
}

// BenchmarkCAThroughput compares, in one run, the in-process floor on
// every core with renewals end to end through gRPC over mTLS on loopback.
func BenchmarkCAThroughput(b *testing.B) {
	const d = 5 * time.Second // of each
	e := benchEnv(b)
	wls := prepare(b, e, 32)
	signer := e.m.trust.Load().signer
	clients, closeAll := benchClients(b, e, wls)
	defer closeAll()
	ctx := context.Background()
	for i, c := range clients { // connect and warm up
		if _, err := c.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: wls[i].CSR}); err != nil {
			b.Fatal(err)
		}
	}
	// The handler alone: what an mTLS connection's peer looks like to it.
	peerCtx := make([]context.Context, len(wls))
	pool := x509.NewCertPool()
	pool.AddCert(signer.Root())
	for i, w := range wls {
		cert, _ := w.tlsCert()
		leaf, _ := x509.ParseCertificate(cert.Certificate[0])
		chains, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			b.Fatal(err)
		}
		peerCtx[i] = peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1000 + i},
			AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}, VerifiedChains: chains}}})
	}
	for b.Loop() {
		// Alternate one-second slices of each, so that load from other
		// work on the machine falls on both alike.
		var floor, inproc, grpcRun runResult
		// CITADEL_BENCH_GRPC_ONLY=1 runs the gRPC path alone, for profiles.
		grpcOnly := os.Getenv("CITADEL_BENCH_GRPC_ONLY") != ""
		for range int(d / time.Second) {
			if grpcOnly {
				grpcRun = grpcRun.add(runFor(time.Second, 64, func(w int) error {
					i := w % len(wls)
					_, err := clients[i].CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: wls[i].CSR})
					return err
				}))
				continue
			}
			floor = floor.add(runFor(time.Second, runtime.GOMAXPROCS(0), func(w int) error {
				return floorSign(wls[w%len(wls)].CSR, signer.Certificate(), signer.Key())
			}))
			inproc = inproc.add(runFor(time.Second, 64, func(w int) error {
				i := w % len(wls)
				_, err := e.m.server.CreateCertificate(peerCtx[i], &pb.IstioCertificateRequest{Csr: wls[i].CSR})
				return err
			}))
			grpcRun = grpcRun.add(runFor(time.Second, 64, func(w int) error {
				i := w % len(wls)
				_, err := clients[i].CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: wls[i].CSR})
				return err
			}))
		}
		if grpcOnly {
			b.Logf("gRPC over mTLS on loopback (32 connections, 64 callers): %v", grpcRun)
			b.ReportMetric(grpcRun.cpuPerOp(), "grpc-cpu-µs/cert")
			continue
		}
		if grpcRun.failed > 0 || floor.failed > 0 || inproc.failed > 0 {
			b.Fatalf("failures: floor %v, in-process %v, grpc %v", floor, inproc, grpcRun)
		}
		b.Logf("floor (in-process, %d goroutines): %v", runtime.GOMAXPROCS(0), floor)
		b.Logf("meshd handler in-process (no gRPC, no TLS; 64 callers): %v", inproc)
		b.Logf("gRPC over mTLS on loopback (32 connections, 64 callers): %v", grpcRun)
		b.ReportMetric(floor.rate(), "floor-certs/s")
		b.ReportMetric(grpcRun.rate(), "grpc-certs/s")
		b.ReportMetric(100*grpcRun.rate()/floor.rate(), "grpc/floor-%")
		b.ReportMetric(floor.cpuPerOp(), "floor-cpu-µs/cert")
		b.ReportMetric(inproc.cpuPerOp(), "handler-cpu-µs/cert")
		b.ReportMetric(grpcRun.cpuPerOp(), "grpc-cpu-µs/cert")
	}
}

// percentile returns the p-th percentile (0..100) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p/100))]
}

// BenchmarkCALatencyAt1000 sends renewals open-loop at 1,000 requests/s
// for 5 s over 32 mTLS connections; latency counts from when each request
// was due, so a stall is not hidden by the sender waiting (no coordinated
// omission).
func BenchmarkCALatencyAt1000(b *testing.B) {
	const rate, d = 1000, 5 * time.Second
	e := benchEnv(b)
	wls := prepare(b, e, 32)
	clients, closeAll := benchClients(b, e, wls)
	defer closeAll()
	ctx := context.Background()
	for i, c := range clients {
		if _, err := c.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: wls[i].CSR}); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		n := int(rate * d.Seconds())
		lat := make([]time.Duration, n)
		var failed atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		cpu0 := cpuTime()
		for i := range n {
			due := start.Add(time.Duration(i) * time.Second / rate)
			time.Sleep(time.Until(due))
			wg.Go(func() {
				k := i % len(wls)
				if _, err := clients[k].CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: wls[k].CSR}); err != nil {
					failed.Add(1)
				}
				lat[i] = time.Since(due)
			})
		}
		wg.Wait()
		wall, cpu := time.Since(start), cpuTime()-cpu0
		slices.Sort(lat)
		b.Logf("%d requests in %v (%.0f/s), %d failed; latency p50 %v p90 %v p99 %v max %v; %.0f CPU-µs each",
			n, wall.Round(time.Millisecond), float64(n)/wall.Seconds(), failed.Load(),
			percentile(lat, 50), percentile(lat, 90), percentile(lat, 99), lat[n-1], float64(cpu.Microseconds())/float64(n))
		if failed.Load() > 0 {
			b.Fatalf("%d requests failed", failed.Load())
		}
		b.ReportMetric(float64(percentile(lat, 50).Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(percentile(lat, 99).Microseconds())/1000, "p99-ms")
		b.ReportMetric(float64(lat[n-1].Microseconds())/1000, "max-ms")
	}
}

// burstResult is what the burst client process reports.
type burstResult struct {
	Served  int     `json:"served"`
	Failed  int     `json:"failed"`
	Seconds float64 `json:"seconds"`
	P50     float64 `json:"p50"`
	P99     float64 `json:"p99"`
	CPU     float64 `json:"cpuSeconds"`
	Error   string  `json:"error,omitempty"`
}

// burstInput is what the burst client process is given.
type burstInput struct {
	Addr      string           `json:"addr"`
	Bundle    string           `json:"bundle"`
	Mode      string           `json:"mode"`
	Workloads []*benchWorkload `json:"workloads"`
	Tokens    []string         `json:"tokens,omitempty"`
}

// Burst modes.
const (
	// burstEstablished: every workload already holds an mTLS connection
	// (as an agent does for xDS on the same port) and renews at once.
	burstEstablished = "established"
	// burstJoin: new workloads, each with its own join token, ask at once
	// over 64 shared server-authenticated connections.
	burstJoin = "join"
	// burstHandshake: every workload opens a new mTLS connection and
	// renews: 10,000 TLS handshakes with client certificates as well.
	burstHandshake = "handshake"
)

// BenchmarkCABurst10k: 10,000 workloads ask at once. The workloads run in
// a separate process (the test binary re-exec'd), which also keeps each
// process under the file descriptor limit; set CITADEL_BURST_N for a
// smaller burst.
func BenchmarkCABurst10k(b *testing.B) {
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("CITADEL_BURST_N")); err == nil {
		n = v
	}
	e := benchEnv(b)
	wls := prepare(b, e, n)
	bundle, _ := e.m.TrustBundle()
	for _, mode := range []string{burstEstablished, burstJoin, burstHandshake} {
		b.Run(mode, func(b *testing.B) {
			in := burstInput{Addr: e.addr, Bundle: string(bundle), Mode: mode, Workloads: wls}
			if mode == burstJoin {
				err := e.m.ns.Update(func(bk *bolt.Bucket) error {
					for _, w := range wls {
						t, err := createToken(bk, w.ID, TokenRequest{TTL: time.Hour, Uses: 1}, time.Now())
						if err != nil {
							return err
						}
						in.Tokens = append(in.Tokens, t.Token)
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			file := filepath.Join(b.TempDir(), "burst.json")
			raw, _ := json.Marshal(in)
			if err := os.WriteFile(file, raw, 0o600); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				cmd := exec.Command(os.Args[0], "-test.run=^$")
				cmd.Env = append(os.Environ(), envBurstFile+"="+file)
				cmd.Stderr = os.Stderr
				stdout, err := cmd.StdoutPipe()
				if err != nil {
					b.Fatal(err)
				}
				if err := cmd.Start(); err != nil {
					b.Fatal(err)
				}
				// The child says "go" once its connections are set up;
				// server CPU is counted from then.
				dec := json.NewDecoder(stdout)
				var ready struct{ Ready bool }
				if err := dec.Decode(&ready); err != nil {
					b.Fatalf("burst client did not start: %v", err)
				}
				issued0, cpu0 := e.counter("citadel_server_success_cert_issuance_count"), cpuTime()
				var r burstResult
				if err := dec.Decode(&r); err != nil {
					b.Fatalf("burst client output: %v", err)
				}
				serverCPU := cpuTime() - cpu0
				if err := cmd.Wait(); err != nil {
					b.Fatalf("burst client: %v", err)
				}
				issued := e.counter("citadel_server_success_cert_issuance_count") - issued0
				b.Logf("%s: %d workloads: %d served, %d failed in %.2fs (latency p50 %.2fs p99 %.2fs); CA issued %.0f; CPU: CA %.1fs (%.0f µs per workload), clients %.1fs %s",
					mode, n, r.Served, r.Failed, r.Seconds, r.P50, r.P99, issued, serverCPU.Seconds(),
					float64(serverCPU.Microseconds())/float64(n), r.CPU, r.Error)
				if r.Served != n {
					b.Errorf("only %d of %d workloads served", r.Served, n)
				}
				b.ReportMetric(r.Seconds, "burst-s")
				b.ReportMetric(r.P99, "p99-s")
				b.ReportMetric(float64(serverCPU.Microseconds())/float64(n), "ca-cpu-µs/workload")
			}
		})
	}
}

// envBurstFile makes the test binary the burst client.
const envBurstFile = "CITADEL_BENCH_BURST_FILE"

// runBurstClient is the burst client process: it sets every workload up,
// prints {"Ready":true}, starts all of them at once and prints a
// burstResult.
func runBurstClient(file string) error {
	var in burstInput
	raw, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(in.Bundle))
	dial := func(cert *tls.Certificate) (*grpc.ClientConn, error) {
		cfg := &tls.Config{RootCAs: roots, ServerName: "localhost"}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		return grpc.NewClient(in.Addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	}
	n := len(in.Workloads)
	conns := make([]*grpc.ClientConn, n)
	shared := in.Mode == burstJoin
	for i, w := range in.Workloads {
		var cert *tls.Certificate
		if !shared {
			c, err := w.tlsCert()
			if err != nil {
				return err
			}
			cert = &c
		} else if i >= 64 {
			conns[i] = conns[i%64]
			continue
		}
		if conns[i], err = dial(cert); err != nil {
			return err
		}
	}
	if in.Mode != burstHandshake {
		// Connect everything before the burst.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		var wg sync.WaitGroup
		sem := make(chan struct{}, 256)
		for i, c := range conns {
			if shared && i >= 64 {
				break
			}
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				c.Connect()
				for s := c.GetState(); s != connectivity.Ready; s = c.GetState() {
					if !c.WaitForStateChange(ctx, s) {
						return
					}
				}
			})
		}
		wg.Wait()
	}
	if err := json.NewEncoder(os.Stdout).Encode(struct{ Ready bool }{true}); err != nil {
		return err
	}

	lat := make([]time.Duration, n)
	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	cpu0, start := cpuTime(), time.Now()
	for i, conn := range conns {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if shared {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+in.Tokens[i])
			}
			_, err := pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx,
				&pb.IstioCertificateRequest{Csr: in.Workloads[i].CSR}, grpc.WaitForReady(true))
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
			lat[i] = time.Since(start)
		})
	}
	wg.Wait()
	r := burstResult{Seconds: time.Since(start).Seconds(), CPU: (cpuTime() - cpu0).Seconds(), Failed: int(failed.Load())}
	r.Served = n - r.Failed
	slices.Sort(lat)
	r.P50, r.P99 = percentile(lat, 50).Seconds(), percentile(lat, 99).Seconds()
	if e, ok := firstErr.Load().(string); ok {
		r.Error = e
	}
	for i, c := range conns {
		if !shared || i < 64 {
			c.Close()
		}
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}
