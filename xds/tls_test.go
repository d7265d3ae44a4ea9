package xds_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/xds"
	"github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/xdstest"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t *testing.T) *testCA {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(t, err)
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// leaf issues a certificate for 127.0.0.1 (server) or a SPIFFE ID (client).
func (ca *testCA) leaf(t *testing.T, spiffe string) tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	if spiffe == "" {
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	} else {
		u, _ := url.Parse(spiffe)
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	must(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsModule stands in for citadel: it enables the TLS port and registers a
// TLS-only service, as citadel does with its CSR service.
type tlsModule struct{}

var tlsCfg *tls.Config
var tlsXDS *xds.Module

func (*tlsModule) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{ID: "tlstest", Requires: []core.ModuleID{xds.ID}, New: func() core.Module { return new(tlsModule) }}
}

func (*tlsModule) Provision(ctx *core.Context) error {
	x, err := core.Dep[api.XDS](ctx, xds.ID)
	if err != nil {
		return err
	}
	gen := &xdstest.Generator{}
	if err := x.RegisterGenerator(api.ClusterType, gen); err != nil {
		return err
	}
	if err := x.RegisterService(func(r grpc.ServiceRegistrar) { healthpb.RegisterHealthServer(r, health.NewServer()) }, true); err != nil {
		return err
	}
	if err := x.EnableTLS(tlsCfg); err != nil {
		return err
	}
	tlsXDS, err = core.Dep[*xds.Module](ctx, xds.ID)
	return err
}

// TestTLSPort checks the TLS port: a verified client certificate's SPIFFE
// ID becomes the proxy's identity, a node claiming another namespace is
// refused, and TLS-only services are not on the plaintext port.
func TestTLSPort(t *testing.T) {
	ca := newCA(t)
	tlsCfg = &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, "")}, ClientCAs: ca.pool, ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS12}
	reg := core.NewRegistry()
	must(t, reg.Add(new(xds.Module)))
	must(t, reg.Add(new(tlsModule)))
	st, err := store.Open(t.TempDir(), store.Options{})
	must(t, err)
	defer st.Close()
	cfg := core.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.Modules = map[string]map[string]any{"xds": {"address": "127.0.0.1:0", "tlsAddress": "127.0.0.1:0"}}
	host, err := core.NewHost(core.HostOptions{Config: cfg, Registry: reg, Store: st})
	must(t, err)
	must(t, host.Provision())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- host.Run(ctx) }()
	defer func() {
		cancel()
		<-done
		must(t, host.Cleanup())
	}()

	dialTLS := func(spiffe string) *grpc.ClientConn {
		cert := ca.leaf(t, spiffe)
		creds := credentials.NewTLS(&tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"})
		cc, err := grpc.NewClient(tlsXDS.TLSAddr().String(), grpc.WithTransportCredentials(creds))
		must(t, err)
		t.Cleanup(func() { cc.Close() })
		return cc
	}

	// Verified identity.
	c := xdstest.NewSotw(t, dialTLS("spiffe://cluster.local/ns/shop/sa/cart"), xdstest.NodeSA("cart-1", "shop", "cart"))
	c.Subscribe(api.ClusterType)
	c.Recv(5 * time.Second)
	var ps api.ProxyStatus
	for _, s := range tlsXDS.Statuses() {
		if strings.Contains(s.ID, "cart-1") {
			ps = s
		}
	}
	if !ps.IdentityVerified || ps.Identity != "spiffe://cluster.local/ns/shop/sa/cart" || ps.ServiceAccount != "cart" {
		t.Errorf("status %+v", ps)
	}

	// A node claiming another namespace than its certificate is refused.
	bad := xdstest.NewSotw(t, dialTLS("spiffe://cluster.local/ns/shop/sa/cart"), xdstest.NodeSA("evil", "payments", "cart"))
	bad.Subscribe(api.ClusterType)
	if err := bad.Err(5 * time.Second); status.Code(err) != codes.PermissionDenied {
		t.Errorf("mismatched namespace: %v, want PermissionDenied", err)
	}

	// The TLS-only service answers on TLS only.
	if _, err := healthpb.NewHealthClient(dialTLS("spiffe://cluster.local/ns/shop/sa/cart")).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("TLS-only service on the TLS port: %v", err)
	}
	plain, err := grpc.NewClient(tlsXDS.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	must(t, err)
	defer plain.Close()
	if _, err := healthpb.NewHealthClient(plain).Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("TLS-only service on the plaintext port: %v, want Unimplemented", err)
	}
}

// TestEnableTLSPortInUse checks a taken TLS port fails the caller's
// Provision, at startup.
func TestEnableTLSPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	tlsCfg = &tls.Config{}
	reg := core.NewRegistry()
	must(t, reg.Add(new(xds.Module)))
	must(t, reg.Add(new(tlsModule)))
	st, err := store.Open(t.TempDir(), store.Options{})
	must(t, err)
	defer st.Close()
	cfg := core.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.Modules = map[string]map[string]any{"xds": {"address": "127.0.0.1:0", "tlsAddress": l.Addr().String()}}
	host, err := core.NewHost(core.HostOptions{Config: cfg, Registry: reg, Store: st})
	must(t, err)
	err = host.Provision()
	if err == nil || !strings.Contains(err.Error(), "tlsAddress") {
		t.Fatalf("Provision: %v, want a tlsAddress error", err)
	}
}
