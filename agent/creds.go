package agent

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"time"
)

// creds is the workload's identity at one moment: its key, its
// certificate chain and the trust bundle. Immutable; replaced whole.
type creds struct {
	keyPEM    []byte // PKCS #8
	chainPEM  []byte // leaf, then intermediates
	bundlePEM []byte // every trusted root

	key    *ecdsa.PrivateKey
	chain  []*x509.Certificate
	leaf   *x509.Certificate
	roots  []*x509.Certificate
	pool   *x509.CertPool
	tlsCrt *tls.Certificate
	// untrusted is set when the leaf does not chain to the bundle (the
	// bundle moved on to a new root before the leaf did): renew at once.
	untrusted error
	// renewAt is the jittered renewal time, between 50% and 80% of the
	// leaf's lifetime.
	renewAt time.Time
}

// ErrCorrupt wraps problems with the stored key or certificate files: they
// exist but cannot be used, which the agent does not repair by itself.
var ErrCorrupt = errors.New("stored identity is unusable")

// newCreds parses and checks a key, a chain and a bundle: the key is an
// ECDSA key, the leaf is for the key and for id, and the chain verifies
// against the bundle (recorded in untrusted when it does not).
func newCreds(keyPEM, chainPEM, bundlePEM []byte, id string) (*creds, error) {
	c := &creds{keyPEM: keyPEM, chainPEM: chainPEM, bundlePEM: bundlePEM}
	b, _ := pem.Decode(keyPEM)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, errors.New("key: no PKCS #8 PRIVATE KEY block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	var ok bool
	if c.key, ok = k.(*ecdsa.PrivateKey); !ok {
		return nil, fmt.Errorf("key: %T, want an ECDSA key", k)
	}
	if c.chain, err = parseCerts(chainPEM); err != nil {
		return nil, fmt.Errorf("certificate chain: %w", err)
	}
	c.leaf = c.chain[0]
	if pub, ok := c.leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(c.key.Public()) {
		return nil, errors.New("the certificate is not for the key")
	}
	if len(c.leaf.URIs) != 1 || c.leaf.URIs[0].String() != id {
		return nil, fmt.Errorf("the certificate is for %v, want %s", c.leaf.URIs, id)
	}
	if c.roots, err = parseCerts(bundlePEM); err != nil {
		return nil, fmt.Errorf("trust bundle: %w", err)
	}
	c.pool = x509.NewCertPool()
	for _, r := range c.roots {
		c.pool.AddCert(r)
	}
	c.checkChain()
	c.tlsCrt = &tls.Certificate{PrivateKey: c.key, Leaf: c.leaf}
	for _, x := range c.chain {
		c.tlsCrt.Certificate = append(c.tlsCrt.Certificate, x.Raw)
	}
	c.schedule(c.leaf.NotBefore)
	return c, nil
}

// schedule picks the renewal time at random between 50% and 80% of the
// lifetime counted from issued: when the agent received the certificate
// (CAs backdate notBefore to tolerate clock skew, which would make short
// certificates renew late), else notBefore.
func (c *creds) schedule(issued time.Time) {
	if issued.Before(c.leaf.NotBefore) || !issued.Before(c.leaf.NotAfter) {
		issued = c.leaf.NotBefore
	}
	life := c.leaf.NotAfter.Sub(issued)
	c.renewAt = issued.Add(time.Duration(float64(life) * (0.5 + 0.3*rand.Float64())))
}

// checkChain verifies the chain against the bundle at the middle of the
// leaf's life, so an expired leaf is still told apart from a broken one.
func (c *creds) checkChain() {
	inter := x509.NewCertPool()
	for _, x := range c.chain[1:] {
		inter.AddCert(x)
	}
	mid := c.leaf.NotBefore.Add(c.leaf.NotAfter.Sub(c.leaf.NotBefore) / 2)
	_, err := c.leaf.Verify(x509.VerifyOptions{Roots: c.pool, Intermediates: inter, CurrentTime: mid,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	c.untrusted = err
}

// withBundle returns c with another trust bundle.
func (c *creds) withBundle(bundlePEM []byte) (*creds, error) {
	d, err := newCreds(c.keyPEM, c.chainPEM, bundlePEM, c.leaf.URIs[0].String())
	if err != nil {
		return nil, err
	}
	d.renewAt = c.renewAt
	return d, nil
}

// valid reports whether the leaf can be used at now.
func (c *creds) valid(now time.Time) bool {
	return c != nil && !now.Before(c.leaf.NotBefore.Add(-time.Minute)) && now.Before(c.leaf.NotAfter)
}

// serial is the leaf's serial number in hex, as meshd's ledger shows it.
func (c *creds) serial() string { return fmt.Sprintf("%032x", c.leaf.SerialNumber) }

// loadCreds reads the stored identity from the certificate directory. It
// returns (nil, nil) when there is none, and an error wrapping ErrCorrupt
// when the files exist but cannot be used.
func loadCreds(d *certDir, id string) (*creds, error) {
	key, err := d.read(FileKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, d.path(FileKey), err)
	}
	chain, err := d.read(FileCertChain)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, d.path(FileCertChain), err)
	}
	bundle, err := d.read(FileRootCert)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, d.path(FileRootCert), err)
	}
	c, err := newCreds(key, chain, bundle, id)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, d.dir, err)
	}
	return c, nil
}

// storeCreds writes c to the certificate directory, all files at once.
func storeCreds(d *certDir, c *creds) error {
	return d.write(map[string][]byte{FileKey: c.keyPEM, FileCertChain: c.chainPEM, FileRootCert: c.bundlePEM})
}
