package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/meshd/meshd/core/atomicfile"
)

// RestoreOptions tune Restore.
type RestoreOptions struct {
	// LockTimeout bounds the wait for the data dir's lock (default 1 s,
	// like Open).
	LockTimeout time.Duration
	// Now names the backup of the replaced store (default time.Now).
	Now func() time.Time
}

// Restored says what Restore did.
type Restored struct {
	// Path is the restored store, <dataDir>/meshd.db.
	Path string `json:"path"`
	// Previous is where the replaced store was moved, empty when the data
	// dir had none.
	Previous string `json:"previous,omitempty"`
	// Snapshot is the verified snapshot that was put in place.
	Snapshot *SnapshotSummary `json:"snapshot"`
}

// Restore makes the snapshot file the store of dataDir. It is for a stopped
// meshd: it takes the store's file lock the way meshd does and fails with
// ErrLocked while a meshd runs on dataDir. The snapshot is verified first
// (errors wrap ErrInvalidSnapshot or ErrNewerSchema) and copied into the
// data dir with mode 0600 and fsync; the copy must match the verified file.
// The current meshd.db, if any, is kept as meshd.db.before-restore-<UTC
// time>, and the copy replaces it by an atomic rename, so at every moment
// meshd.db is either the old store or the restored one. Run as root, the
// restored file gets the data dir's owner, so `sudo meshd store restore`
// leaves a store the meshd user can open.
//
// The lock is taken on meshd.db itself rather than by opening it with
// bbolt, so a corrupt store, the usual reason to restore, can be replaced.
func Restore(dataDir, snapshot string, opts RestoreOptions) (*Restored, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	sum, err := VerifySnapshot(snapshot)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir %s: %w", dataDir, err)
	}
	dbPath := filepath.Join(dataDir, FileName)

	// Lock meshd.db, creating an empty placeholder when there is none so a
	// meshd starting meanwhile finds it locked rather than creating its
	// own store under our feet.
	created := false
	lf, err := os.OpenFile(dbPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		created = true
	} else if errors.Is(err, fs.ErrExist) {
		lf, err = os.OpenFile(dbPath, os.O_RDWR, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dbPath, err)
	}
	defer lf.Close()
	if err := lockFile(lf, opts.LockTimeout); err != nil {
		if created {
			os.Remove(dbPath)
		}
		if errors.Is(err, errLockTimeout) {
			return nil, fmt.Errorf("%w: %s (stop meshd before restoring)", ErrLocked, dataDir)
		}
		return nil, fmt.Errorf("lock %s: %w", dbPath, err)
	}
	fi, err := lf.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", dbPath, err)
	}
	hadStore := !created && fi.Size() > 0

	fail := func(err error) (*Restored, error) {
		if created {
			os.Remove(dbPath)
		}
		return nil, err
	}
	// Copy first, while the old store is untouched.
	tmp := dbPath + ".restore-tmp"
	os.Remove(tmp) // a leftover of an interrupted restore
	var copied string
	err = atomicfile.Write(tmp, 0o600, func(f *os.File) error {
		src, err := os.Open(snapshot)
		if err != nil {
			return err
		}
		defer src.Close()
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(f, h), src); err != nil {
			return err
		}
		copied = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err != nil {
		return fail(fmt.Errorf("copy snapshot: %w", err))
	}
	if err := matchOwner(tmp, dataDir); err != nil {
		os.Remove(tmp)
		return fail(fmt.Errorf("give the restored store the data dir's owner: %w", err))
	}
	if copied != sum.SHA256 {
		os.Remove(tmp)
		return fail(fmt.Errorf("snapshot %s changed while it was restored (sha256 %s, then %s); try again", snapshot, sum.SHA256, copied))
	}

	res := &Restored{Path: dbPath, Snapshot: sum}
	if hadStore {
		prev, err := keepPrevious(dbPath, opts.Now())
		if err != nil {
			os.Remove(tmp)
			return nil, fmt.Errorf("keep the current store: %w", err)
		}
		res.Previous = prev
	}
	if err := os.Rename(tmp, dbPath); err != nil {
		os.Remove(tmp)
		return fail(fmt.Errorf("put snapshot in place: %w", err))
	}
	if err := atomicfile.SyncDir(dataDir); err != nil {
		return nil, fmt.Errorf("put snapshot in place: fsync %s: %w", dataDir, err)
	}
	return res, nil
}

// keepPrevious gives the current store a second name,
// meshd.db.before-restore-<time>, by a hard link, so meshd.db never goes
// missing: the rename that follows replaces it in one step. Where links
// are not supported it copies instead.
func keepPrevious(dbPath string, now time.Time) (string, error) {
	base := dbPath + ".before-restore-" + now.UTC().Format("20060102T150405Z")
	for i := 0; i < 100; i++ {
		prev := base
		if i > 0 {
			prev = fmt.Sprintf("%s.%d", base, i)
		}
		err := os.Link(dbPath, prev)
		if err == nil {
			return prev, nil
		}
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		// No hard links here: copy.
		err = atomicfile.Write(prev, 0o600, func(f *os.File) error {
			src, err := os.Open(dbPath)
			if err != nil {
				return err
			}
			defer src.Close()
			_, err = io.Copy(f, src)
			return err
		})
		if err != nil {
			return "", err
		}
		return prev, nil
	}
	return "", fmt.Errorf("too many earlier backups named %s*", base)
}
