package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// Authority issues leaves with one CA key. It is immutable and safe for
// concurrent use; rotation swaps whole Authorities.
type Authority struct {
	key       crypto.Signer
	cert      *x509.Certificate   // signing certificate
	chain     []*x509.Certificate // signing certificate first, root last
	chainPEM  []string
	sigAlgDER []byte
	hash      crypto.Hash
}

// NewAuthority checks that key belongs to chain[0], that chain[0] may sign
// certificates, and that each certificate of chain is signed by the next
// (the last one being the root), then returns an Authority. It also makes
// and checks one signature, so a key that does not work fails here and not
// on the first CSR.
func NewAuthority(key crypto.Signer, chain []*x509.Certificate) (*Authority, error) {
	if key == nil || len(chain) == 0 {
		return nil, errors.New("authority needs a key and at least one certificate")
	}
	cert := chain[0]
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, fmt.Errorf("signing certificate %q is not a CA certificate", cert.Subject)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("signing certificate %q lacks the certificate-signing key usage", cert.Subject)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := key.Public().(equaler); !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("CA key does not match signing certificate %q", cert.Subject)
	}
	for i := 0; i+1 < len(chain); i++ {
		if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
			return nil, fmt.Errorf("chain: %q is not signed by %q: %w", chain[i].Subject, chain[i+1].Subject, err)
		}
	}
	alg, h, err := signatureParams(key.Public())
	if err != nil {
		return nil, err
	}
	a := &Authority{key: key, cert: cert, chain: chain, sigAlgDER: alg, hash: h}
	for _, c := range chain {
		a.chainPEM = append(a.chainPEM, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
	}
	// Self-test: one signature, always verified.
	hh := h.New()
	hh.Write([]byte("meshd citadel self-test"))
	digest := hh.Sum(nil)
	sig, err := key.Sign(rand.Reader, digest, h)
	if err == nil {
		err = verifySignature(key.Public(), h, digest, sig)
	}
	if err != nil {
		return nil, fmt.Errorf("CA key self-test: %w", err)
	}
	return a, nil
}

// Certificate returns the signing certificate.
func (a *Authority) Certificate() *x509.Certificate { return a.cert }

// Root returns the last certificate of the chain, the trust anchor.
func (a *Authority) Root() *x509.Certificate { return a.chain[len(a.chain)-1] }

// Chain returns the signing certificate, intermediates and root, in that
// order. The slice must not be modified.
func (a *Authority) Chain() []*x509.Certificate { return a.chain }

// ChainPEM returns Chain PEM-encoded, one certificate per element: what
// follows the leaf in an IstioCertificateResponse. The slice must not be
// modified.
func (a *Authority) ChainPEM() []string { return a.chainPEM }

// Key returns the CA key.
func (a *Authority) Key() crypto.Signer { return a.key }

// Expiry is the signing certificate's NotAfter: no leaf outlives it.
func (a *Authority) Expiry() time.Time { return a.cert.NotAfter }

// EncodeCertPEM PEM-encodes one DER certificate.
func EncodeCertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// ParseCertsPEM parses every CERTIFICATE block of data. Other block types
// are an error, and so is finding none.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate found")
	}
	return out, nil
}
