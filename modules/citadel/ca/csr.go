package ca

import (
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

// ParseCSR parses a PEM (or, failing that, DER) certificate request. It does
// not check the signature; CheckCSR does.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	if len(data) == 0 || len(data) > MaxCSRSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(data))
	}
	der := data
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: PEM block %q", ErrMalformed, b.Type)
		}
		der = b.Bytes
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return csr, nil
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
func CheckCSR(csr *x509.CertificateRequest, identity string) error {
	if err := CheckKey(csr.PublicKey); err != nil {
		return err
	}
	if n := len(csr.DNSNames) + len(csr.EmailAddresses) + len(csr.IPAddresses); n > 0 {
		return fmt.Errorf("%w: %d DNS/email/IP names", ErrExtraSAN, n)
	}
	switch len(csr.URIs) {
	case 0:
		return fmt.Errorf("%w: no URI SAN (want %s)", ErrIdentityMismatch, identity)
	case 1:
		if got := csr.URIs[0].String(); got != identity {
			return fmt.Errorf("%w: asks for %s, authenticated as %s", ErrIdentityMismatch, got, identity)
		}
	default:
		return fmt.Errorf("%w: %d URI SANs", ErrExtraSAN, len(csr.URIs))
	}
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	return nil
}
