package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"errors"
)

// A fast path for the CSRs workloads actually send: a PKCS#10 request with
// a subject alternative name extension and nothing else requested, signed
// with ECDSA or RSA over SHA-256. x509.ParseCertificateRequest decodes with
// reflection and costs several times the DER walk below; on the CSR hot
// path that is a tenth of the CA's work. Anything off that shape, however
// slightly, goes to the standard library instead, so the fast path decides
// nothing the standard parser would not: every structure it accepts is
// strict DER, the key is parsed by x509.ParsePKIXPublicKey, and the
// signature is verified by crypto/ecdsa or crypto/rsa. FuzzParseCSR checks
// it against the standard parser.

// OIDs the fast path recognises, as DER contents.
var (
	oidExtensionRequest = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e} // 1.2.840.113549.1.9.14
	oidECDSAWithSHA256  = []byte{0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}
	oidSHA256WithRSA    = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b}
)

// errSlowPath sends a CSR to the standard parser.
var errSlowPath = errors.New("not on the fast path")

// der reads DER TLVs from a byte slice.
type der []byte

// read returns the next TLV's tag, contents and the full TLV, refusing
// anything that is not strict DER (indefinite or non-minimal lengths,
// multi-byte tags).
func (d *der) read() (tag byte, contents, full []byte, ok bool) {
	b := *d
	if len(b) < 2 || b[0]&0x1f == 0x1f {
		return 0, nil, nil, false
	}
	tag = b[0]
	n, hdr := int(b[1]), 2
	if n >= 0x80 {
		nb := n & 0x7f
		if nb == 0 || nb > 3 || len(b) < 2+nb || b[2] == 0 {
			return 0, nil, nil, false
		}
		n = 0
		for _, x := range b[2 : 2+nb] {
			n = n<<8 | int(x)
		}
		if n < 0x80 || (nb > 1 && n < 1<<(8*(nb-1))) {
			return 0, nil, nil, false
		}
		hdr = 2 + nb
	}
	if len(b)-hdr < n {
		return 0, nil, nil, false
	}
	*d = b[hdr+n:]
	return tag, b[hdr : hdr+n], b[:hdr+n], true
}

// expect reads a TLV with the given tag.
func (d *der) expect(tag byte) (contents, full []byte, ok bool) {
	t, c, f, ok := d.read()
	if !ok || t != tag {
		return nil, nil, false
	}
	return c, f, true
}

// parseFast decodes der on the fast path, or returns errSlowPath.
func parseFast(raw []byte) (*CSR, error) {
	outer := der(raw)
	body, _, ok := outer.expect(tagSequence)
	if !ok || len(outer) != 0 {
		return nil, errSlowPath
	}
	d := der(body)
	infoBody, info, ok1 := d.expect(tagSequence)
	algBody, _, ok2 := d.expect(tagSequence)
	sigBits, _, ok3 := d.expect(tagBitString)
	if !ok1 || !ok2 || !ok3 || len(d) != 0 || len(sigBits) < 2 || sigBits[0] != 0 {
		return nil, errSlowPath
	}
	c := &CSR{Raw: raw, RawTBS: info, Signature: sigBits[1:]}

	// Signature algorithm: ecdsa-with-SHA256 (no parameters) or
	// sha256WithRSAEncryption (NULL parameters).
	a := der(algBody)
	oid, _, ok := a.expect(tagOID)
	switch {
	case ok && bytes.Equal(oid, oidECDSAWithSHA256) && len(a) == 0:
		c.sigAlg = x509.ECDSAWithSHA256
	case ok && bytes.Equal(oid, oidSHA256WithRSA) && bytes.Equal(a, []byte{0x05, 0x00}):
		c.sigAlg = x509.SHA256WithRSA
	default:
		return nil, errSlowPath
	}

	// CertificationRequestInfo: version 0, subject, key, attributes.
	d = der(infoBody)
	if v, _, ok := d.expect(tagInteger); !ok || len(v) != 1 || v[0] != 0 {
		return nil, errSlowPath
	}
	if _, _, ok := d.expect(tagSequence); !ok { // subject: ignored, the CA writes its own
		return nil, errSlowPath
	}
	_, spki, ok := d.expect(tagSequence)
	if !ok {
		return nil, errSlowPath
	}
	attrs, _, ok := d.expect(tagExplicit0)
	if !ok || len(d) != 0 {
		return nil, errSlowPath
	}
	// Exactly one attribute, extensionRequest, holding exactly one
	// extension, subjectAltName, non-critical.
	ad := der(attrs)
	attr, _, ok := ad.expect(tagSequence)
	if !ok || len(ad) != 0 {
		return nil, errSlowPath
	}
	ad = der(attr)
	if oid, _, ok := ad.expect(tagOID); !ok || !bytes.Equal(oid, oidExtensionRequest) {
		return nil, errSlowPath
	}
	set, _, ok := ad.expect(0x31)
	if !ok || len(ad) != 0 {
		return nil, errSlowPath
	}
	sd := der(set)
	exts, _, ok := sd.expect(tagSequence)
	if !ok || len(sd) != 0 {
		return nil, errSlowPath
	}
	ed := der(exts)
	ext, _, ok := ed.expect(tagSequence)
	if !ok || len(ed) != 0 {
		return nil, errSlowPath
	}
	ed = der(ext)
	if oid, _, ok := ed.expect(tagOID); !ok || !bytes.Equal(oid, oidSubjectAltName) {
		return nil, errSlowPath
	}
	value, _, ok := ed.expect(tagOctetString)
	if !ok || len(ed) != 0 {
		return nil, errSlowPath
	}
	vd := der(value)
	names, _, ok := vd.expect(tagSequence)
	if !ok || len(vd) != 0 || len(names) == 0 {
		return nil, errSlowPath
	}
	nd := der(names)
	for len(nd) > 0 {
		tag, v, _, ok := nd.read()
		if !ok {
			return nil, errSlowPath
		}
		if tag != tagSANURI {
			// Any other name gets the CSR refused (ErrExtraSAN), so there
			// is no speed to win; the standard parser checks its syntax
			// and the refusal says what it found.
			return nil, errSlowPath
		}
		// Only well-formed SPIFFE IDs, which are plain IA5 and parse as
		// URIs with a valid host just as the standard parser demands.
		if _, _, _, err := ParseSPIFFEID(string(v)); err != nil {
			return nil, errSlowPath
		}
		c.URIs = append(c.URIs, string(v))
	}

	pub, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		return nil, errSlowPath
	}
	switch pub.(type) {
	case *ecdsa.PublicKey:
		if c.sigAlg != x509.ECDSAWithSHA256 {
			return nil, errSlowPath
		}
	case *rsa.PublicKey:
		if c.sigAlg != x509.SHA256WithRSA {
			return nil, errSlowPath
		}
	default:
		return nil, errSlowPath
	}
	c.PublicKey, c.RawSPKI = pub, spki
	return c, nil
}

// checkFastSignature verifies a fast-path CSR's self-signature.
func (c *CSR) checkFastSignature() error {
	digest := crypto.SHA256.New()
	digest.Write(c.RawTBS)
	sum := digest.Sum(nil)
	switch k := c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, sum, c.Signature) {
			return errors.New("ECDSA verification failure")
		}
		return nil
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(k, crypto.SHA256, sum, c.Signature)
	}
	return errors.New("unsupported key")
}
