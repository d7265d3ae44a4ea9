package galley

// Galley's tree in the store (core/store), modules/galley:
//
//	modules/galley/
//	  .schema          -> uint64: this tree's schema version (migrations below)
//	  current/         the objects of the latest revision
//	    <key>          -> JSON entry: origin, blob (hex SHA-256), file, line;
//	                      key is kind/namespace/name
//	  revisions/       accepted revisions, oldest first; at most Config.History
//	    <rev>          -> JSON revisionRecord: revision, time, reason (change or
//	                      rollback), rollbackTo, origins changed, object count,
//	                      digest of the whole set, and the changes from the
//	                      previous revision: key, op (add, update, remove), the
//	                      entry before and the entry after; rev is uint64
//	                      big-endian
//	  blobs/           object content, shared by every revision that holds it
//	    <sha256>       -> canonical JSON of one object (apiVersion, kind,
//	                      metadata, spec); the key is the 32-byte digest of it
//	  refs/
//	    <sha256>       -> uint64: references to the blob from current/ and
//	                      from the before and after entries of revisions/
//	  origins/         per origin (file) what galley settled on
//	    <origin>       -> JSON originRecord: source, digest of the content last
//	                      accepted (or superseded by a rollback), held (a
//	                      rollback replaced that content), revision and time
//	                      of its last accepted change
//
// Revisions are stored as changes so that a revision costs what changed,
// not the size of the mesh: the latest revision is current/, and an older
// one is rebuilt by undoing the changes of the revisions after it (their
// before entries). Pruning the oldest revision drops its record and the
// references it held; a blob with no references left is deleted. Every
// accept and rollback is one bbolt transaction (current/, the revision, the
// blobs and refs, the origins and the pruning together), and bbolt fsyncs
// each commit, so a crash or SIGKILL leaves the tree at a revision that was
// fully written and never half of one.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/galley/api"
)

var (
	bucketCurrent   = []byte("current")
	bucketRevisions = []byte("revisions")
	bucketBlobs     = []byte("blobs")
	bucketRefs      = []byte("refs")
	bucketOrigins   = []byte("origins")
)

