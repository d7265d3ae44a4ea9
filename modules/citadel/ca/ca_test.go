package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const td = "example.org"

var testID = SPIFFEID(td, "default", "web")

func newRoot(t testing.TB, alg KeyAlgorithm) *Authority {
	t.Helper()
	cert, key, err := NewSelfSignedRoot(RootOptions{Algorithm: alg, Lifetime: 24 * time.Hour, TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAuthority(key, []*x509.Certificate{cert})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func newCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func uris(t testing.TB, ids ...string) []*url.URL {
	var out []*url.URL
	for _, id := range ids {
		u, err := url.Parse(id)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, u)
	}
	return out
}

func TestIssueLeaf(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa2k, _ := rsa.GenerateKey(rand.Reader, 2048)
	tests := []struct {
		name   string
		caAlg  KeyAlgorithm
		leaf   crypto.Signer
		wantKU x509.KeyUsage
	}{
		{"ecdsa CA, P-256 leaf", ECDSAP256, p256, x509.KeyUsageDigitalSignature},
		{"ecdsa CA, P-384 leaf", ECDSAP256, p384, x509.KeyUsageDigitalSignature},
		{"ecdsa CA, RSA leaf", ECDSAP256, rsa2k, x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
		{"RSA CA, P-256 leaf", RSA2048, p256, x509.KeyUsageDigitalSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newRoot(t, tt.caAlg)
			csr := newCSR(t, tt.leaf, &x509.CertificateRequest{URIs: uris(t, testID)})
			now := time.Now()
			leaf, err := a.Issue(&LeafRequest{
				PublicKey: csr.PublicKey, RawSPKI: csr.RawSubjectPublicKeyInfo,
				URIs: []string{testID}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
			})
			if err != nil {
				t.Fatal(err)
			}
			cert, err := x509.ParseCertificate(leaf.DER)
			if err != nil {
				t.Fatal(err)
			}
			pool := x509.NewCertPool()
			pool.AddCert(a.Root())
			for _, eku := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
				if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
					t.Fatalf("verify for %v: %v", eku, err)
				}
			}
			if len(cert.URIs) != 1 || cert.URIs[0].String() != testID {
				t.Errorf("URIs = %v", cert.URIs)
			}
			if cert.IsCA || !cert.BasicConstraintsValid {
				t.Errorf("IsCA=%v BasicConstraintsValid=%v", cert.IsCA, cert.BasicConstraintsValid)
			}
			if cert.KeyUsage != tt.wantKU {
				t.Errorf("KeyUsage = %v, want %v", cert.KeyUsage, tt.wantKU)
			}
			if !bytes.Equal(cert.AuthorityKeyId, a.Certificate().SubjectKeyId) {
				t.Errorf("AuthorityKeyId = %x, want %x", cert.AuthorityKeyId, a.Certificate().SubjectKeyId)
			}
			if got := hex.EncodeToString(cert.SerialNumber.Bytes()); got != leaf.Serial {
				t.Errorf("serial %s, Leaf.Serial %s", got, leaf.Serial)
			}
			if !cert.NotAfter.Equal(leaf.NotAfter) || !cert.NotBefore.Equal(leaf.NotBefore) {
				t.Errorf("validity %v..%v, Leaf says %v..%v", cert.NotBefore, cert.NotAfter, leaf.NotBefore, leaf.NotAfter)
			}
			if len(cert.Subject.Names) != 0 {
				t.Errorf("subject %v, want empty", cert.Subject)
			}
			if !cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.leaf.Public()) {
				t.Error("public key differs from the CSR's")
			}
			var sanCritical bool
			for _, e := range cert.Extensions {
				if e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) {
					sanCritical = e.Critical
				}
			}
			if !sanCritical {
				t.Error("SAN extension not critical with an empty subject")
			}
		})
	}
}

