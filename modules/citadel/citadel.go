// Package citadel is meshd's certificate authority module. It gives every
// workload a short-lived SPIFFE identity certificate
// (spiffe://<trust-domain>/ns/<ns>/sa/<sa>) without the workload's key ever
// leaving it:
//
//   - roots: a self-signed root made on first start and kept in the store,
//     or a plugged-in CA from files in Istio's layout (ca/files.go);
//   - the CSR endpoint istio.v1.auth.IstioCertificateService/CreateCertificate
//     (server.go) on the xDS module's TLS port, with a serving certificate
//     the CA issues to itself;
//   - authenticators (authn.go, tokens.go): a client certificate from this
//     CA for renewal, join tokens for VMs, and the interface for more;
//   - a ledger of every issued certificate (ledger.go, store.go);
//   - trust distribution (trust.go): the bundle as the SDS secret ROOTCA, as
//     a file for the node agent, and as the last element of each response;
//   - root rotation as a persisted state machine (rotation.go);
//   - an optional external signer (external.go, api.SignerRegistry).
//
// The store tree is documented in store.go. The `meshd ca` commands are in
// package cacmd; they reach a running meshd through the admin API
// (admin.go) or a stopped one's store (Offline in ops.go).
package citadel

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/bus"
	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/citadel/api"
	"github.com/meshd/meshd/modules/citadel/ca"
	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
)

func init() { core.Register(new(Module)) }

// ID is the module ID and config section name.
const ID core.ModuleID = "citadel"

// Module is the citadel module.
type Module struct {
	cfg       *Config
	log       *slog.Logger
	ns        *store.Namespace
	bus       *bus.Bus
	td        string
	trustFile string
	sealer    *ca.Sealer
	metrics   *metrics
	now       func() time.Time

	trust   atomic.Pointer[trustSnapshot]
	serving atomic.Pointer[servingCert]
	ext     atomic.Pointer[extSigner] // external signer, if one was set
	// lastExtRoot is the root ID of the external signer's last chain.
	lastExtRoot atomic.Pointer[string]
	server      *csrServer
	xds         *xdsLink

	kick chan struct{}

	// mu serialises changes of the CA: rotation steps, plugged-in reloads,
	// serving certificate renewal. The CSR path never takes it.
	mu      sync.Mutex
	state   caState
	auth    map[string]*ca.Authority // loaded signing authorities by root ID
	plugged pluggedFiles             // file stamps of a plugged-in CA
	pruned  time.Time
}

type servingCert struct {
	cert    *tls.Certificate
	root    string    // root ID that signed it
	renewAt time.Time // half-life
}

// MeshModule implements core.Module.
func (*Module) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{
		ID:          ID,
		New:         func() core.Module { return new(Module) },
		Requires:    []core.ModuleID{"xds"},
		Config:      func() any { return Default() },
		Description: "certificate authority: SPIFFE workload certificates over Istio's CSR API, root rotation, trust distribution",
	}
}

// Interface guards.
var (
	_ core.Provisioner  = (*Module)(nil)
	_ core.Runner       = (*Module)(nil)
	_ core.Readier      = (*Module)(nil)
	_ core.CleanerUpper = (*Module)(nil)
	_ api.TrustBundle   = (*Module)(nil)
)

// deps is what the module takes from the host; tests fill it directly.
type deps struct {
	cfg         *Config
	log         *slog.Logger
	ns          *store.Namespace
	bus         *bus.Bus
	metrics     prometheus.Registerer
	trustDomain string
	dataDir     string
	now         func() time.Time
}

// Provision loads or creates the CA, issues the serving certificate and
// wires the CSR service, the SDS generator and the TLS config into the xDS
// server.
func (m *Module) Provision(ctx *core.Context) error {
	cfg, err := core.ConfigAs[Config](ctx)
	if err != nil {
		return err
	}
	x, err := core.Dep[xdsServer](ctx, "xds")
	if err != nil {
		return err
	}
	err = m.setup(deps{
		cfg: cfg, log: ctx.Logger(), ns: ctx.Store(), bus: ctx.Bus(), metrics: ctx.Metrics(),
		trustDomain: ctx.Mesh().TrustDomain, dataDir: ctx.DataDir(), now: time.Now,
	})
	if err != nil {
		return err
	}
	m.routes(ctx.HandleAdmin)
	return m.attach(x)
}

