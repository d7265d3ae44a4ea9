package ca

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// File names of a plugged-in CA, as in Istio's cacerts secret.
const (
	FileCACert    = "ca-cert.pem"    // the signing (usually intermediate) certificate
	FileCAKey     = "ca-key.pem"     // its private key
	FileRootCert  = "root-cert.pem"  // the root(s): the trust bundle
	FileCertChain = "cert-chain.pem" // ca-cert and intermediates up to the root
)

// PluggedCA is a CA loaded from files in Istio's layout.
type PluggedCA struct {
	Authority *Authority
	// Roots are the certificates of root-cert.pem, in file order: the trust
	// bundle. The signing chain ends in one of them.
	Roots []*x509.Certificate
}

// LoadFiles loads a plugged-in CA from dir: ca-cert.pem signed (through the
// intermediates of cert-chain.pem) by a root of root-cert.pem, with its key
// in ca-key.pem. The root's own key stays offline and is never read. The
// key file must not be accessible to other users. cert-chain.pem may be
// missing when ca-cert.pem is signed by the root directly.
func LoadFiles(dir string, now time.Time) (*PluggedCA, error) {
	keyPath := filepath.Join(dir, FileCAKey)
	if err := CheckPrivateFile(keyPath); err != nil {
		return nil, fmt.Errorf("plugged-in CA: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("plugged-in CA: %w", err)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("plugged-in CA: %s: %w", keyPath, err)
	}
	read := func(name string, optional bool) ([]*x509.Certificate, error) {
		p := filepath.Join(dir, name)
		data, err := os.ReadFile(p)
		if optional && errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("plugged-in CA: %w", err)
		}
		certs, err := ParseCertsPEM(data)
		if err != nil {
			return nil, fmt.Errorf("plugged-in CA: %s: %w", p, err)
		}
		return certs, nil
	}
	caCerts, err := read(FileCACert, false)
	if err != nil {
		return nil, err
	}
	roots, err := read(FileRootCert, false)
	if err != nil {
		return nil, err
	}
	chainCerts, err := read(FileCertChain, true)
	if err != nil {
		return nil, err
	}
	signing := caCerts[0]

	rootPool := x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range append(caCerts[1:], chainCerts...) {
		if bytes.Equal(c.Raw, signing.Raw) || isIn(c, roots) {
			continue
		}
		inter.AddCert(c)
	}
	var chain []*x509.Certificate
	if isIn(signing, roots) {
		chain = []*x509.Certificate{signing}
	} else {
		chains, err := signing.Verify(x509.VerifyOptions{
			Roots:         rootPool,
			Intermediates: inter,
			CurrentTime:   now,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		})
		if err != nil {
			return nil, fmt.Errorf("plugged-in CA: %s does not chain to %s: %w", FileCACert, FileRootCert, err)
		}
		chain = chains[0]
	}
	if now.After(signing.NotAfter) || now.Before(signing.NotBefore) {
		return nil, fmt.Errorf("plugged-in CA: %s is not valid now (valid %s to %s)", FileCACert,
			signing.NotBefore.UTC().Format(time.RFC3339), signing.NotAfter.UTC().Format(time.RFC3339))
	}
	a, err := NewAuthority(key, chain)
	if err != nil {
		return nil, fmt.Errorf("plugged-in CA: %w", err)
	}
	return &PluggedCA{Authority: a, Roots: roots}, nil
}

func isIn(c *x509.Certificate, set []*x509.Certificate) bool {
	for _, s := range set {
		if bytes.Equal(c.Raw, s.Raw) {
			return true
		}
	}
	return false
}
