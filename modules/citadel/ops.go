package citadel

import (
	"cmp"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/citadel/ca"
	bolt "go.etcd.io/bbolt"
)

// Operations is what `meshd ca` does. Three implementations share it: the
// running module (served on the admin API), Offline (a stopped meshd's
// store) and the admin API client in package cacmd.
type Operations interface {
	Status(ctx context.Context) (*Status, error)
	// Rotate starts a root rotation; with force, a running rotation skips
	// its remaining waits. Offline, it records a request the server acts
	// on at its next start.
	Rotate(ctx context.Context, force bool) (*Status, error)
	// Roots returns the trust bundle, PEM.
	Roots(ctx context.Context) ([]byte, error)
	CreateToken(ctx context.Context, req TokenRequest) (*NewToken, error)
	ListTokens(ctx context.Context, all bool) ([]TokenInfo, error)
	RevokeToken(ctx context.Context, id string) error
	ListCerts(ctx context.Context, f CertFilter) ([]CertInfo, error)
}

// Status is `meshd ca status`.
type Status struct {
	Mode          Mode         `json:"mode"`
	TrustDomain   string       `json:"trustDomain"`
	Phase         Phase        `json:"phase"`
	Since         time.Time    `json:"since"`
	Reason        string       `json:"reason,omitempty"`
	Force         bool         `json:"force,omitempty"`
	Requested     bool         `json:"requested,omitempty"`
	AckDeadline   time.Time    `json:"ackDeadline,omitzero"`
	BundleVersion uint64       `json:"bundleVersion"`
	LastRotation  time.Time    `json:"lastRotation,omitzero"`
	Roots         []RootStatus `json:"roots"`
	// Proxies and PendingOldLeaves are known only to a running meshd.
	Proxies *ProxyCounts `json:"proxies,omitempty"`
	// PendingOldLeaves counts, while switched, the unexpired leaves of the
	// retiring root that were not renewed yet.
	PendingOldLeaves *int `json:"pendingOldLeaves,omitempty"`
}