// setup is Provision without the host: everything but the xDS wiring and
// the admin routes.
func (m *Module) setup(d deps) error {
	if err := d.cfg.Validate(); err != nil {
		return err
	}
	if !ca.ValidTrustDomain(d.trustDomain) {
		return fmt.Errorf("mesh.trustDomain %q is not a valid SPIFFE trust domain", d.trustDomain)
	}
	m.cfg, m.log, m.ns, m.bus, m.td, m.now = d.cfg, d.log, d.ns, d.bus, d.trustDomain, d.now
	m.kick = make(chan struct{}, 1)
	m.auth = map[string]*ca.Authority{}
	switch d.cfg.TrustBundleFile {
	case "":
		m.trustFile = filepath.Join(d.dataDir, "citadel", "root-cert.pem")
	case "-":
	default:
		m.trustFile = d.cfg.TrustBundleFile
	}
	if d.cfg.KeyEncryptionKeyFile != "" {
		s, err := ca.LoadSealer(d.cfg.KeyEncryptionKeyFile)
		if err != nil {
			return err
		}
		m.sealer = s
	}
	var err error
	if m.metrics, err = newMetrics(d.metrics); err != nil {
		return err
	}
	if err := m.ns.Migrate(migrations); err != nil {
		return fmt.Errorf("citadel store: %w", err)
	}
	l := newLedger(m.ns)
	m.server = &csrServer{
		log:       m.log,
		metrics:   m.metrics,
		trust:     &m.trust,
		limiter:   newLimiter(d.cfg.RateLimit.PerCallerQPS, d.cfg.RateLimit.Burst),
		ledger:    l,
		leaf:      d.cfg.Leaf,
		now:       m.now,
		ext:       &m.ext,
		trustRoot: m.trustExternalRoot,
		auths: []Authenticator{
			&certAuthenticator{trustDomain: m.td, trust: m.trust.Load, now: m.now},
			&tokenAuthenticator{ns: m.ns, now: m.now},
		},
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.loadCA(); err != nil {
		return err
	}
	return m.renewServingLocked()
}

// AddAuthenticator appends an authenticator (the Kubernetes TokenReview one,
// for instance) after the built-in ones. Call it before the host runs.
func (m *Module) AddAuthenticator(a Authenticator) {
	m.server.auths = append(m.server.auths, a)
}

// Run drives rotation, serving-certificate renewal, plugged-in file reloads
// and ledger pruning until ctx ends.
func (m *Module) Run(ctx context.Context) error {
	t := time.NewTicker(m.cfg.Rotation.CheckInterval)
	defer t.Stop()
	for {
		m.check()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-m.kick:
		}
	}
}

// check runs one round of the background work; errors are logged and
// retried at the next round.
func (m *Module) check() {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if err := m.stepLocked(now); err != nil {
		m.log.Error("root rotation step failed; will retry", "phase", m.state.Phase, "error", err)
	}
	if err := m.reloadPluggedLocked(now); err != nil {
		m.log.Error("plugged-in CA reload failed; keeping the loaded CA", "dir", m.cfg.PluggedCADir, "error", err)
	}
	if s := m.serving.Load(); s == nil || !now.Before(s.renewAt) || s.root != m.trust.Load().signerRoot {
		if err := m.renewServingLocked(); err != nil {
			m.log.Error("serving certificate renewal failed; will retry", "error", err)
		}
	}
	if now.Sub(m.pruned) >= time.Hour {
		m.pruned = now
		var n int
		err := m.ns.Update(func(b *bolt.Bucket) (err error) {
			n, err = prune(b, now.Add(-m.cfg.Retention))
			return err
		})
		if err != nil {
			m.log.Error("pruning the certificate ledger failed", "error", err)
		} else if n > 0 {
			m.log.Info("pruned expired ledger records and join tokens", "count", n)
		}
		if err := m.pruneExternalRootsLocked(now); err != nil {
			m.log.Error("pruning external signer roots failed", "error", err)
		}
	}
}

// wake makes Run check now rather than at the next tick.
func (m *Module) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Cleanup has nothing to release: the listener belongs to the xDS module
// and the store to the host.
func (m *Module) Cleanup() error { return nil }

// Ready fails while no CA is loaded or the signing certificate has expired.
func (m *Module) Ready() error {
	t := m.trust.Load()
	if t == nil {
		return core.ErrNotReady
	}
	if exp := t.signer.Expiry(); !m.now().Before(exp) {
		return fmt.Errorf("signing certificate expired at %s", exp.UTC().Format(time.RFC3339))
	}
	return nil
}

