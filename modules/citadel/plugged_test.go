package citadel

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/modules/citadel/ca"
	bolt "go.etcd.io/bbolt"
)

// offlineCA is a root whose key stays "offline" (in the test) and signs an
// intermediate for meshd, written in Istio's cacerts layout.
type offlineCA struct {
	root    *x509.Certificate
	rootKey crypto.Signer
}

func newOfflineCA(t testing.TB) *offlineCA {
	cert, key, err := ca.NewSelfSignedRoot(ca.RootOptions{Algorithm: ca.ECDSAP256, Lifetime: 24 * time.Hour, TrustDomain: testTD})
	if err != nil {
		t.Fatal(err)
	}
	return &offlineCA{root: cert, rootKey: key}
}

// intermediate is a signing CA issued by an offline root.
type intermediate struct {
	cert, key []byte // PEM
	root      *x509.Certificate
}

func (o *offlineCA) intermediate(t testing.TB, cn string) *intermediate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn, Organization: []string{testTD}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(20 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, o.root, key.Public(), o.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := ca.MarshalKey(key)
	return &intermediate{cert: ca.EncodeCertPEM(der), key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), root: o.root}
}

// write puts the intermediate and the given roots in dir in Istio's layout.
func (i *intermediate) write(t testing.TB, dir string, roots ...*x509.Certificate) {
	var rootPEM []byte
	for _, r := range roots {
		rootPEM = append(rootPEM, ca.EncodeCertPEM(r.Raw)...)
	}
	files := map[string][]byte{
		ca.FileCACert:    i.cert,
		ca.FileCAKey:     i.key,
		ca.FileRootCert:  rootPEM,
		ca.FileCertChain: append(append([]byte{}, i.cert...), ca.EncodeCertPEM(i.root.Raw)...),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
		// Distinct modification times, so the reload notices every write.
		later := time.Now().Add(time.Duration(len(data)) * time.Millisecond)
		os.Chtimes(filepath.Join(dir, name), later, later)
	}
}

func pluggedDir(t testing.TB) string {
	dir := t.TempDir()
	o := newOfflineCA(t)
	o.intermediate(t, "meshd intermediate").write(t, dir, o.root)
	return dir
}

func TestPluggedCAEndToEnd(t *testing.T) {
	off := newOfflineCA(t)
	dir := t.TempDir()
	int1 := off.intermediate(t, "meshd intermediate")
	int1.write(t, dir, off.root)
	e := newEnv(t, "", func(c *Config) { c.PluggedCADir = dir })
	w := newWorkload(t, "vm", "a")
	e.join(t, w)
	if len(w.chain) != 3 || !strings.Contains(w.chain[1], "CERTIFICATE") {
		t.Fatalf("chain has %d elements, want leaf, intermediate, root", len(w.chain))
	}
	opensslVerify(t, w.chain)
	if id := spiffeVerify(t, w); id != w.id {
		t.Fatalf("SPIFFE ID %s", id)
	}
	if err := e.renew(t, w, 0); err != nil {
		t.Fatalf("renewal through the intermediate: %v", err)
	}
	// The offline root's key never reached the store.
	e.m.ns.View(func(b *bolt.Bucket) error {
		if n := b.Bucket(bucketRoots).Stats().KeyN; n != 0 {
			t.Errorf("%d roots stored with a plugged-in CA", n)
		}
		return nil
	})
	s, _ := e.m.Operations().Status(context.Background())
	if s.Mode != ModePlugged || len(s.Roots) != 1 || s.Roots[0].ID != ca.CertID(off.root) || !s.Roots[0].Signing {
		t.Fatalf("status: %+v", s)
	}

	// The operator's rotation through the files (docs/ca.md), with the
	// workload renewing at each step: add the new root; switch to an
	// intermediate of the new root; drop the old root.
	next := newOfflineCA(t)
	int2 := next.intermediate(t, "meshd intermediate 2")
	waitRoots := func(n int, signer string) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for {
			s, _ := e.m.Operations().Status(context.Background())
			signing := ""
			for _, r := range s.Roots {
				if r.Signing {
					signing = r.ID
				}
			}
			if len(s.Roots) == n && signing == signer {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("files not reloaded: %+v", s)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	steps := []struct {
		name   string
		inter  *intermediate
		roots  []*x509.Certificate
		signer *x509.Certificate
	}{
		{"add new root", int1, []*x509.Certificate{off.root, next.root}, off.root},
		{"switch intermediate", int2, []*x509.Certificate{off.root, next.root}, next.root},
		{"drop old root", int2, []*x509.Certificate{next.root}, next.root},
	}
	for _, st := range steps {
		st.inter.write(t, dir, st.roots...)
		waitRoots(len(st.roots), ca.CertID(st.signer))
		if err := e.renew(t, w, 0); err != nil {
			t.Fatalf("%s: renewal: %v", st.name, err)
		}
		opensslVerify(t, w.chain)
		if ic, _ := ca.ParseCertsPEM([]byte(w.chain[1])); ic[0].CheckSignatureFrom(st.signer) != nil {
			t.Fatalf("%s: intermediate in the response is not signed by the expected root", st.name)
		}
	}
}

func TestPluggedCABadFilesFailProvision(t *testing.T) {
	dir := pluggedDir(t)
	os.Chmod(filepath.Join(dir, ca.FileCAKey), 0o644)
	if _, err := startEnv(t, "", func(c *Config) { c.PluggedCADir = dir }); err == nil || !strings.Contains(err.Error(), "other users") {
		t.Fatalf("world-readable ca-key.pem: %v", err)
	}
}