// RootStatus is one trusted root.
type RootStatus struct {
	ID        string    `json:"id"`
	Subject   string    `json:"subject"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	// Role is active, next or retiring for a self-signed root, plugged for
	// a root of a plugged-in CA.
	Role    string `json:"role"`
	Signing bool   `json:"signing"`
	// Proxies counts connected proxies whose acknowledged bundle contains
	// this root (running meshd only).
	Proxies *int `json:"proxies,omitempty"`
}

// ProxyCounts summarises the connected proxies' trust.
type ProxyCounts struct {
	Connected int `json:"connected"`
	// Current acknowledged the current bundle version.
	Current int `json:"current"`
	// Unknown have not acknowledged any bundle yet.
	Unknown int `json:"unknown"`
}

// CertFilter selects ledger records.
type CertFilter struct {
	Identity string `json:"identity,omitempty"`
	// All includes expired certificates.
	All bool `json:"all,omitempty"`
	// Limit keeps the newest Limit records; 0 means no limit.
	Limit int `json:"limit,omitempty"`
}

// CertInfo is one ledger record.
type CertInfo struct {
	Serial        string    `json:"serial"`
	Identity      string    `json:"identity"`
	Issued        time.Time `json:"issued"`
	NotAfter      time.Time `json:"notAfter"`
	Caller        string    `json:"caller"`
	Authenticator string    `json:"authenticator"`
	Root          string    `json:"root"`
	Renews        string    `json:"renews,omitempty"`
	Expired       bool      `json:"expired"`
}

func listCerts(b *bolt.Bucket, f CertFilter, now time.Time) ([]CertInfo, error) {
	certs, err := sub(b, bucketCerts)
	if err != nil {
		return nil, err
	}
	out := []CertInfo{}
	err = certs.ForEach(func(k, v []byte) error {
		var r certRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("certs/%s: %w", k, err)
		}
		expired := !now.Before(r.NotAfter)
		if (f.Identity != "" && r.Identity != f.Identity) || (expired && !f.All) {
			return nil
		}
		out = append(out, CertInfo{Serial: r.Serial, Identity: r.Identity, Issued: r.Issued, NotAfter: r.NotAfter,
			Caller: r.Caller, Authenticator: r.Authenticator, Root: r.Root, Renews: r.Renews, Expired: expired})
		return nil
	})
	slices.SortFunc(out, func(a, b CertInfo) int { return cmp.Or(b.Issued.Compare(a.Issued), cmp.Compare(a.Serial, b.Serial)) })
	if f.Limit > 0 && len(out) > f.Limit {
		out = out[:f.Limit]
	}
	return out, err
}

// readStatus builds the status from the store alone.
func readStatus(b *bolt.Bucket) (*Status, []*x509.Certificate, error) {
	st, err := loadState(b)
	if err != nil {
		return nil, nil, err
	}
	if st == nil {
		return nil, nil, errors.New("no CA yet: meshd serve has not run with this data dir")
	}
	s := &Status{Mode: st.Mode, TrustDomain: st.TrustDomain, Phase: st.Phase, Since: st.Since, Reason: st.Reason,
		Force: st.Force, Requested: st.Requested, AckDeadline: st.AckDeadline, BundleVersion: st.BundleVersion,
		LastRotation: st.LastRotation, Roots: []RootStatus{}}
	var certs []*x509.Certificate
	add := func(c *x509.Certificate, role string, signing bool) {
		certs = append(certs, c)
		s.Roots = append(s.Roots, RootStatus{ID: ca.CertID(c), Subject: c.Subject.String(), NotBefore: c.NotBefore,
			NotAfter: c.NotAfter, Role: role, Signing: signing})
	}
	if st.Mode == ModePlugged {
		for _, c := range parseDERs(st.PluggedRoots) {
			add(c, "plugged", ca.CertID(c) == st.Active)
		}
	} else {
		for _, id := range st.local() {
			rec, err := loadRoot(b, id)
			if err != nil {
				return nil, nil, err
			}
			c, err := x509.ParseCertificate(rec.Cert)
			if err != nil {
				return nil, nil, fmt.Errorf("root %s: %w", id, err)
			}
			role := "active"
			switch {
			case id == st.Next:
				role = "next"
			case st.Phase == PhaseSwitched:
				role = "retiring"
			}
			add(c, role, id == st.signing())
		}
	}
	// An external signer's roots sign nothing here; workloads hold leaves
	// under them.
	for _, c := range parseDERs(st.ExternalRoots) {
		add(c, "external", false)
	}
	return s, certs, nil
}

func bundleOf(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, ca.EncodeCertPEM(c.Raw)...)
	}
	return out
}

// liveOps are the Operations of the running module.
type liveOps struct{ m *Module }

// Operations returns the running module's Operations.
func (m *Module) Operations() Operations { return liveOps{m} }

func (o liveOps) Status(context.Context) (*Status, error) {
	m := o.m
	m.mu.Lock()
	defer m.mu.Unlock()
	var s *Status
	if err := m.ns.View(func(b *bolt.Bucket) (err error) { s, _, err = readStatus(b); return err }); err != nil {
		return nil, err
	}
	bundles := m.proxyBundles()
	pc := &ProxyCounts{Connected: len(bundles)}
	perRoot := map[string]int{}
	for _, v := range bundles {
		switch {
		case v == 0:
			pc.Unknown++
			continue
		case v >= m.state.BundleVersion:
			pc.Current++
		}
		for _, id := range m.state.Bundles[v] {
			perRoot[id]++
		}
	}
	s.Proxies = pc
	for i := range s.Roots {
		n := perRoot[s.Roots[i].ID]
		s.Roots[i].Proxies = &n
	}
	if m.state.Phase == PhaseSwitched {
		n, err := m.pendingOldLeaves(m.state.Active, m.now())
		if err != nil {
			return nil, err
		}
		s.PendingOldLeaves = &n
	}
	return s, nil
}

func (o liveOps) Rotate(ctx context.Context, force bool) (*Status, error) {
	if err := o.m.rotate(force, "meshd ca rotate"); err != nil {
		return nil, err
	}
	return o.Status(ctx)
}

func (o liveOps) Roots(context.Context) ([]byte, error) {
	pem, _ := o.m.TrustBundle()
	return pem, nil
}

func (o liveOps) CreateToken(_ context.Context, req TokenRequest) (*NewToken, error) {
	id, err := ca.NormalizeIdentity(req.Identity, o.m.td)
	if err != nil {
		return nil, err
	}
	var t *NewToken
	err = o.m.ns.Update(func(b *bolt.Bucket) (err error) { t, err = createToken(b, id, req, o.m.now()); return err })
	if err == nil {
		o.m.log.Info("join token created", "token", t.ID, "identity", id, "expires", t.Expires, "uses", t.MaxUses)
	}
	return t, err
}

func (o liveOps) ListTokens(_ context.Context, all bool) (out []TokenInfo, err error) {
	err = o.m.ns.View(func(b *bolt.Bucket) error { out, err = listTokens(b, all, o.m.now()); return err })
	return out, err
}

func (o liveOps) RevokeToken(_ context.Context, id string) error {
	err := o.m.ns.Update(func(b *bolt.Bucket) error { return revokeToken(b, id, o.m.now()) })
	if err == nil {
		o.m.log.Info("join token revoked", "token", id)
	}
	return err
}

func (o liveOps) ListCerts(_ context.Context, f CertFilter) (out []CertInfo, err error) {
	err = o.m.ns.View(func(b *bolt.Bucket) error { out, err = listCerts(b, f, o.m.now()); return err })
	return out, err
}

// Offline runs Operations on the store of a meshd that is not running. The
// store's file lock makes OpenOffline fail with store.ErrLocked while meshd
// runs; use the admin API then.
type Offline struct {
	st  *store.Store
	ns  *store.Namespace
	now func() time.Time
}

// OpenOffline opens the store in dataDir, which must exist.
func OpenOffline(dataDir string) (*Offline, error) {
	if _, err := os.Stat(filepath.Join(dataDir, store.FileName)); err != nil {
		return nil, fmt.Errorf("no meshd store in %s: %w", dataDir, err)
	}
	st, err := store.Open(dataDir, store.Options{LockTimeout: 500 * time.Millisecond})
	if err != nil {
		if errors.Is(err, store.ErrLocked) {
			return nil, fmt.Errorf("%w; meshd is running, so use --admin instead of --data-dir", err)
		}
		return nil, err
	}
	ns := st.Module(string(ID))
	if err := ns.Migrate(migrations); err != nil {
		st.Close()
		return nil, err
	}
	return &Offline{st: st, ns: ns, now: time.Now}, nil
}

// Close closes the store.
func (o *Offline) Close() error { return o.st.Close() }

// Status implements Operations.
func (o *Offline) Status(context.Context) (s *Status, err error) {
	err = o.ns.View(func(b *bolt.Bucket) error { s, _, err = readStatus(b); return err })
	return s, err
}

// Rotate implements Operations: it records a request for the next start.
func (o *Offline) Rotate(ctx context.Context, force bool) (*Status, error) {
	err := o.ns.Update(func(b *bolt.Bucket) error {
		st, err := loadState(b)
		if err != nil {
			return err
		}
		if st == nil {
			return errors.New("no CA yet: meshd serve has not run with this data dir")
		}
		if st.Mode != ModeSelfSigned {
			return ErrPluggedRotation
		}
		if st.Phase == PhaseIdle {
			st.Requested = true
		}
		st.Force = st.Force || force
		return saveState(b, st)
	})
	if err != nil {
		return nil, err
	}
	return o.Status(ctx)
}

// Roots implements Operations.
func (o *Offline) Roots(context.Context) (out []byte, err error) {
	err = o.ns.View(func(b *bolt.Bucket) error {
		_, certs, err := readStatus(b)
		out = bundleOf(certs)
		return err
	})
	return out, err
}

// CreateToken implements Operations. Short identities are completed with
// the trust domain the server recorded.
func (o *Offline) CreateToken(_ context.Context, req TokenRequest) (t *NewToken, err error) {
	err = o.ns.Update(func(b *bolt.Bucket) error {
		st, err := loadState(b)
		if err != nil {
			return err
		}
		if st == nil {
			return errors.New("no CA yet: meshd serve has not run with this data dir")
		}
		id, err := ca.NormalizeIdentity(req.Identity, st.TrustDomain)
		if err != nil {
			return err
		}
		t, err = createToken(b, id, req, o.now())
		return err
	})
	return t, err
}

// ListTokens implements Operations.
func (o *Offline) ListTokens(_ context.Context, all bool) (out []TokenInfo, err error) {
	err = o.ns.View(func(b *bolt.Bucket) error { out, err = listTokens(b, all, o.now()); return err })
	return out, err
}

// RevokeToken implements Operations.
func (o *Offline) RevokeToken(_ context.Context, id string) error {
	return o.ns.Update(func(b *bolt.Bucket) error { return revokeToken(b, id, o.now()) })
}

// ListCerts implements Operations.
func (o *Offline) ListCerts(_ context.Context, f CertFilter) (out []CertInfo, err error) {
	err = o.ns.View(func(b *bolt.Bucket) error { out, err = listCerts(b, f, o.now()); return err })
	return out, err
}
