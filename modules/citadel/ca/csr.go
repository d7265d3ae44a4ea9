package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// Reasons a CSR is refused. They are for the server log and metrics, never
// for the caller, who gets an opaque error.
var (
	ErrMalformed        = errors.New("malformed certificate request")
	ErrBadSignature     = errors.New("certificate request self-signature is invalid")
	ErrKeyType          = errors.New("unacceptable public key")
	ErrIdentityMismatch = errors.New("certificate request is for another identity")
	ErrExtraSAN         = errors.New("certificate request asks for names besides the identity")
)

// Reason maps a CSR error to a short metric label.
func Reason(err error) string {
	switch {
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrBadSignature):
		return "bad_signature"
	case errors.Is(err, ErrKeyType):
		return "key_type"
	case errors.Is(err, ErrIdentityMismatch):
		return "identity_mismatch"
	case errors.Is(err, ErrExtraSAN):
		return "extra_san"
	}
	return "other"
}

// MaxCSRSize bounds the PEM a caller may send.
const MaxCSRSize = 64 << 10

// CSR is a parsed certificate request: the parts the CA uses.
type CSR struct {
	Raw     []byte
	RawTBS  []byte // the signed CertificationRequestInfo
	RawSPKI []byte // DER SubjectPublicKeyInfo, copied into the certificate
	// PublicKey is the parsed key of RawSPKI.
	PublicKey crypto.PublicKey
	Signature []byte
	// URIs are the URI subject alternative names.
	URIs []string
	// extraNames counts the other subject alternative names.
	extraNames int
	sigAlg     x509.SignatureAlgorithm
	// std is set when the standard library parsed the request (it was
	// off the fast path); it then checks the signature too.
	std *x509.CertificateRequest
}

// ParseCSR parses a PEM (or, failing that, DER) certificate request. It does
// not check the signature; CheckCSR does.
func ParseCSR(data []byte) (*CSR, error) {
	if len(data) == 0 || len(data) > MaxCSRSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(data))
	}
	raw := data
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: PEM block %q", ErrMalformed, b.Type)
		}
		raw = b.Bytes
	}
	if c, err := parseFast(raw); err == nil {
		return c, nil
	}
	csr, err := x509.ParseCertificateRequest(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	c := &CSR{Raw: csr.Raw, RawTBS: csr.RawTBSCertificateRequest, RawSPKI: csr.RawSubjectPublicKeyInfo,
		PublicKey: csr.PublicKey, Signature: csr.Signature, sigAlg: csr.SignatureAlgorithm, std: csr,
		extraNames: len(csr.DNSNames) + len(csr.EmailAddresses) + len(csr.IPAddresses)}
	for _, u := range csr.URIs {
		c.URIs = append(c.URIs, u.String())
	}
	return c, nil
}

// CheckKey accepts ECDSA P-256 and P-384 keys and RSA keys of 2048 to 8192
// bits.
func CheckKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("%w: ECDSA curve %s", ErrKeyType, k.Curve.Params().Name)
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 8192 {
			return fmt.Errorf("%w: RSA key of %d bits (want 2048 to 8192)", ErrKeyType, n)
		}
		return nil
	}
	return fmt.Errorf("%w: %T", ErrKeyType, pub)
}

// CheckCSR checks that csr asks for exactly identity (one URI SAN and no
// other names), carries an acceptable key, and is signed by that key. The
// subject and requested extensions are ignored: the CA writes its own.
func CheckCSR(csr *CSR, identity string) error {
	if err := CheckKey(csr.PublicKey); err != nil {
		return err
	}
	if csr.extraNames > 0 {
		return fmt.Errorf("%w: %d DNS/email/IP or other names", ErrExtraSAN, csr.extraNames)
	}
	switch len(csr.URIs) {
	case 0:
		return fmt.Errorf("%w: no URI SAN (want %s)", ErrIdentityMismatch, identity)
	case 1:
		if csr.URIs[0] != identity {
			return fmt.Errorf("%w: asks for %s, authenticated as %s", ErrIdentityMismatch, csr.URIs[0], identity)
		}
	default:
		return fmt.Errorf("%w: %d URI SANs", ErrExtraSAN, len(csr.URIs))
	}
	if err := csr.checkSignature(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	return nil
}

func (csr *CSR) checkSignature() error {
	if csr.std != nil {
		return csr.std.CheckSignature()
	}
	return csr.checkFastSignature()
}