// TrustBundle implements api.TrustBundle.
func (m *Module) TrustBundle() ([]byte, uint64) {
	t := m.trust.Load()
	return t.bundlePEM, t.version
}

// loadCA loads the CA named by the store's state, creating a self-signed
// root on first start, or loads the plugged-in CA files.
func (m *Module) loadCA() error {
	now := m.now()
	if m.cfg.PluggedCADir != "" {
		return m.loadPluggedLocked(now)
	}
	var st *caState
	if err := m.ns.View(func(b *bolt.Bucket) (err error) { st, err = loadState(b); return err }); err != nil {
		return err
	}
	if st != nil && st.TrustDomain != m.td {
		m.log.Warn("trust domain changed; certificates issued before carry the old one", "was", st.TrustDomain, "now", m.td)
	}
	if st == nil || st.Mode != ModeSelfSigned {
		if st != nil {
			m.log.Warn("switching from a plugged-in CA to a self-signed root; workloads with certificates from the plugged-in CA must re-join")
		}
		cert, key, err := ca.NewSelfSignedRoot(ca.RootOptions{
			Algorithm: ca.KeyAlgorithm(m.cfg.Root.Algorithm), Lifetime: m.cfg.Root.Lifetime, TrustDomain: m.td, Now: now,
		})
		if err != nil {
			return err
		}
		rec, err := m.newRootRecord(cert, key, now)
		if err != nil {
			return err
		}
		next := caState{Mode: ModeSelfSigned, Phase: PhaseIdle, Active: rec.ID, Since: now.UTC()}
		if st != nil {
			next.BundleVersion = st.BundleVersion
		}
		next.bumpBundle()
		st = &next
		if err := m.ns.Update(func(b *bolt.Bucket) error {
			roots, err := sub(b, bucketRoots)
			if err != nil {
				return err
			}
			if err := putJSON(roots, []byte(rec.ID), rec); err != nil {
				return err
			}
			st.TrustDomain = m.td
			return saveState(b, st)
		}); err != nil {
			return fmt.Errorf("store new root: %w", err)
		}
		m.log.Info("created self-signed root", "root", rec.ID, "algorithm", m.cfg.Root.Algorithm, "notAfter", cert.NotAfter)
	}
	if err := m.sealStoredKeys(); err != nil {
		return err
	}
	for _, id := range st.local() {
		a, err := m.loadAuthority(id)
		if err != nil {
			return err
		}
		m.auth[id] = a
	}
	if st.TrustDomain != m.td {
		st.TrustDomain = m.td
		if err := m.ns.Update(func(b *bolt.Bucket) error { return saveState(b, st) }); err != nil {
			return err
		}
	}
	m.state = *st
	m.publishLocked(false)
	return nil
}