// migrations is galley's schema history. Append only; update the drawing
// above in the same commit.
var migrations = []store.Migration{
	{Version: 1, Name: "create galley buckets", Apply: func(tx *bolt.Tx) error {
		b := store.ModuleBucket(tx, string(ID))
		if b == nil {
			return errors.New("galley bucket missing")
		}
		for _, name := range [][]byte{bucketCurrent, bucketRevisions, bucketBlobs, bucketRefs, bucketOrigins} {
			if _, err := b.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	}},
}

// ErrNoRevision is returned for a revision that does not exist or was
// pruned from the history.
var ErrNoRevision = errors.New("no such revision")

// blobHash is the SHA-256 of an object's canonical bytes.
type blobHash [sha256.Size]byte

func (h blobHash) String() string { return hex.EncodeToString(h[:]) }

// MarshalText encodes the hash as hex.
func (h blobHash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText decodes hex.
func (h *blobHash) UnmarshalText(b []byte) error {
	if hex.DecodedLen(len(b)) != len(h) {
		return fmt.Errorf("blob hash: want %d hex digits, got %d", 2*len(h), len(b))
	}
	_, err := hex.Decode(h[:], b)
	return err
}

// Entry is one object of a stored revision: where it came from and which
// blob holds its content.
type Entry struct {
	Origin string   `json:"origin"`
	Blob   blobHash `json:"blob"`
	File   string   `json:"file,omitempty"`
	Line   int      `json:"line,omitempty"`
}

// Change ops.
const (
	OpAdd    = "add"
	OpUpdate = "update"
	OpRemove = "remove"
)

// change is one key's change in a revision record.
type change struct {
	Key    api.Key `json:"key"`
	Op     string  `json:"op"`
	Before *Entry  `json:"before,omitempty"`
	After  *Entry  `json:"after,omitempty"`
}

// Revision reasons.
const (
	ReasonChange   = "change"
	ReasonRollback = "rollback"
)

// revisionRecord is the stored form of a revision.
type revisionRecord struct {
	Revision   uint64    `json:"revision"`
	Time       time.Time `json:"time"`
	Reason     string    `json:"reason"`
	RollbackTo uint64    `json:"rollbackTo,omitempty"`
	Origins    []string  `json:"origins,omitempty"`
	Objects    int       `json:"objects"`
	Digest     string    `json:"digest"`
	Changes    []change  `json:"changes"`
}

// originRecord is the stored state of an origin.
type originRecord struct {
	Source   string    `json:"source,omitempty"`
	Digest   digest    `json:"digest"`
	Held     bool      `json:"held,omitempty"`
	Revision uint64    `json:"revision,omitempty"`
	Time     time.Time `json:"time,omitzero"`
}

// revStore reads and writes galley's tree.
type revStore struct {
	ns      *store.Namespace
	history int
}

func newRevStore(ns *store.Namespace, history int) (*revStore, error) {
	if err := ns.Migrate(migrations); err != nil {
		return nil, fmt.Errorf("galley store: %w", err)
	}
	return &revStore{ns: ns, history: max(history, 1)}, nil
}

// loaded is the latest revision as read at startup.
type loaded struct {
	revision uint64
	entries  map[api.Key]Entry
	blobs    map[blobHash][]byte
	origins  map[string]originRecord
}

// load reads the latest revision: its entries with their blobs, and the
// origin records.
func (s *revStore) load() (*loaded, error) {
	l := &loaded{entries: map[api.Key]Entry{}, blobs: map[blobHash][]byte{}, origins: map[string]originRecord{}}
	err := s.ns.View(func(b *bolt.Bucket) error {
		if b == nil {
			return nil
		}
		if k, _ := b.Bucket(bucketRevisions).Cursor().Last(); k != nil {
			l.revision = store.DecodeUint64(k)
		}
		blobs := b.Bucket(bucketBlobs)
		err := b.Bucket(bucketCurrent).ForEach(func(k, v []byte) error {
			var e Entry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("current/%s: %w", k, err)
			}
			data := blobs.Get(e.Blob[:])
			if data == nil {
				return fmt.Errorf("current/%s: blob %s missing", k, e.Blob)
			}
			l.entries[api.Key(k)] = e
			l.blobs[e.Blob] = bytes.Clone(data)
			return nil
		})
		if err != nil {
			return err
		}
		return b.Bucket(bucketOrigins).ForEach(func(k, v []byte) error {
			var r originRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("origins/%s: %w", k, err)
			}
			l.origins[string(k)] = r
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("galley store: %w", err)
	}
	return l, nil
}

// commitOp is everything one accept or rollback writes.
type commitOp struct {
	record        *revisionRecord
	blobs         map[blobHash][]byte // content of the after entries
	origins       map[string]originRecord
	deleteOrigins []string
}

// commit writes a revision in one transaction and prunes the history.
func (s *revStore) commit(op commitOp) error {
	return s.ns.Update(func(b *bolt.Bucket) error {
		cur, revs, blobs, refs, origins := b.Bucket(bucketCurrent), b.Bucket(bucketRevisions), b.Bucket(bucketBlobs), b.Bucket(bucketRefs), b.Bucket(bucketOrigins)
		if k, _ := revs.Cursor().Last(); k != nil && store.DecodeUint64(k) >= op.record.Revision {
			return fmt.Errorf("revision %d is not after the stored revision %d", op.record.Revision, store.DecodeUint64(k))
		}
		for _, c := range op.record.Changes {
			if c.After != nil {
				if blobs.Get(c.After.Blob[:]) == nil {
					data, ok := op.blobs[c.After.Blob]
					if !ok {
						return fmt.Errorf("no content for blob %s of %s", c.After.Blob, c.Key)
					}
					if err := blobs.Put(c.After.Blob[:], data); err != nil {
						return err
					}
				}
				// One reference from current/, one from this record.
				if err := addRef(refs, c.After.Blob, 2); err != nil {
					return err
				}
				raw, err := json.Marshal(c.After)
				if err != nil {
					return err
				}
				if err := cur.Put([]byte(c.Key), raw); err != nil {
					return err
				}
			} else if err := cur.Delete([]byte(c.Key)); err != nil {
				return err
			}
			// The before blob moves from current/ to this record: its
			// count stays.
		}
		raw, err := json.Marshal(op.record)
		if err != nil {
			return err
		}
		if err := revs.Put(store.EncodeUint64(op.record.Revision), raw); err != nil {
			return err
		}
		for name, r := range op.origins {
			raw, err := json.Marshal(r)
			if err != nil {
				return err
			}
			if err := origins.Put([]byte(name), raw); err != nil {
				return err
			}
		}
		for _, name := range op.deleteOrigins {
			if err := origins.Delete([]byte(name)); err != nil {
				return err
			}
		}
		return s.prune(revs, blobs, refs)
	})
}

// prune drops the oldest revisions beyond the history length.
func (s *revStore) prune(revs, blobs, refs *bolt.Bucket) error {
	c := revs.Cursor()
	first, _ := c.First()
	last, _ := c.Last()
	if first == nil {
		return nil
	}
	for n := store.DecodeUint64(last) - store.DecodeUint64(first) + 1; n > uint64(s.history); n-- {
		k, v := c.First()
		var rec revisionRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("revisions/%d: %w", store.DecodeUint64(k), err)
		}
		for _, ch := range rec.Changes {
			for _, e := range []*Entry{ch.Before, ch.After} {
				if e == nil {
					continue
				}
				if err := addRef(refs, e.Blob, -1); err != nil {
					return err
				}
				if refs.Get(e.Blob[:]) == nil {
					if err := blobs.Delete(e.Blob[:]); err != nil {
						return err
					}
				}
			}
		}
		if err := revs.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// addRef adds d to a blob's reference count, deleting the count at zero.
func addRef(refs *bolt.Bucket, h blobHash, d int64) error {
	n := int64(store.DecodeUint64(refs.Get(h[:]))) + d
	switch {
	case n < 0:
		return fmt.Errorf("blob %s: reference count below zero", h)
	case n == 0:
		return refs.Delete(h[:])
	}
	return refs.Put(h[:], store.EncodeUint64(uint64(n)))
}

// RevisionInfo describes a revision without its objects.
type RevisionInfo struct {
	Revision   uint64    `json:"revision"`
	Time       time.Time `json:"time"`
	Reason     string    `json:"reason"`
	RollbackTo uint64    `json:"rollbackTo,omitempty"`
	Origins    []string  `json:"origins,omitempty"`
	Objects    int       `json:"objects"`
	Added      int       `json:"added"`
	Updated    int       `json:"updated"`
	Removed    int       `json:"removed"`
	// Digest identifies the revision's whole object set: two revisions
	// with equal digests hold the same config.
	Digest string `json:"digest"`
}

func (r *revisionRecord) info() RevisionInfo {
	ri := RevisionInfo{
		Revision: r.Revision, Time: r.Time, Reason: r.Reason, RollbackTo: r.RollbackTo,
		Origins: r.Origins, Objects: r.Objects, Digest: r.Digest,
	}
	for _, c := range r.Changes {
		switch c.Op {
		case OpAdd:
			ri.Added++
		case OpUpdate:
			ri.Updated++
		case OpRemove:
			ri.Removed++
		}
	}
	return ri
}

// list returns the retained revisions, newest first, at most limit (0: all).
func (s *revStore) list(limit int) ([]RevisionInfo, error) {
	var out []RevisionInfo
	err := s.ns.View(func(b *bolt.Bucket) error {
		if b == nil {
			return nil
		}
		c := b.Bucket(bucketRevisions).Cursor()
		for k, v := c.Last(); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Prev() {
			var rec revisionRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("revisions/%d: %w", store.DecodeUint64(k), err)
			}
			out = append(out, rec.info())
		}
		return nil
	})
	return out, err
}

// materialized is a stored revision rebuilt in full.
type materialized struct {
	record  revisionRecord
	entries map[api.Key]Entry
	blobs   map[blobHash][]byte
}

// materialize rebuilds revision rev (0: the latest) from current/ by
// undoing the revisions after it.
func (s *revStore) materialize(rev uint64) (*materialized, error) {
	var m *materialized
	err := s.ns.View(func(b *bolt.Bucket) error {
		if b == nil {
			return fmt.Errorf("%w: %d (no revisions yet)", ErrNoRevision, rev)
		}
		revs := b.Bucket(bucketRevisions)
		c := revs.Cursor()
		firstK, _ := c.First()
		lastK, _ := c.Last()
		if lastK == nil {
			return fmt.Errorf("%w: %d (no revisions yet)", ErrNoRevision, rev)
		}
		first, last := store.DecodeUint64(firstK), store.DecodeUint64(lastK)
		if rev == 0 {
			rev = last
		}
		if rev < first || rev > last {
			return fmt.Errorf("%w: %d (history holds %d to %d)", ErrNoRevision, rev, first, last)
		}
		m = &materialized{entries: map[api.Key]Entry{}, blobs: map[blobHash][]byte{}}
		err := b.Bucket(bucketCurrent).ForEach(func(k, v []byte) error {
			var e Entry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("current/%s: %w", k, err)
			}
			m.entries[api.Key(k)] = e
			return nil
		})
		if err != nil {
			return err
		}
		for k, v := c.Last(); k != nil; k, v = c.Prev() {
			var rec revisionRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("revisions/%d: %w", store.DecodeUint64(k), err)
			}
			if rec.Revision == rev {
				m.record = rec
				break
			}
			for _, ch := range rec.Changes {
				if ch.Before == nil {
					delete(m.entries, ch.Key)
				} else {
					m.entries[ch.Key] = *ch.Before
				}
			}
		}
		blobs := b.Bucket(bucketBlobs)
		for k, e := range m.entries {
			data := blobs.Get(e.Blob[:])
			if data == nil {
				return fmt.Errorf("revision %d: %s: blob %s missing", rev, k, e.Blob)
			}
			m.blobs[e.Blob] = bytes.Clone(data)
		}
		return nil
	})
	return m, err
}

// setDigest digests a whole object set: sorted keys with their blobs.
func setDigest(entries map[api.Key]Entry) string {
	keys := make([]api.Key, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	h := sha256.New()
	for _, k := range keys {
		b := entries[k].Blob
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write(b[:])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// keysOf returns the sorted keys of m.
func keysOf[V any](m map[api.Key]V) []api.Key {
	out := make([]api.Key, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b api.Key) int { return strings.Compare(string(a), string(b)) })
	return out
}
