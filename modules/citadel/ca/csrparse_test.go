package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"slices"
	"testing"
)

func TestFastPath(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa2k, _ := rsa.GenerateKey(rand.Reader, 2048)
	u := uris(t, testID)
	tests := []struct {
		name string
		key  crypto.Signer
		tmpl *x509.CertificateRequest
		fast bool
	}{
		{"P-256, URI", p256, &x509.CertificateRequest{URIs: u}, true},
		{"P-256, URI and subject (Istio agent)", p256, &x509.CertificateRequest{URIs: u, Subject: pkix.Name{Organization: []string{td}}}, true},
		{"RSA-2048, URI", rsa2k, &x509.CertificateRequest{URIs: u}, true},
		{"P-256, URI and DNS", p256, &x509.CertificateRequest{URIs: u, DNSNames: []string{"x.example.org"}}, false},
		{"P-384 signs with SHA-384", p384, &x509.CertificateRequest{URIs: u}, false},
		{"SHA-512 signature", p256, &x509.CertificateRequest{URIs: u, SignatureAlgorithm: x509.ECDSAWithSHA512}, false},
		{"no extensions", p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}, false},
		{"another extension", p256, &x509.CertificateRequest{URIs: u, ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: []byte{0x30, 0x03, 0x01, 0x01, 0xff}}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			der, err := x509.CreateCertificateRequest(rand.Reader, tt.tmpl, tt.key)
			if err != nil {
				t.Fatal(err)
			}
			c, err := ParseCSR(der)
			if err != nil {
				t.Fatal(err)
			}
			if fast := c.std == nil; fast != tt.fast {
				t.Fatalf("fast path %v, want %v", fast, tt.fast)
			}
			std, _ := x509.ParseCertificateRequest(der)
			sameAsStd(t, c, std)
			if tt.tmpl.DNSNames == nil && len(tt.tmpl.URIs) == 1 {
				if err := CheckCSR(c, testID); err != nil && CheckKey(c.PublicKey) == nil {
					t.Fatalf("CheckCSR: %v", err)
				}
			}
			// A flipped bit in the signed part fails either way.
			bad := bytes.Clone(der)
			bad[len(c.RawTBS)/2+10] ^= 0x01
			if c2, err := ParseCSR(bad); err == nil && c2.extraNames == 0 && len(c2.URIs) == 1 && c2.URIs[0] == testID && CheckKey(c2.PublicKey) == nil {
				if err := CheckCSR(c2, testID); err == nil {
					t.Fatal("tampered CSR accepted")
				}
			}
		})
	}
}

// sameAsStd checks that a CSR parsed by ParseCSR says what the standard
// parser says.
func sameAsStd(t testing.TB, c *CSR, std *x509.CertificateRequest) {
	t.Helper()
	if std == nil {
		t.Fatalf("the standard parser rejects a CSR the fast path accepted")
	}
	var stdURIs []string
	for _, u := range std.URIs {
		stdURIs = append(stdURIs, u.String())
	}
	if !slices.Equal(c.URIs, stdURIs) || !bytes.Equal(c.RawSPKI, std.RawSubjectPublicKeyInfo) ||
		!bytes.Equal(c.RawTBS, std.RawTBSCertificateRequest) || !bytes.Equal(c.Signature, std.Signature) ||
		c.extraNames < len(std.DNSNames)+len(std.EmailAddresses)+len(std.IPAddresses) {
		t.Fatalf("fast path disagrees with the standard parser: URIs %q vs %q, extra %d", c.URIs, stdURIs, c.extraNames)
	}
	if (c.checkSignature() == nil) != (std.CheckSignature() == nil) {
		t.Fatalf("signature check disagrees: %v, std %v", c.checkSignature(), std.CheckSignature())
	}
}

// FuzzParseCSR: whatever the fast path accepts, the standard parser
// accepts with the same names, key and signature verdict.
func FuzzParseCSR(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	r, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, key := range []crypto.Signer{k, r} {
		for _, tmpl := range []*x509.CertificateRequest{
			{URIs: uris(f, testID)},
			{URIs: uris(f, testID, SPIFFEID(td, "a", "b")), DNSNames: []string{"a.b"}},
		} {
			der, _ := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
			f.Add(der)
		}
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		c, err := parseFast(der)
		if err != nil {
			return
		}
		std, _ := x509.ParseCertificateRequest(der)
		sameAsStd(t, c, std)
	})
}

func BenchmarkParseCSR(b *testing.B) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: uris(b, testID)}, k)
	p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	b.Run("meshd", func(b *testing.B) {
		for b.Loop() {
			if c, err := ParseCSR(p); err != nil || c.std != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stdlib", func(b *testing.B) {
		for b.Loop() {
			blk, _ := pem.Decode(p)
			if _, err := x509.ParseCertificateRequest(blk.Bytes); err != nil {
				b.Fatal(err)
			}
		}
	})
}