// rootCert finds the certificate of root id: loaded, stored, retired, or
// from the plugged-in files.
func (m *Module) rootCert(id string) (*x509.Certificate, error) {
	if a, ok := m.auth[id]; ok && ca.CertID(a.Root()) == id {
		return a.Root(), nil
	}
	for _, c := range parseDERs(append(slices.Clone(m.state.PluggedRoots), m.state.ExternalRoots...)) {
		if ca.CertID(c) == id {
			return c, nil
		}
	}
	var der []byte
	err := m.ns.View(func(b *bolt.Bucket) error {
		for _, name := range [][]byte{bucketRoots, bucketRetired} {
			var r rootRecord
			if ok, err := getJSON(b.Bucket(name), []byte(id), &r); err != nil || ok {
				der = r.Cert
				return err
			}
		}
		return fmt.Errorf("root %s is not in the store", id)
	})
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// newRootRecord encodes a root for the store, sealing its key when a key
// encryption key is configured.
func (m *Module) newRootRecord(cert *x509.Certificate, key crypto.Signer, now time.Time) (*rootRecord, error) {
	der, err := ca.MarshalKey(key)
	if err != nil {
		return nil, err
	}
	id := ca.CertID(cert)
	if m.sealer != nil {
		if der, err = m.sealer.Seal(der, []byte(id)); err != nil {
			return nil, err
		}
	}
	return &rootRecord{ID: id, Cert: cert.Raw, Key: der, Created: now.UTC()}, nil
}

// loadAuthority builds the authority of a stored self-signed root.
func (m *Module) loadAuthority(id string) (*ca.Authority, error) {
	var rec *rootRecord
	if err := m.ns.View(func(b *bolt.Bucket) (err error) { rec, err = loadRoot(b, id); return err }); err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(rec.Cert)
	if err != nil {
		return nil, fmt.Errorf("root %s: %w", id, err)
	}
	keyDER := rec.Key
	if ca.IsSealed(keyDER) {
		if m.sealer == nil {
			return nil, fmt.Errorf("root %s: its key in the store is encrypted; set modules.citadel.keyEncryptionKeyFile", id)
		}
		if keyDER, err = m.sealer.Open(keyDER, []byte(id)); err != nil {
			return nil, fmt.Errorf("root %s: %w", id, err)
		}
	}
	key, err := ca.ParseKey(keyDER)
	if err != nil {
		return nil, fmt.Errorf("root %s key: %w", id, err)
	}
	return ca.NewAuthority(key, []*x509.Certificate{cert})
}

// sealStoredKeys encrypts plaintext root keys when a key encryption key is
// configured, so turning encryption on needs no manual step.
func (m *Module) sealStoredKeys() error {
	if m.sealer == nil {
		return nil
	}
	n := 0
	err := m.ns.Update(func(b *bolt.Bucket) error {
		roots, err := sub(b, bucketRoots)
		if err != nil {
			return err
		}
		var recs []rootRecord
		err = roots.ForEach(func(k, v []byte) error {
			var r rootRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("roots/%s: %w", k, err)
			}
			if len(r.Key) > 0 && !ca.IsSealed(r.Key) {
				recs = append(recs, r)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, r := range recs {
			if r.Key, err = m.sealer.Seal(r.Key, []byte(r.ID)); err != nil {
				return err
			}
			if err := putJSON(roots, []byte(r.ID), &r); err != nil {
				return err
			}
		}
		n = len(recs)
		return nil
	})
	if n > 0 {
		m.log.Info("encrypted root keys in the store with the key encryption key", "count", n)
	}
	return err
}

// publishLocked builds the trust snapshot from m.state and m.auth and
// makes it current: metrics, trust file, xDS push, and (when notify is set)
// a bus event.
func (m *Module) publishLocked(notify bool) {
	st := &m.state
	signer := m.auth[st.signing()]
	var roots []*x509.Certificate
	if st.Mode == ModePlugged {
		roots = parseDERs(st.PluggedRoots)
	} else {
		for _, id := range st.local() {
			roots = append(roots, m.auth[id].Root())
		}
	}
	roots = append(roots, parseDERs(st.ExternalRoots)...)
	t := newSnapshot(signer, roots, st.BundleVersion, st.Phase, m.cfg.Rotation.StagedLeafTTL, m.getCertificate)
	old := m.trust.Swap(t)
	m.metrics.rootExpiry.Set(float64(signer.Root().NotAfter.Unix()))
	m.metrics.chainExpiry.Set(float64(signer.Expiry().Unix()))
	m.metrics.setPhase(st.Phase)
	m.metrics.bundle.Set(float64(st.BundleVersion))
	if m.trustFile != "" {
		if err := writeTrustFile(m.trustFile, t.bundlePEM); err != nil {
			m.log.Error("writing the trust bundle file failed", "error", err)
		}
	}
	if old != nil && old.version != t.version {
		if m.xds != nil {
			m.xds.bundleChanged(t)
		}
		if notify && m.bus != nil {
			m.bus.Publish(api.BundleChanged{Version: t.version})
		}
	}
}

// authnServing is the ledger's authenticator for the CA's own serving
// certificates. Only this process holds them, and it renews them when the
// signer changes, so they never hold back a rotation.
const authnServing = "self: serving certificate"

func parseDERs(ders [][]byte) []*x509.Certificate {
	var out []*x509.Certificate
	for _, der := range ders {
		if c, err := x509.ParseCertificate(der); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// renewServingLocked issues a new serving certificate from the current
// signer with a fresh P-256 key.
func (m *Module) renewServingLocked() error {
	t := m.trust.Load()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	dns, ips := m.cfg.servingNames()
	now := m.now()
	leaf, err := t.signer.Issue(&ca.LeafRequest{
		PublicKey: key.Public(), RawSPKI: spki, DNSNames: dns, IPs: ips,
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(m.cfg.Serving.TTL),
	})
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	err = m.server.ledger.record(nil, certRecord{
		Serial: leaf.Serial, Identity: "dns:" + m.cfg.Serving.DNSNames[0], Issued: now.UTC(), NotAfter: leaf.NotAfter,
		Caller: "meshd", Authenticator: authnServing, Root: t.signerRoot,
	})
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	parsed, err := x509.ParseCertificate(leaf.DER)
	if err != nil {
		return err
	}
	chain := [][]byte{leaf.DER}
	for _, c := range t.signer.Chain()[:len(t.signer.Chain())-1] {
		chain = append(chain, c.Raw)
	}
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	m.serving.Store(&servingCert{
		cert:    &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: parsed},
		root:    t.signerRoot,
		renewAt: leaf.NotBefore.Add(life / 2),
	})
	m.log.Info("serving certificate issued", "serial", leaf.Serial, "names", m.cfg.Serving.DNSNames, "notAfter", leaf.NotAfter, "root", t.signerRoot)
	return nil
}

func (m *Module) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if s := m.serving.Load(); s != nil {
		return s.cert, nil
	}
	return nil, errors.New("no serving certificate yet")
}

// TLSConfig is the listener config for :15012: the CA's serving
// certificate, and client certificates verified (when given) against the
// current bundle, which changes with rotation.
func (m *Module) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2"},
		GetCertificate: m.getCertificate,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return m.trust.Load().serverTLS, nil
		},
	}
}

