package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"time"
)

// DER tags used by the leaf writer.
const (
	tagBoolean     = 0x01
	tagInteger     = 0x02
	tagBitString   = 0x03
	tagOctetString = 0x04
	tagOID         = 0x06
	tagUTCTime     = 0x17
	tagGenTime     = 0x18
	tagSequence    = 0x30
	tagExplicit0   = 0xa0
	tagExplicit3   = 0xa3
	tagSANDNS      = 0x82
	tagSANURI      = 0x86
	tagSANIP       = 0x87
	tagAKIKeyID    = 0x80
)

// Pre-encoded pieces of every leaf.
var (
	derVersion3  = []byte{tagExplicit0, 3, tagInteger, 1, 2}
	derEmptyName = []byte{tagSequence, 0}
	// Algorithm identifiers (RFC 5758, RFC 4055).
	derECDSAWithSHA256 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}
	derECDSAWithSHA384 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03}
	derSHA256WithRSA   = []byte{0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00}
	// Extension OIDs.
	oidKeyUsage         = []byte{0x55, 0x1d, 0x0f}
	oidSubjectAltName   = []byte{0x55, 0x1d, 0x11}
	oidBasicConstraints = []byte{0x55, 0x1d, 0x13}
	oidAuthorityKeyID   = []byte{0x55, 0x1d, 0x23}
	oidExtKeyUsage      = []byte{0x55, 0x1d, 0x25}
	// Extension values: KeyUsage digitalSignature, or digitalSignature and
	// keyEncipherment (RSA leaves); ExtKeyUsage serverAuth+clientAuth;
	// BasicConstraints cA=false.
	derKUDigitalSignature = []byte{tagBitString, 2, 7, 0x80}
	derKUDigSigKeyEnc     = []byte{tagBitString, 2, 5, 0xa0}
	derEKUServerClient    = []byte{0x30, 0x14,
		0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01,
		0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02}
	derBasicConstraintsLeaf = []byte{tagSequence, 0}
)

// appendTLV appends tag, DER length and content to b.
func appendTLV(b []byte, tag byte, content []byte) []byte {
	b = appendHeader(b, tag, len(content))
	return append(b, content...)
}

