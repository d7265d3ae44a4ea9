package store

// Snapshots are how meshd.db is backed up. Copying the file while meshd
// writes can give a torn copy, and meshd holds the file lock, so a backup
// must come from inside the process: Snapshot copies the store as of one
// read transaction, which bbolt keeps consistent while writes go on.
//
// A snapshot is itself a bbolt file with the same tree as the store, so
// restoring one is putting it in place as meshd.db (Restore), and
// VerifySnapshot can read it with the same code that opens the store.
//
// Snapshots hold the CA root key: every file written here is 0600, and the
// snapshots directory 0700.

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/meshd/meshd/core/atomicfile"
)

// SnapshotDir is the directory, inside the data dir, where a running meshd
// writes the snapshots it is asked for.
const SnapshotDir = "snapshots"

// ErrInvalidSnapshot is returned by VerifySnapshot and Restore for a file
// that is not a complete, consistent meshd store.
var ErrInvalidSnapshot = errors.New("not a valid meshd store snapshot")

// Snapshot writes a consistent copy of the whole store to w and returns the
// bytes written. It runs in one read transaction, so it sees the store as of
// one commit while writers carry on; it blocks no writer, but bbolt keeps
// the pages it reads until it returns.
func (s *Store) Snapshot(w io.Writer) (int64, error) {
	n, _, err := s.snapshot(w)
	return n, err
}

// snapshot is Snapshot that also returns the schema version of the copy,
// read in the same transaction.
func (s *Store) snapshot(w io.Writer) (n int64, schema uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		if meta := tx.Bucket(bucketMeta); meta != nil {
			schema = decodeUint(meta.Get(keySchema))
		}
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, 0, fmt.Errorf("snapshot store: %w", err)
	}
	return n, schema, nil
}

// SnapshotFile describes a snapshot written to a file.
type SnapshotFile struct {
	Path   string `json:"path"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
	Schema uint64 `json:"schema"`
}

// WriteSnapshotFile writes a snapshot to path so that path is either absent
// (or its previous content) or the complete snapshot, never a part: it
// writes a temporary file in the same directory with mode 0600, fsyncs it,
// renames it to path and fsyncs the directory. The store's own file is
// refused as a destination.
func (s *Store) WriteSnapshotFile(path string) (*SnapshotFile, error) {
	if same, _ := samePath(path, s.path); same {
		return nil, fmt.Errorf("snapshot to %s: that is the store itself", path)
	}
	var (
		n      int64
		schema uint64
		sum    hash.Hash = sha256.New()
	)
	err := atomicfile.Write(path, 0o600, func(f *os.File) error {
		var err error
		n, schema, err = s.snapshot(io.MultiWriter(f, sum))
		return err
	})
	if err != nil {
		return nil, err
	}
	return &SnapshotFile{Path: path, Bytes: n, SHA256: hex.EncodeToString(sum.Sum(nil)), Schema: schema}, nil
}

func samePath(a, b string) (bool, error) {
	aa, err := filepath.Abs(a)
	if err != nil {
		return false, err
	}
	bb, err := filepath.Abs(b)
	if err != nil {
		return false, err
	}
	return aa == bb, nil
}

// snapshotTimeFormat names snapshot files. Milliseconds keep two snapshots
// in one second apart, and the fixed width makes names sort by time.
const snapshotTimeFormat = "20060102T150405.000Z"

// SnapshotName returns the file name of a snapshot taken at t:
// meshd-<UTC timestamp>.db.
func SnapshotName(t time.Time) string {
	return "meshd-" + t.UTC().Format(snapshotTimeFormat) + ".db"
}

// isSnapshotName reports whether name is one SnapshotName made, so pruning
// never touches a file an operator put beside them.
func isSnapshotName(name string) bool {
	ts, ok := strings.CutPrefix(name, "meshd-")
	if !ok {
		return false
	}
	ts, ok = strings.CutSuffix(ts, ".db")
	if !ok {
		return false
	}
	_, err := time.Parse(snapshotTimeFormat, ts)
	return err == nil
}

// SaveSnapshot writes a snapshot into dir (created 0700) as SnapshotName(now)
// and then removes the oldest snapshots in dir beyond keep (keep <= 0 keeps
// all). It returns the new snapshot and the paths it removed. Callers
// serialise calls on one dir.
func (s *Store) SaveSnapshot(dir string, keep int, now time.Time) (*SnapshotFile, []string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("snapshot dir: %w", err)
	}
	// MkdirAll leaves an existing dir's mode alone; the snapshots hold the
	// CA key, so make sure.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("snapshot dir: %w", err)
	}
	// Two snapshots within a millisecond would share a name: take the next
	// free millisecond, which keeps names unique and in time order.
	path := filepath.Join(dir, SnapshotName(now))
	for i := 0; ; i++ {
		if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
			break
		}
		if i == 1000 {
			return nil, nil, fmt.Errorf("snapshot %s already exists", path)
		}
		now = now.Add(time.Millisecond)
		path = filepath.Join(dir, SnapshotName(now))
	}
	sf, err := s.WriteSnapshotFile(path)
	if err != nil {
		return nil, nil, err
	}
	removed, err := PruneSnapshots(dir, keep)
	if err != nil {
		return sf, removed, fmt.Errorf("snapshot written to %s, but pruning old ones failed: %w", sf.Path, err)
	}
	return sf, removed, nil
}

// PruneSnapshots removes the oldest snapshots in dir (files named by
// SnapshotName) so that at most keep remain; keep <= 0 removes nothing.
func PruneSnapshots(dir string, keep int) ([]string, error) {
	if keep <= 0 {
		return nil, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("prune snapshots: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() && isSnapshotName(e.Name()) {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names) // oldest first
	var removed []string
	var errs []error
	for len(names) > keep {
		p := filepath.Join(dir, names[0])
		names = names[1:]
		if err := os.Remove(p); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, p)
	}
	return removed, errors.Join(errs...)
}
