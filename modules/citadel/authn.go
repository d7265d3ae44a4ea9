package citadel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshd/meshd/modules/citadel/ca"
	bolt "go.etcd.io/bbolt"
)

// AuthInput is what an Authenticator may look at, extracted once per
// request from the gRPC context.
type AuthInput struct {
	Peer net.Addr
	// TLS is the connection state; nil on a plaintext connection.
	TLS *tls.ConnectionState
	// Bearer is the token of an "authorization: Bearer <token>" header,
	// which is how Istio's agent sends its credential.
	Bearer string
}

// Caller is an authenticated caller.
type Caller struct {
	// Identity is the SPIFFE ID the caller proved; the CSR must ask for
	// exactly this.
	Identity string
	// Authenticator is the Name of the Authenticator that accepted it.
	Authenticator string
	// Credential names what was presented (a certificate serial, a token
	// ID), for the ledger and the log; never a secret.
	Credential string
	// Renews is the serial of the certificate this request replaces, when
	// the caller authenticated with it; rotation uses it to know which
	// leaves of the old root are gone.
	Renews string
	// Spend, when set, runs inside the ledger transaction that records the
	// certificate this request bought, after the CSR passed every check:
	// spending the credential and recording the certificate commit
	// together, and a burst of joins costs one commit per batch. An error
	// refuses this request alone. Join tokens spend one use here, so a
	// refused CSR does not burn a token.
	Spend func(b *bolt.Bucket) error
}

// ErrNoCredential is returned by an Authenticator when the request carries
// no credential of its kind, so the next one is asked.
var ErrNoCredential = errors.New("no credential of this kind")

// Authenticator proves who a caller is. Implementations return
// ErrNoCredential when the request does not carry their kind of
// credential, and any other error to refuse it. The Kubernetes
// service-account token (TokenReview) authenticator plugs in here.
type Authenticator interface {
	Name() string
	Authenticate(ctx context.Context, in *AuthInput) (*Caller, error)
}

// certAuthenticator accepts a verified client certificate from this CA for
// renewal: the caller may only ask for the identity in that certificate.
// The TLS handshake already verified the chain against the bundle; per
// request, the identity of a connection's certificate comes from a cache,
// and only expiry and the root's continued trust are checked.
type certAuthenticator struct {
	trustDomain string
	trust       func() *trustSnapshot
	now         func() time.Time

	size  atomic.Int64
	cache sync.Map // *x509.Certificate (the leaf of a connection) -> *certCacheEntry
}

type certCacheEntry struct {
	identity string
	serial   string
	notAfter time.Time
	root     string // ca.CertID of the verified chain's root
}

// maxCertCache bounds the cache; when full it is cleared, which only costs
// a re-parse per connection.
const maxCertCache = 1 << 16

func (a *certAuthenticator) Name() string { return "client-cert" }

func (a *certAuthenticator) Authenticate(_ context.Context, in *AuthInput) (*Caller, error) {
	if in.TLS == nil || len(in.TLS.PeerCertificates) == 0 {
		return nil, ErrNoCredential
	}
	if len(in.TLS.VerifiedChains) == 0 {
		return nil, errors.New("client certificate was not verified")
	}
	leaf := in.TLS.VerifiedChains[0][0]
	var e *certCacheEntry
	if v, ok := a.cache.Load(leaf); ok {
		e = v.(*certCacheEntry)
	} else {
		var err error
		if e, err = a.inspect(in.TLS.VerifiedChains); err != nil {
			return nil, err
		}
		if a.size.Add(1) > maxCertCache {
			a.cache.Clear()
			a.size.Store(1)
		}
		a.cache.Store(leaf, e)
	}
	if !a.now().Before(e.notAfter) {
		return nil, fmt.Errorf("client certificate %s expired at %s", e.serial, e.notAfter.Format(time.RFC3339))
	}
	if !a.trust().trusts(e.root) {
		return nil, fmt.Errorf("client certificate %s chains to root %s, which is no longer trusted", e.serial, e.root)
	}
	return &Caller{Identity: e.identity, Authenticator: a.Name(), Credential: "serial " + e.serial, Renews: e.serial}, nil
}

func (a *certAuthenticator) inspect(chains [][]*x509.Certificate) (*certCacheEntry, error) {
	leaf := chains[0][0]
	if leaf.IsCA {
		return nil, errors.New("client certificate is a CA certificate")
	}
	if len(leaf.URIs) != 1 || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) > 0 {
		return nil, fmt.Errorf("client certificate %x is not a workload certificate (want exactly one URI SAN)", leaf.SerialNumber)
	}
	id := leaf.URIs[0].String()
	td, _, _, err := ca.ParseSPIFFEID(id)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	if td != a.trustDomain {
		return nil, fmt.Errorf("client certificate identity %s is not in trust domain %s", id, a.trustDomain)
	}
	chain := chains[0]
	return &certCacheEntry{
		identity: id,
		serial:   fmt.Sprintf("%032x", leaf.SerialNumber),
		notAfter: leaf.NotAfter,
		root:     ca.CertID(chain[len(chain)-1]),
	}, nil
}

// authenticate asks each authenticator in turn. The first that does not
// answer ErrNoCredential decides.
func authenticate(ctx context.Context, auths []Authenticator, in *AuthInput) (*Caller, error) {
	for _, a := range auths {
		c, err := a.Authenticate(ctx, in)
		if errors.Is(err, ErrNoCredential) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", a.Name(), err)
		}
		return c, nil
	}
	return nil, errors.New("no credential: neither a client certificate from this CA nor a bearer token")
}
