// Package signertest is the conformance suite of the signer plugin kind:
// what citadel must get from any api.Signer, checked the same way against
// citadel's own CA in process (pluginsigner.Local) and against the same
// signer behind the plugin shims (over go-plugin's TestPluginGRPCConn).
package signertest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/modules/citadel/api"
	"github.com/meshd/meshd/modules/citadel/ca"
	"github.com/meshd/meshd/modules/citadel/pluginsigner"
)

// Authority returns a fresh self-signed CA.
func Authority(t testing.TB) *ca.Authority {
	t.Helper()
	cert, key, err := ca.NewSelfSignedRoot(ca.RootOptions{Algorithm: ca.ECDSAP256, Lifetime: 24 * time.Hour, TrustDomain: "cluster.local"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.NewAuthority(key, []*x509.Certificate{cert})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// CSR returns a workload CSR, DER, that asks for identities of its own
// (which a signer must ignore).
func CSR(t testing.TB) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	evil, _ := url.Parse("spiffe://cluster.local/ns/kube-system/sa/admin")
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "workload"}, URIs: []*url.URL{evil}, DNSNames: []string{"admin.example.com"},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// Wrap turns a signer into the signer under test: the identity for the
// in-process path, the shims for the plugin path.
type Wrap func(t *testing.T, s api.Signer) api.Signer

// SignerFunc adapts a function to api.Signer.
type SignerFunc func(ctx context.Context, req api.SignRequest) ([][]byte, error)

// Sign implements api.Signer.
func (f SignerFunc) Sign(ctx context.Context, req api.SignRequest) ([][]byte, error) {
	return f(ctx, req)
}

// Run runs the suite.
func Run(t *testing.T, wrap Wrap) {
	const id = "spiffe://cluster.local/ns/shop/sa/reviews"

	t.Run("signs the requested identity", func(t *testing.T) {
		a := Authority(t)
		req := api.SignRequest{CSR: CSR(t), URIs: []string{id}, TTL: time.Hour}
		chain, err := wrap(t, pluginsigner.Local(a)).Sign(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if err := pluginsigner.CheckChain(req, chain, time.Now()); err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(chain[0])
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AddCert(a.Root())
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("leaf does not verify to the CA: %v", err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id || len(leaf.DNSNames) != 0 {
			t.Fatalf("leaf identities %v %v: the CSR's own were not ignored", leaf.URIs, leaf.DNSNames)
		}
		if d := time.Until(leaf.NotAfter); d > time.Hour+time.Minute || d < 50*time.Minute {
			t.Fatalf("leaf lives %s, asked for 1h", d)
		}
	})

	t.Run("a bad CSR is refused", func(t *testing.T) {
		_, err := wrap(t, pluginsigner.Local(Authority(t))).Sign(context.Background(), api.SignRequest{CSR: []byte("nope"), URIs: []string{id}, TTL: time.Hour})
		if err == nil || !strings.Contains(err.Error(), "CSR") {
			t.Fatalf("err %v", err)
		}
	})

	t.Run("errors reach citadel", func(t *testing.T) {
		s := SignerFunc(func(context.Context, api.SignRequest) ([][]byte, error) {
			return nil, errors.New("HSM offline")
		})
		_, err := wrap(t, s).Sign(context.Background(), api.SignRequest{CSR: CSR(t), URIs: []string{id}, TTL: time.Hour})
		if err == nil || !strings.Contains(err.Error(), "HSM offline") {
			t.Fatalf("err %v", err)
		}
	})

	t.Run("deadline is honoured", func(t *testing.T) {
		s := SignerFunc(func(ctx context.Context, _ api.SignRequest) ([][]byte, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		})
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := wrap(t, s).Sign(ctx, api.SignRequest{CSR: CSR(t), URIs: []string{id}, TTL: time.Hour}); err == nil {
			t.Fatal("no error past the deadline")
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("returned after %s", d)
		}
	})
}
