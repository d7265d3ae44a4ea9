package citadel

// Citadel's tree in the store (core/store), modules/citadel:
//
//	modules/citadel/
//	  .schema          -> uint64: this tree's schema version (migrations below)
//	  state            -> JSON caState: mode (self-signed or plugged), trust domain,
//	                      rotation phase, active and next root IDs, bundle version and
//	                      the roots of recent bundle versions, wait deadlines, the
//	                      plugged-in and external signers' roots (DER)
//	  roots/           self-signed roots; empty with a plugged-in CA
//	    <root-id>      -> JSON rootRecord: certificate DER, key (PKCS#8 DER, or an
//	                      AES-GCM sealed blob when keyEncryptionKeyFile is set), created
//	  retired/         roots removed from the bundle by a rotation, without their key
//	    <root-id>      -> JSON rootRecord (Key empty), kept for audit
//	  certs/           ledger of issued certificates, in issuing order
//	    <seq>          -> JSON certRecord: serial (32 lowercase hex digits), identity,
//	                      issued, notAfter, caller, authenticator, root ID, and the
//	                      serial of the client certificate it renews; seq is the
//	                      bucket's sequence, uint64 big-endian
//	  tokens/          join tokens
//	    <token-id>     -> JSON tokenRecord: SHA-256 of the secret (never the secret),
//	                      identity, created, expires, maxUses, used, revoked
//
// A root ID is ca.CertID of the root certificate. Every change of state and
// roots/ happens in one transaction, so the tree is always at one step of
// the rotation state machine (rotation.go). Records in certs/ and tokens/ are
// pruned once they are Config.Retention past expiry.

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/citadel/ca"
	bolt "go.etcd.io/bbolt"
)

var (
	keyState      = []byte("state")
	bucketRoots   = []byte("roots")
	bucketRetired = []byte("retired")
	bucketCerts   = []byte("certs")
	bucketTokens  = []byte("tokens")
)

// migrations is citadel's schema history. Append only.
var migrations = []store.Migration{
	{Version: 1, Name: "create citadel buckets", Apply: func(tx *bolt.Tx) error {
		b := store.ModuleBucket(tx, "citadel")
		if b == nil {
			return errors.New("citadel bucket missing")
		}
		for _, name := range [][]byte{bucketRoots, bucketRetired, bucketCerts, bucketTokens} {
			if _, err := b.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	}},
}

// Mode says where the CA comes from.
type Mode string

// CA modes.
const (
	ModeSelfSigned Mode = "self-signed"
	ModePlugged    Mode = "plugged"
)

// Phase is a step of the root rotation state machine.
type Phase string

// Rotation phases. See rotation.go.
const (
	// PhaseIdle: one root, which signs and is the whole bundle.
	PhaseIdle Phase = "idle"
	// PhaseStaged: the next root is in the bundle; the active root still
	// signs; waiting for connected proxies to acknowledge the bundle.
	PhaseStaged Phase = "staged"
	// PhaseSwitched: the next root signs; the old root stays in the bundle
	// until no identity's newest certificate depends on it.
	PhaseSwitched Phase = "switched"
)

// caState is the state record. Only self-signed mode rotates.
type caState struct {
	Mode        Mode   `json:"mode"`
	TrustDomain string `json:"trustDomain"`
	Phase       Phase  `json:"phase"`
	// Active is the root that signs in idle and staged, and the old root in
	// switched. Next is the new root in staged and switched.
	Active string `json:"active"`
	Next   string `json:"next,omitempty"`
	// BundleVersion increases with every change of the trusted roots;
	// Bundles maps recent versions to their root IDs, so proxies still on an
	// older bundle can be counted per root.
	BundleVersion uint64              `json:"bundleVersion"`
	Bundles       map[uint64][]string `json:"bundles"`
	Since         time.Time           `json:"since"`
	AckDeadline   time.Time           `json:"ackDeadline,omitzero"`
	Force         bool                `json:"force,omitempty"`
	Reason        string              `json:"reason,omitempty"`
	// Requested is set by an offline `meshd ca rotate`; the server starts
	// the rotation at its next check.
	Requested    bool      `json:"requested,omitempty"`
	LastRotation time.Time `json:"lastRotation,omitzero"`
	// PluggedRoots are the roots of a plugged-in CA's root-cert.pem (DER),
	// so `meshd ca status` can show them without the files.
	PluggedRoots [][]byte `json:"pluggedRoots,omitempty"`
	// ExternalRoots are the roots (DER) of the chains an external signer
	// returned, trusted while leaves under them live (external.go).
	ExternalRoots [][]byte `json:"externalRoots,omitempty"`
}

// signing returns the ID of the root that signs in this state.
func (s *caState) signing() string {
	if s.Phase == PhaseSwitched {
		return s.Next
	}
	return s.Active
}

// local returns the IDs of the self-signed roots in the bundle, whose keys
// are in roots/.
func (s *caState) local() []string {
	if s.Phase == PhaseIdle || s.Next == "" {
		return []string{s.Active}
	}
	return []string{s.Active, s.Next}
}

// bundleIDs returns the IDs of every root in the bundle: the self-signed
// ones or the plugged-in ones, then those of an external signer.
func (s *caState) bundleIDs() []string {
	var ids []string
	if s.Mode == ModePlugged {
		ids = derIDs(s.PluggedRoots)
	} else {
		ids = s.local()
	}
	return append(ids, derIDs(s.ExternalRoots)...)
}

func derIDs(ders [][]byte) []string {
	var ids []string
	for _, der := range ders {
		if c, err := x509.ParseCertificate(der); err == nil {
			ids = append(ids, ca.CertID(c))
		}
	}
	return ids
}

// bumpBundle records a new bundle version for the current trusted roots,
// keeping the last few versions.
func (s *caState) bumpBundle() {
	s.BundleVersion++
	if s.Bundles == nil {
		s.Bundles = map[uint64][]string{}
	}
	s.Bundles[s.BundleVersion] = s.bundleIDs()
	for v := range s.Bundles {
		if v+8 <= s.BundleVersion {
			delete(s.Bundles, v)
		}
	}
}

type rootRecord struct {
	ID      string    `json:"id"`
	Cert    []byte    `json:"cert"`
	Key     []byte    `json:"key,omitempty"`
	Created time.Time `json:"created"`
}

type certRecord struct {
	Serial        string    `json:"serial"`
	Identity      string    `json:"identity"`
	Issued        time.Time `json:"issued"`
	NotAfter      time.Time `json:"notAfter"`
	Caller        string    `json:"caller"`
	Authenticator string    `json:"authenticator"`
	Root          string    `json:"root"`
	// Renews is the serial of the client certificate the caller
	// authenticated with, so a rotation knows which old leaves were replaced.
	Renews string `json:"renews,omitempty"`
}

type tokenRecord struct {
	ID       string    `json:"id"`
	Hash     []byte    `json:"hash"`
	Identity string    `json:"identity"`
	Created  time.Time `json:"created"`
	Expires  time.Time `json:"expires"`
	MaxUses  int       `json:"maxUses"`
	Used     int       `json:"used"`
	LastUsed time.Time `json:"lastUsed,omitzero"`
	Revoked  time.Time `json:"revoked,omitzero"`
}

func getJSON(b *bolt.Bucket, key []byte, v any) (bool, error) {
	if b == nil {
		return false, nil
	}
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("decode %s: %w", key, err)
	}
	return true, nil
}

