// Package store is meshd's embedded state: one bbolt file, meshd.db, in the
// data dir. Every module owns one bucket tree and nothing outside it.
//
// The bucket tree (update this drawing each time the structure changes, in
// the same commit as the migration that changes it):
//
//	meta/
//	  schema  -> uint64 big-endian: store schema version (see migrations)
//	  created -> RFC 3339 time the store was created
//	modules/
//	  <module-id>/                one tree per module, created on first use
//	    .schema -> uint64 big-endian: that module's own schema version
//	    ...                       the module's buckets, documented in its package
//
// Module trees documented elsewhere:
//
//	modules/galley   modules/galley/store.go  (accepted revisions, history)
//	modules/citadel  modules/citadel/store.go (roots, rotation state, issued certs, join tokens)
//
// bbolt commits are fsynced, so a write that returned nil survives a crash or
// SIGKILL. The file lock makes a second meshd on the same data dir fail fast
// with ErrLocked instead of waiting forever.
//
// The lock also means the file cannot be copied safely from outside while
// meshd runs: backups are snapshots taken inside the process from one read
// transaction (snapshot.go), checked with VerifySnapshot and put back, with
// meshd stopped, by Restore (restore.go).
package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// FileName is the store file inside the data dir.
const FileName = "meshd.db"

var (
	bucketMeta    = []byte("meta")
	bucketModules = []byte("modules")
	keySchema     = []byte("schema")
	keyCreated    = []byte("created")
	keyModSchema  = []byte(".schema")
)

// ErrLocked is returned by Open when another process holds the data dir.
var ErrLocked = errors.New("data dir locked by another meshd")

// ErrNewerSchema is returned when the store was written by a newer meshd.
var ErrNewerSchema = errors.New("store schema is newer than this meshd")

// Migration moves a tree from Version-1 to Version.
type Migration struct {
	Version uint64
	Name    string
	Apply   func(tx *bolt.Tx) error
}

// migrations is the store-level schema history. Append only.
var migrations = []Migration{
	{Version: 1, Name: "create meta and modules buckets", Apply: func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketModules); err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		return meta.Put(keyCreated, []byte(time.Now().UTC().Format(time.RFC3339)))
	}},
}

// Options tune Open.
type Options struct {
	// LockTimeout bounds the wait for the file lock (default 1 s, so a second
	// meshd on the same data dir fails well within 2 s).
	LockTimeout time.Duration
	// ReadOnly opens the store without write access, for inspection
	// commands. It still takes a shared lock.
	ReadOnly bool
}

// Store is an open meshd.db.
type Store struct {
	db   *bolt.DB
	path string
}

// Open opens or creates the store in dir, creating dir with 0700 (the store
// holds CA keys) and running pending migrations.
func Open(dir string, opts Options) (*Store, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	if !opts.ReadOnly {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("data dir %s: %w", dir, err)
		}
		if err := checkWritable(dir); err != nil {
			return nil, fmt.Errorf("data dir %s not writable: %w", dir, err)
		}
	}
	path := filepath.Join(dir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout, ReadOnly: opts.ReadOnly})
	switch {
	case errors.Is(err, bolt.ErrTimeout):
		return nil, fmt.Errorf("%w: %s", ErrLocked, dir)
	case err != nil:
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{db: db, path: path}
	if !opts.ReadOnly {
		if err := s.db.Update(func(tx *bolt.Tx) error { return migrate(tx, nil, migrations) }); err != nil {
			db.Close()
			return nil, fmt.Errorf("migrate store %s: %w", path, err)
		}
	}
	return s, nil
}

func checkWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".meshd-write-check-*")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// migrate applies ms to the tree rooted at b (nil: the whole store, with the
// version in meta/schema).
func migrate(tx *bolt.Tx, b *bolt.Bucket, ms []Migration) error {
	var cur uint64
	if b == nil {
		if meta := tx.Bucket(bucketMeta); meta != nil {
			cur = decodeUint(meta.Get(keySchema))
		}
	} else {
		cur = decodeUint(b.Get(keyModSchema))
	}
	latest := uint64(0)
	if len(ms) > 0 {
		latest = ms[len(ms)-1].Version
	}
	if cur > latest {
		return fmt.Errorf("%w: version %d, this meshd knows up to %d", ErrNewerSchema, cur, latest)
	}
	for _, m := range ms {
		if m.Version <= cur {
			continue
		}
		if err := m.Apply(tx); err != nil {
			return fmt.Errorf("migration %d (%s): %w", m.Version, m.Name, err)
		}
		cur = m.Version
	}
	if b == nil {
		return tx.Bucket(bucketMeta).Put(keySchema, encodeUint(cur))
	}
	return b.Put(keyModSchema, encodeUint(cur))
}

// SchemaVersion returns the store-level schema version.
func (s *Store) SchemaVersion() (uint64, error) {
	var v uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		if meta := tx.Bucket(bucketMeta); meta != nil {
			v = decodeUint(meta.Get(keySchema))
		}
		return nil
	})
	return v, err
}

// Path returns the store file path.
func (s *Store) Path() string { return s.path }

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

// Module returns the namespace of module id. The bucket is created on the
// first Update.
func (s *Store) Module(id string) *Namespace {
	return &Namespace{db: s.db, name: []byte(id)}
}

// Namespace is one module's tree, modules/<id>.
type Namespace struct {
	db   *bolt.DB
	name []byte
}

// Update runs fn in a read-write transaction on the module's bucket. The
// transaction is committed and fsynced when fn returns nil.
func (n *Namespace) Update(fn func(b *bolt.Bucket) error) error {
	return n.db.Update(func(tx *bolt.Tx) error {
		b, err := n.bucket(tx, true)
		if err != nil {
			return err
		}
		return fn(b)
	})
}

// View runs fn in a read-only transaction. b is nil when the module has never
// written anything.
func (n *Namespace) View(fn func(b *bolt.Bucket) error) error {
	return n.db.View(func(tx *bolt.Tx) error {
		b, _ := n.bucket(tx, false)
		return fn(b)
	})
}

// Migrate brings the module's tree to the latest of ms. Migration functions
// receive the transaction; the module's bucket is tx.Bucket("modules").Bucket(id).
func (n *Namespace) Migrate(ms []Migration) error {
	return n.db.Update(func(tx *bolt.Tx) error {
		b, err := n.bucket(tx, true)
		if err != nil {
			return err
		}
		return migrate(tx, b, ms)
	})
}

func (n *Namespace) bucket(tx *bolt.Tx, create bool) (*bolt.Bucket, error) {
	mods := tx.Bucket(bucketModules)
	if mods == nil {
		return nil, errors.New("store not initialised")
	}
	if !create {
		return mods.Bucket(n.name), nil
	}
	return mods.CreateBucketIfNotExists(n.name)
}

// ModuleBucket returns the bucket of module id inside tx, for migrations.
func ModuleBucket(tx *bolt.Tx, id string) *bolt.Bucket {
	if mods := tx.Bucket(bucketModules); mods != nil {
		return mods.Bucket([]byte(id))
	}
	return nil
}

func encodeUint(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func decodeUint(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// EncodeUint64 and DecodeUint64 are the store's integer encoding (big-endian,
// so keys sort numerically); modules use them for sequence keys.
func EncodeUint64(v uint64) []byte { return encodeUint(v) }

// DecodeUint64 decodes EncodeUint64; malformed input decodes to 0.
func DecodeUint64(b []byte) uint64 { return decodeUint(b) }
