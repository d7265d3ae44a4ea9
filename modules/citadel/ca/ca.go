// Package ca is citadel's certificate authority without any of the
// plumbing: key generation, self-signed roots, plugged-in CA files in Istio's
// layout, CSR checks and leaf issuance. It knows nothing of gRPC, the store or
// rotation; the citadel module composes it with those.
//
// Leaves are encoded by a small DER writer (leaf.go) instead of
// x509.CreateCertificate, because the standard library verifies every
// signature it has just made. For an in-memory ECDSA or RSA key that check
// costs a second ECDSA verification per certificate on the CSR hot path and
// guards only against a faulty crypto.Signer, so Authority skips it for
// *ecdsa.PrivateKey and *rsa.PrivateKey (Go's RSA signer checks its own CRT
// result) and keeps it for every other signer, such as an HSM or a plugin.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// KeyAlgorithm names a key type for CA keys.
type KeyAlgorithm string

// Supported CA key algorithms.
const (
	ECDSAP256 KeyAlgorithm = "ECDSA-P256"
	RSA2048   KeyAlgorithm = "RSA-2048"
	RSA4096   KeyAlgorithm = "RSA-4096"
)

// KeyAlgorithms lists the accepted values of KeyAlgorithm, default first.
var KeyAlgorithms = []KeyAlgorithm{ECDSAP256, RSA2048, RSA4096}

// GenerateKey makes a new private key of the given algorithm.
func GenerateKey(alg KeyAlgorithm) (crypto.Signer, error) {
	switch alg {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, fmt.Errorf("unknown key algorithm %q (want one of %v)", alg, KeyAlgorithms)
}

// RootOptions describe a self-signed root.
type RootOptions struct {
	Algorithm   KeyAlgorithm
	Lifetime    time.Duration
	TrustDomain string // goes into the subject's organization
	Now         time.Time
}

// NewSelfSignedRoot makes a key and a self-signed CA certificate for it.
// Roots are made rarely, so this uses x509.CreateCertificate.
func NewSelfSignedRoot(opts RootOptions) (*x509.Certificate, crypto.Signer, error) {
	if opts.Lifetime <= 0 {
		return nil, nil, errors.New("root lifetime must be positive")
	}
	key, err := GenerateKey(opts.Algorithm)
	if err != nil {
		return nil, nil, err
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	// The serial in the name keeps the subjects of two roots apart even
	// when they are made in the same second, since clients pick
	// certificates and build chains by issuer name.
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{opts.TrustDomain},
			CommonName:   fmt.Sprintf("meshd root CA %s %x", now.UTC().Format("2006-01-02"), serial.Bytes()[:4]),
		},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(opts.Lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create root certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// CertID is a short stable name for a certificate: the first 8 bytes of the
// SHA-256 of its DER, in hex. Roots are named by it in the store and in
// `meshd ca status`.
func CertID(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:8])
}

// randomSerial returns a positive 127-bit serial whose DER encoding is
// always 16 bytes (the top byte is never zero, so no padding is needed).
func randomSerial() (*big.Int, error) {
	var b [16]byte
	if err := fillSerial(b[:]); err != nil {
		return nil, err
	}
	return new(big.Int).SetBytes(b[:]), nil
}

func fillSerial(b []byte) error {
	if _, err := rand.Read(b); err != nil {
		return fmt.Errorf("serial: %w", err)
	}
	b[0] &= 0x7f
	if b[0] == 0 {
		b[0] = 1
	}
	return nil
}
