package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SnapshotSummary is what VerifySnapshot found in a snapshot file.
type SnapshotSummary struct {
	Path    string          `json:"path"`
	Bytes   int64           `json:"bytes"`
	SHA256  string          `json:"sha256"`
	Schema  uint64          `json:"schema"`
	Created time.Time       `json:"created"`
	Modules []ModuleSummary `json:"modules"`
}

// ModuleSummary is one module tree in a snapshot.
type ModuleSummary struct {
	ID string `json:"id"`
	// Schema is the tree's own .schema version; the module checks it when
	// it starts.
	Schema uint64 `json:"schema"`
	// Keys counts the key/value pairs in the tree and its nested buckets,
	// .schema included.
	Keys int `json:"keys"`
}

// verifyLockTimeout bounds the wait for the shared lock VerifySnapshot
// takes: a snapshot file has no other user, but a live meshd.db given by
// mistake is locked by its meshd.
const verifyLockTimeout = 500 * time.Millisecond

// VerifySnapshot checks, without changing it, that the file at path is a
// complete meshd store that this meshd can open: a bbolt file whose pages
// all exist and pass bbolt's consistency check, with a meta bucket whose
// schema is not newer than this binary's. Errors wrap ErrInvalidSnapshot,
// ErrNewerSchema or ErrLocked.
func VerifySnapshot(path string) (*SnapshotSummary, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrInvalidSnapshot, path)
	}
	// bbolt's smallest file is four pages (two metas, a freelist, a root
	// leaf); anything under two pages of the smallest size cannot be one.
	if fi.Size() < 2*1024 {
		return nil, fmt.Errorf("%w: %s is %d bytes, too small for a bbolt file", ErrInvalidSnapshot, path, fi.Size())
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: verifyLockTimeout})
	switch {
	case errors.Is(err, bolt.ErrTimeout):
		return nil, fmt.Errorf("%w: %s is in use (a running meshd's live store?)", ErrLocked, path)
	case err != nil:
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidSnapshot, path, err)
	}
	defer db.Close()

	sum := &SnapshotSummary{Path: path, Bytes: fi.Size()}
	err = db.View(func(tx *bolt.Tx) error {
		// A truncated copy still has valid meta pages, but pages past the
		// end of the file are mapped and reading them faults. The meta's
		// high-water mark says how long the file must be; check it before
		// reading any page.
		if need := tx.Size(); need > fi.Size() {
			return fmt.Errorf("%w: %s is truncated: %d bytes, the store needs %d", ErrInvalidSnapshot, path, fi.Size(), need)
		}
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			return fmt.Errorf("%w: %s fails the consistency check: %w", ErrInvalidSnapshot, path, errors.Join(errs...))
		}
		meta := tx.Bucket(bucketMeta)
		mods := tx.Bucket(bucketModules)
		if meta == nil || mods == nil {
			return fmt.Errorf("%w: %s is a bbolt file but not a meshd store (no meta or modules bucket)", ErrInvalidSnapshot, path)
		}
		sum.Schema = decodeUint(meta.Get(keySchema))
		if sum.Schema == 0 {
			return fmt.Errorf("%w: %s has no store schema version", ErrInvalidSnapshot, path)
		}
		if latest := migrations[len(migrations)-1].Version; sum.Schema > latest {
			return fmt.Errorf("%w: %s has version %d, this meshd knows up to %d", ErrNewerSchema, path, sum.Schema, latest)
		}
		if c := meta.Get(keyCreated); c != nil {
			sum.Created, _ = time.Parse(time.RFC3339, string(c))
		}
		return mods.ForEachBucket(func(name []byte) error {
			b := mods.Bucket(name)
			sum.Modules = append(sum.Modules, ModuleSummary{ID: string(name), Schema: decodeUint(b.Get(keyModSchema)), Keys: countKeys(b)})
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	if sum.SHA256, err = fileSHA256(path); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	return sum, nil
}

// countKeys counts the key/value pairs in b and its nested buckets.
func countKeys(b *bolt.Bucket) int {
	n := 0
	_ = b.ForEach(func(k, v []byte) error {
		if v == nil {
			if nb := b.Bucket(k); nb != nil {
				n += countKeys(nb)
				return nil
			}
		}
		n++
		return nil
	})
	return n
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
