package citadel

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/meshd/meshd/modules/citadel/api"
	"github.com/meshd/meshd/modules/citadel/ca"
	bolt "go.etcd.io/bbolt"
)

// An external signer (api.Signer: an HSM, Vault, a corporate CA, usually a
// signer plugin) can sign workload certificates instead of the local CA.
// Citadel still authenticates the caller and checks the CSR; the signer
// only signs. Citadel checks what comes back before handing it out, and
// the root each chain ends in joins the trust bundle the first time it is
// seen, before the chain is returned. The local CA keeps signing the
// serving certificate of :15012 and stays in the bundle.

// extSigner is the configured external signer.
type extSigner struct {
	name string
	s    api.Signer
}

// Limits on an external signer.
const (
	extTimeout = 30 * time.Second
	extSlack   = 5 * time.Minute // clock skew and rounding by the external CA
	extMaxLen  = 8
)

var _ api.SignerRegistry = (*Module)(nil)

// SetSigner implements api.SignerRegistry. Call it from Provision; there is
// at most one external signer.
func (m *Module) SetSigner(name string, s api.Signer) error {
	if s == nil {
		return errors.New("citadel: nil signer")
	}
	if !m.ext.CompareAndSwap(nil, &extSigner{name: name, s: s}) {
		return fmt.Errorf("citadel already signs with external signer %s", m.ext.Load().name)
	}
	m.log.Info("workload certificates are signed by an external signer", "signer", name)
	return nil
}

// externalLeaf is a checked chain from an external signer.
type externalLeaf struct {
	der           []byte
	serial        string
	notAfter      time.Time
	intermediates []string // PEM, between the leaf and the root
	root          *x509.Certificate
}

// signExternal has the external signer sign csr for identity and checks the
// chain: the leaf carries the CSR's key and exactly the identity, is no CA,
// is valid now and not for longer than asked, and each certificate is
// signed by the next, ending in a self-signed root.
func signExternal(ctx context.Context, ext *extSigner, csr *ca.CSR, identity string, ttl time.Duration, now time.Time) (*externalLeaf, error) {
	ctx, cancel := context.WithTimeout(ctx, extTimeout)
	defer cancel()
	chain, err := ext.s.Sign(ctx, api.SignRequest{CSR: csr.Raw, URIs: []string{identity}, TTL: ttl})
	if err != nil {
		return nil, fmt.Errorf("external signer %s: %w", ext.name, err)
	}
	if len(chain) < 2 || len(chain) > extMaxLen {
		return nil, fmt.Errorf("external signer %s: chain of %d certificates (want the leaf, any intermediates and the root)", ext.name, len(chain))
	}
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		if certs[i], err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("external signer %s: certificate %d: %w", ext.name, i, err)
		}
	}
	leaf, root := certs[0], certs[len(certs)-1]
	switch {
	case !bytes.Equal(leaf.RawSubjectPublicKeyInfo, csr.RawSPKI):
		err = errors.New("the leaf's key is not the CSR's")
	case len(leaf.URIs) != 1 || leaf.URIs[0].String() != identity || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) > 0:
		err = fmt.Errorf("the leaf names %v %v, want exactly %s", leaf.URIs, leaf.DNSNames, identity)
	case leaf.IsCA:
		err = errors.New("the leaf is a CA certificate")
	case now.Before(leaf.NotBefore.Add(-extSlack)) || !now.Before(leaf.NotAfter):
		err = fmt.Errorf("the leaf is not valid now (%s to %s)", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	case leaf.NotAfter.After(now.Add(ttl + extSlack)):
		err = fmt.Errorf("the leaf expires %s, later than the %s asked for", leaf.NotAfter.UTC().Format(time.RFC3339), ttl)
	case root.CheckSignatureFrom(root) != nil:
		err = errors.New("the chain does not end in a self-signed root")
	}
	for i := 0; err == nil && i+1 < len(certs); i++ {
		if !certs[i+1].IsCA {
			err = fmt.Errorf("certificate %d signs certificate %d but is not a CA", i+1, i)
		} else if cerr := certs[i].CheckSignatureFrom(certs[i+1]); cerr != nil {
			err = fmt.Errorf("certificate %d is not signed by certificate %d: %w", i, i+1, cerr)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("external signer %s returned an unusable chain: %w", ext.name, err)
	}
	out := &externalLeaf{der: chain[0], serial: fmt.Sprintf("%032x", leaf.SerialNumber), notAfter: leaf.NotAfter, root: root}
	for _, c := range certs[1 : len(certs)-1] {
		out.intermediates = append(out.intermediates, string(ca.EncodeCertPEM(c.Raw)))
	}
	return out, nil
}

// trustExternalRoot adds an external signer's root to the bundle (stored
// first, then served), unless it is in already.
func (m *Module) trustExternalRoot(root *x509.Certificate) error {
	id := ca.CertID(root)
	m.lastExtRoot.Store(&id)
	if m.trust.Load().trusts(id) {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.trust.Load().trusts(id) {
		return nil
	}
	st := m.state
	st.ExternalRoots = append(slices.Clone(st.ExternalRoots), root.Raw)
	st.bumpBundle()
	if err := m.ns.Update(func(b *bolt.Bucket) error { return saveState(b, &st) }); err != nil {
		return fmt.Errorf("store the external signer's root: %w", err)
	}
	m.state = st
	m.publishLocked(true)
	m.log.Info("external signer's root added to the trust bundle", "root", id, "subject", root.Subject.String(), "bundleVersion", st.BundleVersion)
	return nil
}

// pruneExternalRootsLocked drops external roots that no unexpired leaf in
// the ledger depends on any more, except the one the signer used last.
func (m *Module) pruneExternalRootsLocked(now time.Time) error {
	if len(m.state.ExternalRoots) == 0 {
		return nil
	}
	live := map[string]bool{}
	if last := m.lastExtRoot.Load(); last != nil {
		live[*last] = true
	}
	err := m.ns.View(func(b *bolt.Bucket) error {
		certs, err := sub(b, bucketCerts)
		if err != nil {
			return err
		}
		return certs.ForEach(func(_, v []byte) error {
			var rec certRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			if rec.NotAfter.After(now) {
				live[rec.Root] = true
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	st := m.state
	st.ExternalRoots = slices.DeleteFunc(slices.Clone(st.ExternalRoots), func(der []byte) bool {
		c, err := x509.ParseCertificate(der)
		return err == nil && !live[ca.CertID(c)]
	})
	if len(st.ExternalRoots) == len(m.state.ExternalRoots) {
		return nil
	}
	st.bumpBundle()
	if err := m.ns.Update(func(b *bolt.Bucket) error { return saveState(b, &st) }); err != nil {
		return err
	}
	m.state = st
	m.publishLocked(true)
	m.log.Info("external signer roots without live leaves removed from the trust bundle", "bundleVersion", st.BundleVersion)
	return nil
}