func appendHeader(b []byte, tag byte, n int) []byte {
	b = append(b, tag)
	switch {
	case n < 0x80:
		return append(b, byte(n))
	case n < 0x100:
		return append(b, 0x81, byte(n))
	case n < 0x10000:
		return append(b, 0x82, byte(n>>8), byte(n))
	default:
		return append(b, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
}

func appendTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	if y := t.Year(); y >= 1950 && y < 2050 {
		return appendTLV(b, tagUTCTime, []byte(t.Format("060102150405Z")))
	}
	return appendTLV(b, tagGenTime, []byte(t.Format("20060102150405Z")))
}

func appendExtension(b []byte, oid []byte, critical bool, value []byte) []byte {
	var e []byte
	e = appendTLV(e, tagOID, oid)
	if critical {
		e = append(e, tagBoolean, 1, 0xff)
	}
	e = appendTLV(e, tagOctetString, value)
	return appendTLV(b, tagSequence, e)
}

// LeafRequest is what goes into a leaf certificate.
type LeafRequest struct {
	// PublicKey is the subject's key; RawSPKI its DER SubjectPublicKeyInfo
	// (x509.CertificateRequest.RawSubjectPublicKeyInfo), copied verbatim.
	PublicKey crypto.PublicKey
	RawSPKI   []byte
	URIs      []string
	DNSNames  []string
	IPs       []net.IP
	NotBefore time.Time
	NotAfter  time.Time
}

// Leaf is an issued certificate.
type Leaf struct {
	DER       []byte
	Serial    string // lowercase hex, 32 digits
	NotBefore time.Time
	NotAfter  time.Time
}

// encodeTBS builds the TBSCertificate of a leaf. serial is 16 bytes whose
// top byte is 0x01..0x7f (see fillSerial), so it is a minimal positive
// INTEGER as is.
func (a *Authority) encodeTBS(req *LeafRequest, serial []byte) ([]byte, error) {
	if len(req.URIs)+len(req.DNSNames)+len(req.IPs) == 0 {
		return nil, errors.New("leaf without subject alternative names")
	}
	var san []byte
	for _, u := range req.URIs {
		san = appendTLV(san, tagSANURI, []byte(u))
	}
	for _, d := range req.DNSNames {
		san = appendTLV(san, tagSANDNS, []byte(d))
	}
	for _, ip := range req.IPs {
		if v4 := ip.To4(); v4 != nil {
			ip = v4
		}
		san = appendTLV(san, tagSANIP, ip)
	}
	ku := derKUDigitalSignature
	if _, ok := req.PublicKey.(*rsa.PublicKey); ok {
		ku = derKUDigSigKeyEnc
	}

	exts := make([]byte, 0, 160+len(san))
	exts = appendExtension(exts, oidKeyUsage, true, ku)
	exts = appendExtension(exts, oidExtKeyUsage, false, derEKUServerClient)
	exts = appendExtension(exts, oidBasicConstraints, true, derBasicConstraintsLeaf)
	if len(a.cert.SubjectKeyId) > 0 {
		exts = appendExtension(exts, oidAuthorityKeyID, false,
			appendTLV(nil, tagSequence, appendTLV(nil, tagAKIKeyID, a.cert.SubjectKeyId)))
	}
	// The subject is empty, so the SAN extension must be critical (RFC 5280 4.2.1.6).
	exts = appendExtension(exts, oidSubjectAltName, true, appendTLV(nil, tagSequence, san))

	var validity []byte
	validity = appendTime(validity, req.NotBefore)
	validity = appendTime(validity, req.NotAfter)

	body := make([]byte, 0, 256+len(a.cert.RawSubject)+len(req.RawSPKI)+len(exts))
	body = append(body, derVersion3...)
	body = appendTLV(body, tagInteger, serial)
	body = append(body, a.sigAlgDER...)
	body = append(body, a.cert.RawSubject...)
	body = appendTLV(body, tagSequence, validity)
	body = append(body, derEmptyName...)
	body = append(body, req.RawSPKI...)
	body = appendHeader(body, tagExplicit3, len(exts)+lenHeader(len(exts)))
	body = appendTLV(body, tagSequence, exts)
	return appendTLV(make([]byte, 0, len(body)+4), tagSequence, body), nil
}

func lenHeader(n int) int {
	switch {
	case n < 0x80:
		return 2
	case n < 0x100:
		return 3
	case n < 0x10000:
		return 4
	default:
		return 5
	}
}

// Issue signs a leaf certificate. NotAfter is cut to the signing
// certificate's own expiry.
func (a *Authority) Issue(req *LeafRequest) (*Leaf, error) {
	if len(req.RawSPKI) == 0 || req.PublicKey == nil {
		return nil, errors.New("leaf without public key")
	}
	if req.NotAfter.After(a.cert.NotAfter) {
		req.NotAfter = a.cert.NotAfter
	}
	if req.NotBefore.Before(a.cert.NotBefore) {
		req.NotBefore = a.cert.NotBefore
	}
	if !req.NotAfter.After(req.NotBefore) {
		return nil, fmt.Errorf("leaf validity ends before it starts (CA expires %s)", a.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	var serial [16]byte
	if err := fillSerial(serial[:]); err != nil {
		return nil, err
	}
	tbs, err := a.encodeTBS(req, serial[:])
	if err != nil {
		return nil, err
	}
	sig, err := a.sign(tbs)
	if err != nil {
		return nil, err
	}
	body := make([]byte, 0, len(tbs)+len(a.sigAlgDER)+len(sig)+6)
	body = append(body, tbs...)
	body = append(body, a.sigAlgDER...)
	body = appendHeader(body, tagBitString, len(sig)+1)
	body = append(body, 0)
	body = append(body, sig...)
	out := appendTLV(make([]byte, 0, len(body)+4), tagSequence, body)
	return &Leaf{
		DER:       out,
		Serial:    hex.EncodeToString(serial[:]),
		NotBefore: req.NotBefore.UTC().Truncate(time.Second),
		NotAfter:  req.NotAfter.UTC().Truncate(time.Second),
	}, nil
}

// sign signs tbs with the CA key, checking the signature afterwards unless
// the key is one whose implementation is trusted (see the package comment).
func (a *Authority) sign(tbs []byte) ([]byte, error) {
	h := a.hash.New()
	h.Write(tbs)
	digest := h.Sum(nil)
	var (
		sig []byte
		err error
	)
	switch k := a.key.(type) {
	case *ecdsa.PrivateKey:
		sig, err = ecdsa.SignASN1(rand.Reader, k, digest)
	case *rsa.PrivateKey:
		sig, err = rsa.SignPKCS1v15(rand.Reader, k, a.hash, digest)
	default:
		sig, err = a.key.Sign(rand.Reader, digest, a.hash)
		if err == nil {
			err = verifySignature(a.key.Public(), a.hash, digest, sig)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	return sig, nil
}

func verifySignature(pub crypto.PublicKey, h crypto.Hash, digest, sig []byte) error {
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(p, digest, sig) {
			return errors.New("signer returned an invalid ECDSA signature")
		}
		return nil
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(p, h, digest, sig)
	}
	return fmt.Errorf("unsupported CA key type %T", pub)
}

// signatureParams picks the signature algorithm for a CA key.
func signatureParams(pub crypto.PublicKey) (algDER []byte, h crypto.Hash, err error) {
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		switch p.Curve {
		case elliptic.P256():
			return derECDSAWithSHA256, crypto.SHA256, nil
		case elliptic.P384():
			return derECDSAWithSHA384, crypto.SHA384, nil
		}
		return nil, 0, fmt.Errorf("unsupported CA curve %s", p.Curve.Params().Name)
	case *rsa.PublicKey:
		if p.N.BitLen() < 2048 {
			return nil, 0, fmt.Errorf("CA RSA key of %d bits is too small (minimum 2048)", p.N.BitLen())
		}
		return derSHA256WithRSA, crypto.SHA256, nil
	}
	return nil, 0, fmt.Errorf("unsupported CA key type %T", pub)
}