func TestIssueCapsAtCAExpiryAndSANKinds(t *testing.T) {
	a := newRoot(t, ECDSAP256)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr := newCSR(t, k, &x509.CertificateRequest{})
	now := time.Now()
	leaf, err := a.Issue(&LeafRequest{
		PublicKey: csr.PublicKey, RawSPKI: csr.RawSubjectPublicKeyInfo,
		DNSNames: []string{"meshd.example.org", "localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
		NotBefore: now, NotAfter: now.Add(100 * 24 * time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(leaf.DER)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.NotAfter.Equal(a.Expiry().UTC().Truncate(time.Second)) {
		t.Errorf("NotAfter %v, want CA expiry %v", cert.NotAfter, a.Expiry())
	}
	if strings.Join(cert.DNSNames, ",") != "meshd.example.org,localhost" || len(cert.IPAddresses) != 2 {
		t.Errorf("DNS %v IPs %v", cert.DNSNames, cert.IPAddresses)
	}
	if err := cert.VerifyHostname("127.0.0.1"); err != nil {
		t.Error(err)
	}
	if _, err := a.Issue(&LeafRequest{PublicKey: csr.PublicKey, RawSPKI: csr.RawSubjectPublicKeyInfo, NotBefore: now, NotAfter: now.Add(time.Hour)}); err == nil {
		t.Error("leaf without SANs issued")
	}
}

// TestLongLengths exercises the multi-byte DER length forms with a large
// RSA-4096 leaf key and many SANs.
func TestLongLengths(t *testing.T) {
	a := newRoot(t, ECDSAP256)
	k, err := rsa.GenerateKey(rand.Reader, 4096)
	if err != nil {
		t.Fatal(err)
	}
	csr := newCSR(t, k, &x509.CertificateRequest{})
	var names []string
	for i := range 300 {
		names = append(names, strings.Repeat("x", 50)+string(rune('a'+i%26))+".example.org")
	}
	now := time.Now()
	leaf, err := a.Issue(&LeafRequest{PublicKey: csr.PublicKey, RawSPKI: csr.RawSubjectPublicKeyInfo, DNSNames: names, NotBefore: now, NotAfter: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(leaf.DER)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.DNSNames) != 300 {
		t.Errorf("%d DNS names", len(cert.DNSNames))
	}
	if err := cert.CheckSignatureFrom(a.Certificate()); err != nil {
		t.Error(err)
	}
}

func TestTimeEncoding(t *testing.T) {
	for _, tt := range []struct {
		in   time.Time
		want string
	}{
		{time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC), "\x17\x0d491231235959Z"},
		{time.Date(2050, 1, 1, 0, 0, 0, 0, time.UTC), "\x18\x0f20500101000000Z"},
	} {
		if got := string(appendTime(nil, tt.in)); got != tt.want {
			t.Errorf("appendTime(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestNewAuthorityRefuses(t *testing.T) {
	root := newRoot(t, ECDSAP256)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr := newCSR(t, leafKey, &x509.CertificateRequest{})
	l, _ := root.Issue(&LeafRequest{PublicKey: csr.PublicKey, RawSPKI: csr.RawSubjectPublicKeyInfo, URIs: []string{testID}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)})
	leafCert, _ := x509.ParseCertificate(l.DER)
	otherRoot := newRoot(t, ECDSAP256)
	tests := []struct {
		name  string
		key   crypto.Signer
		chain []*x509.Certificate
		want  string
	}{
		{"key mismatch", other, []*x509.Certificate{root.Root()}, "does not match"},
		{"not a CA", leafKey, []*x509.Certificate{leafCert, root.Root()}, "not a CA"},
		{"broken chain", root.Key(), []*x509.Certificate{root.Root(), otherRoot.Root()}, "not signed by"},
		{"empty", root.Key(), nil, "at least one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewAuthority(tt.key, tt.chain)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestCheckCSR(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsa1k, _ := rsa.GenerateKey(rand.Reader, 1024)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	good := newCSR(t, p256, &x509.CertificateRequest{URIs: uris(t, testID)})
	badSig := func() []byte {
		der := bytes.Clone(good.Raw)
		der[len(der)-5] ^= 0xff
		return der
	}()
	pemOf := func(der []byte) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"good", pemOf(good.Raw), nil},
		{"good DER", good.Raw, nil},
		{"other identity", pemOf(newCSR(t, p256, &x509.CertificateRequest{URIs: uris(t, SPIFFEID(td, "default", "db"))}).Raw), ErrIdentityMismatch},
		{"no URI", pemOf(newCSR(t, p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}).Raw), ErrIdentityMismatch},
		{"extra DNS SAN", pemOf(newCSR(t, p256, &x509.CertificateRequest{URIs: uris(t, testID), DNSNames: []string{"evil.example.org"}}).Raw), ErrExtraSAN},
		{"extra URI SAN", pemOf(newCSR(t, p256, &x509.CertificateRequest{URIs: uris(t, testID, SPIFFEID(td, "kube-system", "admin"))}).Raw), ErrExtraSAN},
		{"RSA 1024", pemOf(newCSR(t, rsa1k, &x509.CertificateRequest{URIs: uris(t, testID)}).Raw), ErrKeyType},
		{"ed25519", pemOf(newCSR(t, ed, &x509.CertificateRequest{URIs: uris(t, testID)}).Raw), ErrKeyType},
		{"bad signature", pemOf(badSig), ErrBadSignature},
		{"garbage", []byte("\x00\x01 not a csr at all"), ErrMalformed},
		{"empty", nil, ErrMalformed},
		{"certificate PEM", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), ErrMalformed},
		{"too big", bytes.Repeat([]byte("A"), MaxCSRSize+1), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr, err := ParseCSR(tt.data)
			if err == nil {
				err = CheckCSR(csr, testID)
			}
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if err != nil && Reason(err) == "other" {
				t.Errorf("Reason(%v) = other", err)
			}
		})
	}
}

func TestSPIFFE(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"spiffe://example.org/ns/default/sa/web", "spiffe://example.org/ns/default/sa/web", true},
		{"ns/default/sa/web", "spiffe://example.org/ns/default/sa/web", true},
		{"default/web", "spiffe://example.org/ns/default/sa/web", true},
		{"spiffe://other.org/ns/default/sa/web", "", false},
		{"spiffe://example.org/ns/default", "", false},
		{"spiffe://example.org/ns/default/sa/web/extra", "", false},
		{"spiffe://Example.org/ns/default/sa/web", "", false},
		{"spiffe://example.org/ns/../sa/web", "", false},
		{"spiffe://example.org/ns/a b/sa/web", "", false},
		{"web", "", false},
		{"https://example.org/ns/default/sa/web", "", false},
	}
	for _, tt := range tests {
		got, err := NormalizeIdentity(tt.in, td)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("NormalizeIdentity(%q) = %q, %v; want %q ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestSealer(t *testing.T) {
	dir := t.TempDir()
	key := bytes.Repeat([]byte{7}, 32)
	forms := map[string][]byte{
		"raw":    key,
		"hex":    []byte(hex.EncodeToString(key) + "\n"),
		"base64": []byte("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n"),
	}
	for name, content := range forms {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := LoadSealer(p)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		blob, err := s.Seal([]byte("secret key"), []byte("root-1"))
		if err != nil {
			t.Fatal(err)
		}
		if !IsSealed(blob) || bytes.Contains(blob, []byte("secret key")) {
			t.Fatalf("%s: blob not sealed: %q", name, blob)
		}
		if got, err := s.Open(blob, []byte("root-1")); err != nil || string(got) != "secret key" {
			t.Fatalf("%s: Open = %q, %v", name, got, err)
		}
		if _, err := s.Open(blob, []byte("root-2")); err == nil {
			t.Fatalf("%s: opened with the wrong additional data", name)
		}
	}
	other, _ := NewSealer(bytes.Repeat([]byte{8}, 32))
	s, _ := NewSealer(key)
	blob, _ := s.Seal([]byte("x"), nil)
	if _, err := other.Open(blob, nil); err == nil {
		t.Error("opened with the wrong key")
	}
	loose := filepath.Join(dir, "loose")
	os.WriteFile(loose, key, 0o644)
	if _, err := LoadSealer(loose); err == nil || !strings.Contains(err.Error(), "other users") {
		t.Errorf("world-readable key file: err = %v", err)
	}
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("abcd"), 0o600)
	if _, err := LoadSealer(short); err == nil {
		t.Error("short key accepted")
	}
}

// pki builds an offline root and CA certificates under it for LoadFiles tests.
type pki struct {
	root    *x509.Certificate
	rootKey crypto.Signer
}

func newPKI(t testing.TB) *pki {
	cert, key, err := NewSelfSignedRoot(RootOptions{Algorithm: ECDSAP256, Lifetime: 240 * time.Hour, TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	return &pki{root: cert, rootKey: key}
}

func (p *pki) intermediate(t testing.TB, parent *x509.Certificate, parentKey crypto.Signer, cn string) (*x509.Certificate, crypto.Signer) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(100 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

func writePEM(t testing.TB, path string, mode os.FileMode, certs ...*x509.Certificate) {
	var b []byte
	for _, c := range certs {
		b = append(b, EncodeCertPEM(c.Raw)...)
	}
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
}

func writeKey(t testing.TB, path string, mode os.FileMode, k crypto.Signer) {
	der, _ := MarshalKey(k)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, mode)
}

func TestLoadFiles(t *testing.T) {
	p := newPKI(t)
	int1, int1Key := p.intermediate(t, p.root, p.rootKey, "int1")
	int2, int2Key := p.intermediate(t, int1, int1Key, "int2")
	strangerRoot := newPKI(t)
	stranger, strangerKey := strangerRoot.intermediate(t, strangerRoot.root, strangerRoot.rootKey, "stranger")

	type files struct {
		caCert  []*x509.Certificate
		key     crypto.Signer
		keyMode os.FileMode
		roots   []*x509.Certificate
		chain   []*x509.Certificate // nil: no cert-chain.pem
	}
	tests := []struct {
		name      string
		f         files
		wantChain []string
		wantErr   string
	}{
		{"intermediate, chain with root (Istio sample)", files{[]*x509.Certificate{int1}, int1Key, 0o600, []*x509.Certificate{p.root}, []*x509.Certificate{int1, p.root}}, []string{"int1", p.root.Subject.CommonName}, ""},
		{"intermediate, no cert-chain.pem", files{[]*x509.Certificate{int1}, int1Key, 0o600, []*x509.Certificate{p.root}, nil}, []string{"int1", p.root.Subject.CommonName}, ""},
		{"two levels", files{[]*x509.Certificate{int2}, int2Key, 0o640, []*x509.Certificate{p.root}, []*x509.Certificate{int2, int1}}, []string{"int2", "int1", p.root.Subject.CommonName}, ""},
		{"two roots in bundle", files{[]*x509.Certificate{int1}, int1Key, 0o400, []*x509.Certificate{strangerRoot.root, p.root}, []*x509.Certificate{int1}}, []string{"int1", p.root.Subject.CommonName}, ""},
		{"root as CA", files{[]*x509.Certificate{p.root}, p.rootKey, 0o600, []*x509.Certificate{p.root}, nil}, []string{p.root.Subject.CommonName}, ""},
		{"world-readable key", files{[]*x509.Certificate{int1}, int1Key, 0o644, []*x509.Certificate{p.root}, nil}, nil, "other users"},
		{"wrong key", files{[]*x509.Certificate{int1}, int2Key, 0o600, []*x509.Certificate{p.root}, nil}, nil, "does not match"},
		{"foreign CA", files{[]*x509.Certificate{stranger}, strangerKey, 0o600, []*x509.Certificate{p.root}, nil}, nil, "does not chain"},
		{"missing intermediate", files{[]*x509.Certificate{int2}, int2Key, 0o600, []*x509.Certificate{p.root}, nil}, nil, "does not chain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writePEM(t, filepath.Join(dir, FileCACert), 0o644, tt.f.caCert...)
			writeKey(t, filepath.Join(dir, FileCAKey), tt.f.keyMode, tt.f.key)
			writePEM(t, filepath.Join(dir, FileRootCert), 0o644, tt.f.roots...)
			if tt.f.chain != nil {
				writePEM(t, filepath.Join(dir, FileCertChain), 0o644, tt.f.chain...)
			}
			pc, err := LoadFiles(dir, time.Now())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range pc.Authority.Chain() {
				got = append(got, c.Subject.CommonName)
			}
			if strings.Join(got, "|") != strings.Join(tt.wantChain, "|") {
				t.Errorf("chain %v, want %v", got, tt.wantChain)
			}
			if len(pc.Roots) != len(tt.f.roots) {
				t.Errorf("%d roots, want %d", len(pc.Roots), len(tt.f.roots))
			}
			// A leaf from the plugged-in CA verifies against the bundle.
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			csr := newCSR(t, k, &x509.CertificateRequest{})
			l, err := pc.Authority.Issue(&LeafRequest{PublicKey: csr.PublicKey, RawSPKI: csr.RawSubjectPublicKeyInfo, URIs: []string{testID}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)})
			if err != nil {
				t.Fatal(err)
			}
			lc, _ := x509.ParseCertificate(l.DER)
			roots, inter := x509.NewCertPool(), x509.NewCertPool()
			for _, r := range pc.Roots {
				roots.AddCert(r)
			}
			for _, c := range pc.Authority.Chain()[:len(pc.Authority.Chain())-1] {
				inter.AddCert(c)
			}
			if _, err := lc.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("leaf does not verify: %v", err)
			}
		})
	}
}

func BenchmarkIssue(b *testing.B) {
	a := newRoot(b, ECDSAP256)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr := newCSR(b, k, &x509.CertificateRequest{URIs: uris(b, testID)})
	b.Run("meshd", func(b *testing.B) {
		for b.Loop() {
			now := time.Now()
			if _, err := a.Issue(&LeafRequest{PublicKey: csr.PublicKey, RawSPKI: csr.RawSubjectPublicKeyInfo, URIs: []string{testID}, NotBefore: now, NotAfter: now.Add(time.Hour)}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stdlib", func(b *testing.B) {
		for b.Loop() {
			now := time.Now()
			serial, _ := randomSerial()
			tmpl := &x509.Certificate{SerialNumber: serial, URIs: csr.URIs, NotBefore: now, NotAfter: now.Add(time.Hour),
				KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, BasicConstraintsValid: true}
			if _, err := x509.CreateCertificate(rand.Reader, tmpl, a.Certificate(), csr.PublicKey, a.Key()); err != nil {
				b.Fatal(err)
			}
		}
	})
}