func putJSON(b *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

// sub returns a child bucket of the citadel tree, or an error naming it if
// the tree was never migrated.
func sub(b *bolt.Bucket, name []byte) (*bolt.Bucket, error) {
	if b == nil {
		return nil, errors.New("citadel store not initialised (has meshd serve run with this data dir?)")
	}
	c := b.Bucket(name)
	if c == nil {
		return nil, fmt.Errorf("citadel store: bucket %s missing", name)
	}
	return c, nil
}

func loadState(b *bolt.Bucket) (*caState, error) {
	var s caState
	ok, err := getJSON(b, keyState, &s)
	if err != nil || !ok {
		return nil, err
	}
	return &s, nil
}

func saveState(b *bolt.Bucket, s *caState) error { return putJSON(b, keyState, s) }

// getRecord decodes key of child bucket name; missing is returned, naming
// the key, when there is none.
func getRecord[T any](b *bolt.Bucket, name []byte, key string, missing error) (*T, error) {
	child, err := sub(b, name)
	if err != nil {
		return nil, err
	}
	var v T
	ok, err := getJSON(child, []byte(key), &v)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s", missing, key)
	}
	return &v, nil
}

var errRootMissing = errors.New("root missing from the store")

func loadRoot(b *bolt.Bucket, id string) (*rootRecord, error) {
	return getRecord[rootRecord](b, bucketRoots, id, errRootMissing)
}

// prune deletes ledger records and join tokens that expired
// before cutoff. It returns how many records it removed.
func prune(b *bolt.Bucket, cutoff time.Time) (int, error) {
	n := 0
	for _, name := range [][]byte{bucketCerts, bucketTokens} {
		bk, err := sub(b, name)
		if err != nil {
			return n, err
		}
		var dead [][]byte
		err = bk.ForEach(func(k, v []byte) error {
			var rec struct {
				NotAfter time.Time `json:"notAfter"`
				Expires  time.Time `json:"expires"`
			}
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("%s/%s: %w", name, k, err)
			}
			end := rec.NotAfter
			if end.IsZero() {
				end = rec.Expires
			}
			if end.Before(cutoff) {
				dead = append(dead, k)
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		for _, k := range dead {
			if err := bk.Delete(k); err != nil {
				return n, err
			}
		}
		n += len(dead)
	}
	return n, nil
}
