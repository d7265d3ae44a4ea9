package citadel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/meshd/meshd/modules/citadel/ca"
	xapi "github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/xdstest"
	bolt "go.etcd.io/bbolt"
)

// renewer keeps a workload's certificate fresh, as an agent would.
type renewer struct {
	e    *env
	w    *workload
	mu   sync.Mutex
	errs []error
	n    int
}

func (r *renewer) run(ctx context.Context, t *testing.T, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		r.mu.Lock()
		err := r.e.renew(t, r.w, 0)
		if err != nil {
			r.errs = append(r.errs, err)
		} else {
			r.n++
		}
		r.mu.Unlock()
	}
}

// snapshot returns the workload's current certificate and bundle.
func (r *renewer) snapshot(t *testing.T) (*tls.Certificate, *x509.CertPool, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.w.tlsCert(t), r.w.bundle(t), r.w.id
}

// verifyPeer checks the peer's chain against roots and its SPIFFE ID, the
// way a sidecar checks a peer.
func verifyPeer(roots *x509.CertPool, want string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no peer certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		leaf := cs.PeerCertificates[0]
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return err
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
			return fmt.Errorf("peer is %v, want %s", leaf.URIs, want)
		}
		return nil
	}
}

// mtls runs a TLS handshake between two workloads, each verifying the
// other against the bundle it was served.
func mtls(t *testing.T, client, server *renewer) error {
	cc, cRoots, cID := client.snapshot(t)
	sc, sRoots, sID := server.snapshot(t)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	srv := tls.Server(b, &tls.Config{
		Certificates: []tls.Certificate{*sc}, ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: verifyPeer(sRoots, cID),
	})
	cli := tls.Client(a, &tls.Config{
		Certificates: []tls.Certificate{*cc}, InsecureSkipVerify: true, // verified by VerifyConnection
		VerifyConnection: verifyPeer(cRoots, sID),
	})
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	cerr := cli.Handshake()
	serr := <-errc
	return errors.Join(cerr, serr)
}

// proxy is an Envoy stand-in: an ADS stream on the plaintext xDS port
// subscribed to the ROOTCA secret, which acknowledges only when told.
type proxy struct {
	t    *testing.T
	c    *xdstest.SotwClient
	last *discovery.DiscoveryResponse
}

func (e *env) proxy(t *testing.T, name string) *proxy {
	c := xdstest.NewSotw(t, xdstest.Dial(t, e.x.plain), xdstest.Node(name, "default"))
	c.Subscribe(xapi.SecretType, SDSRootName)
	return &proxy{t: t, c: c}
}

// recv waits for the next ROOTCA and returns the IDs of the roots in it.
func (p *proxy) recv() []string {
	p.t.Helper()
	p.last = p.c.Recv(3 * time.Second)
	if len(p.last.Resources) != 1 {
		p.t.Fatalf("SDS response with %d resources", len(p.last.Resources))
	}
	var s tlsv3.Secret
	if err := p.last.Resources[0].UnmarshalTo(&s); err != nil {
		p.t.Fatal(err)
	}
	certs, err := ca.ParseCertsPEM(s.GetValidationContext().GetTrustedCa().GetInlineBytes())
	if s.Name != SDSRootName || err != nil {
		p.t.Fatalf("secret %q: %v", s.Name, err)
	}
	var ids []string
	for _, c := range certs {
		ids = append(ids, ca.CertID(c))
	}
	return ids
}

func (p *proxy) ack() { p.c.Ack(p.last, SDSRootName) }

