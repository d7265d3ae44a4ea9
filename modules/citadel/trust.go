package citadel

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/meshd/meshd/modules/citadel/ca"

	"github.com/meshd/meshd/core/atomicfile"
)

// trustSnapshot is the CA at one moment: who signs and which roots are
// trusted. It is immutable and swapped atomically on every change, so the
// CSR path and TLS handshakes read it without locks.
type trustSnapshot struct {
	signer     *ca.Authority
	signerRoot string // ca.CertID of signer's root
	roots      []*x509.Certificate
	rootIDs    []string
	bundlePEM  []byte
	pool       *x509.CertPool
	version    uint64
	phase      Phase
	// stagedTTL caps leaves while a rotation is staged (old root still
	// signing); 0 otherwise.
	stagedTTL time.Duration
	// tail is what follows the leaf in a CSR response: the signing
	// certificate and intermediates, then the whole bundle as the last
	// element (Istio's agents take the last element as their roots).
	tail []string
	// serverTLS is the listener config for this bundle, handed out per
	// handshake by GetConfigForClient.
	serverTLS *tls.Config
	// secret is the SDS ROOTCA resource.
	secret *tlsv3.Secret
}

func newSnapshot(signer *ca.Authority, roots []*x509.Certificate, version uint64, phase Phase, stagedTTL time.Duration,
	getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *trustSnapshot {
	t := &trustSnapshot{
		signer:     signer,
		signerRoot: ca.CertID(signer.Root()),
		roots:      roots,
		pool:       x509.NewCertPool(),
		version:    version,
		phase:      phase,
	}
	if phase == PhaseStaged {
		t.stagedTTL = stagedTTL
	}
	for _, r := range roots {
		t.rootIDs = append(t.rootIDs, ca.CertID(r))
		t.pool.AddCert(r)
		t.bundlePEM = append(t.bundlePEM, ca.EncodeCertPEM(r.Raw)...)
	}
	t.secret = rootCASecret(t.bundlePEM)
	chain := signer.ChainPEM()
	t.tail = append(slices.Clone(chain[:len(chain)-1]), string(t.bundlePEM))
	t.serverTLS = &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2"},
		GetCertificate: getCert,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      t.pool,
	}
	return t
}

// trusts reports whether root ID id is in the bundle.
func (t *trustSnapshot) trusts(id string) bool { return slices.Contains(t.rootIDs, id) }

// SDSRootName is the SDS secret with the trust bundle, as in Istio.
const SDSRootName = "ROOTCA"

// rootCASecret is the SDS resource carrying the bundle to proxies.
func rootCASecret(bundlePEM []byte) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: SDSRootName,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: bundlePEM}},
		}},
	}
}

// writeTrustFile writes the bundle to path for the node agent, atomically
// (temporary file and rename) and only when it changed. The bundle is
// public, so the file is 0644.
func writeTrustFile(path string, bundlePEM []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, bundlePEM) {
		return nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("trust bundle file: %w", err)
	}
	if err := atomicfile.WriteBytes(path, bundlePEM, 0o644); err != nil {
		return fmt.Errorf("trust bundle file: %w", err)
	}
	return nil
}
