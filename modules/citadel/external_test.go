package citadel

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/modules/citadel/api"
	"github.com/meshd/meshd/modules/citadel/ca"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// corpCA is an external signer: a CA meshd does not hold, signing what it
// is asked, or misbehaving as told.
type corpCA struct {
	a      *ca.Authority
	fail   error
	tamper func(chain [][]byte) [][]byte
}

func newCorpCA(t *testing.T) *corpCA {
	cert, key, err := ca.NewSelfSignedRoot(ca.RootOptions{Algorithm: ca.ECDSAP256, Lifetime: 24 * time.Hour, TrustDomain: testTD})
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.NewAuthority(key, []*x509.Certificate{cert})
	if err != nil {
		t.Fatal(err)
	}
	return &corpCA{a: a}
}

func (c *corpCA) Sign(_ context.Context, req api.SignRequest) ([][]byte, error) {
	if c.fail != nil {
		return nil, c.fail
	}
	csr, err := ca.ParseCSR(req.CSR)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	leaf, err := c.a.Issue(&ca.LeafRequest{PublicKey: csr.PublicKey, RawSPKI: csr.RawSPKI, URIs: req.URIs,
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(req.TTL)})
	if err != nil {
		return nil, err
	}
	chain := [][]byte{leaf.DER, c.a.Root().Raw}
	if c.tamper != nil {
		chain = c.tamper(chain)
	}
	return chain, nil
}

func TestExternalSigner(t *testing.T) {
	e := newEnv(t, "", nil)
	corp := newCorpCA(t)
	if err := e.m.SetSigner("corp", corp); err != nil {
		t.Fatal(err)
	}
	if err := e.m.SetSigner("other", corp); err == nil {
		t.Fatal("a second external signer was accepted")
	}
	local, _ := e.m.TrustBundle()

	w := newWorkload(t, "vm", "a")
	e.join(t, w)
	if err := w.leaf(t).CheckSignatureFrom(corp.a.Root()); err != nil {
		t.Fatalf("leaf not from the external CA: %v", err)
	}
	if !strings.Contains(w.chain[len(w.chain)-1], strings.TrimSpace(string(local))) {
		t.Fatal("the local root left the bundle")
	}
	opensslVerify(t, w.chain)
	if id := spiffeVerify(t, w); id != w.id {
		t.Fatalf("SPIFFE ID %s", id)
	}
	s, _ := e.m.Operations().Status(context.Background())
	if len(s.Roots) != 2 || s.Roots[1].Role != "external" || s.Roots[1].ID != ca.CertID(corp.a.Root()) || s.BundleVersion != 2 {
		t.Fatalf("status: %+v", s.Roots)
	}
	// Renewal over mTLS with the external CA's certificate.
	if err := e.renew(t, w, 0); err != nil {
		t.Fatalf("renewal with an externally signed certificate: %v", err)
	}
	if s, _ := e.m.Operations().Status(context.Background()); s.BundleVersion != 2 {
		t.Fatalf("bundle changed again for a known root: %d", s.BundleVersion)
	}

	other := newCorpCA(t)
	for _, tt := range []struct {
		name   string
		fail   error
		tamper func([][]byte) [][]byte
	}{
		{"signer down", errors.New("plugin is down"), nil},
		{"other identity", nil, func(c [][]byte) [][]byte {
			k := newWorkload(t, "vm", "b")
			csr, _ := ca.ParseCSR([]byte(k.csr(t, nil, nil)))
			l, _ := corp.a.Issue(&ca.LeafRequest{PublicKey: csr.PublicKey, RawSPKI: csr.RawSPKI, URIs: []string{k.id}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)})
			return [][]byte{l.DER, c[1]}
		}},
		{"root does not sign the leaf", nil, func(c [][]byte) [][]byte { return [][]byte{c[0], other.a.Root().Raw} }},
		{"no root", nil, func(c [][]byte) [][]byte { return c[:1] }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			corp.fail, corp.tamper = tt.fail, tt.tamper
			defer func() { corp.fail, corp.tamper = nil, nil }()
			before, refused := e.ledgerSize(), e.counter("meshd_citadel_csr_refused_total", reasonSigner)
			err := e.renew(t, w, 0)
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("%v, want Unavailable", err)
			}
			if e.ledgerSize() != before || e.counter("meshd_citadel_csr_refused_total", reasonSigner) != refused+1 {
				t.Fatal("issued, or not counted")
			}
		})
	}

	// The external root stays while leaves live or it is the signer's
	// current one, and goes afterwards.
	e.m.mu.Lock()
	defer e.m.mu.Unlock()
	later := time.Now().Add(48 * time.Hour)
	if err := e.m.pruneExternalRootsLocked(later); err != nil || len(e.m.state.ExternalRoots) != 1 {
		t.Fatalf("current external root pruned: %v", err)
	}
	gone := "none"
	e.m.lastExtRoot.Store(&gone)
	if err := e.m.pruneExternalRootsLocked(time.Now()); err != nil || len(e.m.state.ExternalRoots) != 1 {
		t.Fatalf("external root with live leaves pruned: %v", err)
	}
	if err := e.m.pruneExternalRootsLocked(later); err != nil || len(e.m.state.ExternalRoots) != 0 || e.m.trust.Load().version != 3 {
		t.Fatalf("unused external root kept: %v", err)
	}
}