// pluggedFiles remembers the files of a plugged-in CA to notice changes.
type pluggedFiles map[string]time.Time

func statPlugged(dir string) pluggedFiles {
	out := pluggedFiles{}
	for _, f := range []string{ca.FileCACert, ca.FileCAKey, ca.FileRootCert, ca.FileCertChain} {
		if st, err := os.Stat(filepath.Join(dir, f)); err == nil {
			out[f] = st.ModTime()
		}
	}
	return out
}

// loadPluggedLocked loads the plugged-in CA files and records their roots
// in the state, bumping the bundle version when they changed.
func (m *Module) loadPluggedLocked(now time.Time) error {
	stamps := statPlugged(m.cfg.PluggedCADir)
	pc, err := ca.LoadFiles(m.cfg.PluggedCADir, now)
	if err != nil {
		return err
	}
	var ids []string
	var ders [][]byte
	for _, r := range pc.Roots {
		ids = append(ids, ca.CertID(r))
		ders = append(ders, r.Raw)
	}
	signerRoot := ca.CertID(pc.Authority.Root())
	err = m.ns.Update(func(b *bolt.Bucket) error {
		st, err := loadState(b)
		if err != nil {
			return err
		}
		if st == nil {
			st = &caState{}
		} else if st.Mode == ModeSelfSigned {
			m.log.Warn("switching from the self-signed root to a plugged-in CA; add the old root to root-cert.pem until every workload has renewed (see docs/ca.md)", "oldRoot", st.Active)
		}
		wasPlugged, prevIDs, prevActive := st.Mode == ModePlugged, st.Bundles[st.BundleVersion], st.Active
		st.Mode, st.TrustDomain, st.Phase, st.Active, st.Next, st.PluggedRoots = ModePlugged, m.td, PhaseIdle, signerRoot, "", ders
		if !wasPlugged || !slices.Equal(prevIDs, st.bundleIDs()) || prevActive != signerRoot {
			st.Since = now.UTC()
			st.bumpBundle()
		}
		m.state = *st
		return saveState(b, st)
	})
	if err != nil {
		return err
	}
	clear(m.auth)
	m.auth[signerRoot] = pc.Authority
	m.plugged = stamps
	m.log.Info("loaded plugged-in CA", "dir", m.cfg.PluggedCADir, "signer", pc.Authority.Certificate().Subject.String(),
		"roots", ids, "notAfter", pc.Authority.Expiry())
	m.publishLocked(true)
	return nil
}

// reloadPluggedLocked reloads the plugged-in CA when its files changed. A
// failed load keeps the CA that is loaded.
func (m *Module) reloadPluggedLocked(now time.Time) error {
	if m.cfg.PluggedCADir == "" {
		return nil
	}
	stamps := statPlugged(m.cfg.PluggedCADir)
	if maps.EqualFunc(stamps, m.plugged, time.Time.Equal) {
		return nil
	}
	if err := m.loadPluggedLocked(now); err != nil {
		m.plugged = stamps // do not retry a broken set of files until it changes again
		return err
	}
	return m.renewServingLocked()
}