// waitProxies waits until the CA sees these acknowledged bundle versions.
func (e *env) waitProxies(t *testing.T, want ...uint64) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		e.m.mu.Lock()
		got := e.m.proxyBundles()
		e.m.mu.Unlock()
		slices.Sort(got)
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxies acknowledged %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *env) waitPhase(t *testing.T, p Phase, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		e.m.mu.Lock()
		got := e.m.state.Phase
		e.m.mu.Unlock()
		if got == p {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	s, _ := e.m.Operations().Status(context.Background())
	t.Fatalf("phase not %s after %v: %+v", p, within, s)
}

// TestRotationWhileRenewing runs a whole rotation with short lifetimes while
// two workloads keep renewing, and checks at every step that they can still
// talk mTLS with the bundles they were served.
func TestRotationWhileRenewing(t *testing.T) {
	e := newEnv(t, "", func(c *Config) {
		c.Leaf.DefaultTTL, c.Leaf.MaxTTL = 3*time.Second, 3*time.Second
		c.Rotation.StagedLeafTTL = 2 * time.Second
		c.Rotation.AckTimeout = time.Minute
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ra, rb := &renewer{e: e, w: newWorkload(t, "default", "a")}, &renewer{e: e, w: newWorkload(t, "default", "b")}
	e.join(t, ra.w)
	e.join(t, rb.w)
	var wg sync.WaitGroup
	wg.Go(func() { ra.run(ctx, t, 150*time.Millisecond) })
	wg.Go(func() { rb.run(ctx, t, 150*time.Millisecond) })
	// Two proxies have the first bundle.
	proxies := []*proxy{e.proxy(t, "p1"), e.proxy(t, "p2")}
	for _, p := range proxies {
		p.recv()
		p.ack()
	}
	e.waitProxies(t, 1, 1)

	check := func(step string) {
		t.Helper()
		if err := mtls(t, ra, rb); err != nil {
			t.Fatalf("%s: a -> b: %v", step, err)
		}
		if err := mtls(t, rb, ra); err != nil {
			t.Fatalf("%s: b -> a: %v", step, err)
		}
	}
	oldStatus, _ := e.m.Operations().Status(ctx)
	old := oldStatus.Roots[0].ID
	check("idle")

	s, err := e.m.Operations().Rotate(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if s.Phase != PhaseStaged || len(s.Roots) != 2 || s.BundleVersion != 2 {
		t.Fatalf("after rotate: %+v", s)
	}
	check("staged")
	for _, p := range proxies {
		if ids := p.recv(); len(ids) != 2 || ids[0] != old {
			t.Fatalf("staged bundle served over SDS: %v", ids)
		}
	}
	time.Sleep(300 * time.Millisecond) // proxies have not acknowledged: no switch
	e.waitPhase(t, PhaseStaged, 0)
	check("staged, waiting for acks")
	if s, _ := e.m.Operations().Status(ctx); *s.Roots[0].Proxies != 2 || *s.Roots[1].Proxies != 0 || s.Proxies.Current != 0 {
		t.Fatalf("proxies trusting each root: %+v %+v", s.Proxies, s.Roots)
	}

	for _, p := range proxies {
		p.ack()
	}
	e.waitPhase(t, PhaseSwitched, 2*time.Second)
	check("switched")
	if s, _ := e.m.Operations().Status(ctx); *s.Roots[1].Proxies != 2 || !s.Roots[1].Signing || s.Roots[0].Role != "retiring" {
		t.Fatalf("after switch: %+v", s.Roots)
	}
	e.waitPhase(t, PhaseIdle, 10*time.Second)
	check("retired")
	for _, p := range proxies {
		if ids := p.recv(); len(ids) != 1 || ids[0] == old {
			t.Fatalf("bundle served over SDS after retirement: %v", ids)
		}
		p.ack()
	}
	e.waitProxies(t, 3, 3)
	time.Sleep(500 * time.Millisecond) // renewals continue under the new bundle alone
	check("retired, renewed")
	cancel()
	wg.Wait()
	time.Sleep(50 * time.Millisecond)
	check("after the last renewal")

	if len(ra.errs)+len(rb.errs) > 0 {
		t.Fatalf("renewal errors during rotation: %v %v", ra.errs, rb.errs)
	}
	if ra.n < 5 || rb.n < 5 {
		t.Fatalf("only %d and %d renewals", ra.n, rb.n)
	}
	final, _ := e.m.Operations().Status(ctx)
	if len(final.Roots) != 1 || final.Roots[0].ID == old || final.BundleVersion != 3 || final.LastRotation.IsZero() {
		t.Fatalf("final status: %+v", final)
	}
	err = e.m.ns.View(func(b *bolt.Bucket) error {
		if b.Bucket(bucketRoots).Get([]byte(old)) != nil {
			return errors.New("old root still in roots/")
		}
		var r rootRecord
		if ok, err := getJSON(b.Bucket(bucketRetired), []byte(old), &r); !ok || err != nil || len(r.Key) != 0 {
			return fmt.Errorf("retired/%s: ok=%v err=%v key=%d bytes", old, ok, err, len(r.Key))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	bundle, _ := e.m.TrustBundle()
	if file, _ := os.ReadFile(e.m.trustFile); string(file) != string(bundle) {
		t.Error("trust file differs from the served bundle")
	}
}

func TestRotationAckTimeoutAndForce(t *testing.T) {
	e := newEnv(t, "", func(c *Config) { c.Rotation.AckTimeout = 200 * time.Millisecond })
	ctx := context.Background()
	w := newWorkload(t, "default", "a")
	e.join(t, w)          // a 24h leaf of the old root that will not renew
	p := e.proxy(t, "p1") // a proxy that acknowledges the first bundle only
	p.recv()
	p.ack()
	e.waitProxies(t, 1)

	if _, err := e.m.Operations().Rotate(ctx, false); err != nil {
		t.Fatal(err)
	}
	e.waitPhase(t, PhaseSwitched, 2*time.Second) // after ackTimeout
	if !strings.Contains(e.logs.String(), "switching anyway") {
		t.Error("no warning about switching without every acknowledgement")
	}
	time.Sleep(100 * time.Millisecond)
	s, _ := e.m.Operations().Status(ctx)
	if s.Phase != PhaseSwitched || s.PendingOldLeaves == nil || *s.PendingOldLeaves != 1 {
		t.Fatalf("the workload's old leaf should hold retirement: %+v", s)
	}
	if s, err := e.m.Operations().Rotate(ctx, true); err != nil || !s.Force {
		t.Fatalf("force: %+v, %v", s, err)
	}
	e.waitPhase(t, PhaseIdle, 2*time.Second)
}

func TestAutomaticRotationNearExpiry(t *testing.T) {
	e := newEnv(t, "", func(c *Config) {
		c.Root.Lifetime = time.Hour
		c.Rotation.RenewBefore = time.Hour - time.Second // due within a second
	})
	e.waitPhase(t, PhaseIdle, 0)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if s, _ := e.m.Operations().Status(context.Background()); s.LastRotation.IsZero() == false {
			if s.Roots[0].NotAfter.Before(time.Now().Add(59 * time.Minute)) {
				t.Fatalf("rotated to a root expiring %v", s.Roots[0].NotAfter)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no automatic rotation")
}

func TestPluggedCARefusesRotate(t *testing.T) {
	dir := pluggedDir(t)
	e := newEnv(t, "", func(c *Config) { c.PluggedCADir = dir })
	if _, err := e.m.Operations().Rotate(context.Background(), false); !errors.Is(err, ErrPluggedRotation) {
		t.Fatalf("rotate with a plugged-in CA: %v", err)
	}
}
