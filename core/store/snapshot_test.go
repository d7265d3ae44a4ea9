package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// slowWriter makes a snapshot take long enough for writes to land while it
// runs.
type slowWriter struct {
	w     io.Writer
	delay time.Duration
}

func (s slowWriter) Write(p []byte) (int, error) {
	time.Sleep(s.delay)
	return s.w.Write(p)
}

// TestSnapshotConsistentUnderWrites takes a snapshot while a writer keeps
// committing, and checks that the copy passes bbolt's consistency check,
// holds every write committed before it started, and is one commit's
// state: a gap-free prefix of the writer's sequence that agrees with the
// "last" key written in the same transactions.
func TestSnapshotConsistentUnderWrites(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ns := s.Module("test")
	pad := bytes.Repeat([]byte("x"), 1024)
	put := func(n uint64) error {
		return ns.Update(func(b *bolt.Bucket) error {
			if err := b.Put(EncodeUint64(n), append(fmt.Appendf(nil, "value-%d-", n), pad...)); err != nil {
				return err
			}
			return b.Put([]byte("last"), EncodeUint64(n))
		})
	}
	// Enough data that the copy takes many writes.
	if err := ns.Update(func(b *bolt.Bucket) error {
		for n := uint64(1); n <= 2000; n++ {
			if err := b.Put(EncodeUint64(n), append(fmt.Appendf(nil, "value-%d-", n), pad...)); err != nil {
				return err
			}
		}
		return b.Put([]byte("last"), EncodeUint64(2000))
	}); err != nil {
		t.Fatal(err)
	}

	var committed atomic.Uint64
	committed.Store(2000)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writeErr error
	wg.Go(func() {
		for n := uint64(2001); ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := put(n); err != nil {
				writeErr = err
				return
			}
			committed.Store(n)
		}
	})
	// Let the writer get going, then snapshot.
	for committed.Load() < 2050 {
		time.Sleep(time.Millisecond)
	}
	before := committed.Load()
	path := filepath.Join(t.TempDir(), "snap.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.Snapshot(slowWriter{f, 2 * time.Millisecond})
	after := committed.Load()
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if writeErr != nil {
		t.Fatal(writeErr)
	}
	if fi, _ := os.Stat(path); fi.Size() != n {
		t.Fatalf("Snapshot returned %d bytes, file has %d", n, fi.Size())
	}
	if after == before {
		t.Fatal("no write committed while the snapshot ran: writers were blocked")
	}

	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return fmt.Errorf("tx.Check: %w", err)
		}
		b := tx.Bucket(bucketModules).Bucket([]byte("test"))
		if b == nil {
			return errors.New("module bucket missing from snapshot")
		}
		last := DecodeUint64(b.Get([]byte("last")))
		if last < before {
			return fmt.Errorf("snapshot ends at write %d, but %d was committed before it started", last, before)
		}
		for k := uint64(1); k <= last; k++ {
			v := b.Get(EncodeUint64(k))
			if !bytes.HasPrefix(v, fmt.Appendf(nil, "value-%d-", k)) {
				return fmt.Errorf("write %d missing from a snapshot whose last write is %d", k, last)
			}
		}
		if v := b.Get(EncodeUint64(last + 1)); v != nil {
			return fmt.Errorf("write %d present but last says %d: the copy mixes two commits", last+1, last)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func newStoreWithData(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Module("citadel").Migrate([]Migration{{Version: 3, Name: "x", Apply: func(*bolt.Tx) error { return nil }}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Module("citadel").Update(func(b *bolt.Bucket) error {
		tokens, err := b.CreateBucketIfNotExists([]byte("tokens"))
		if err != nil {
			return err
		}
		for i := range 200 {
			if err := tokens.Put(fmt.Appendf(nil, "token-%03d", i), bytes.Repeat([]byte("t"), 512)); err != nil {
				return err
			}
		}
		return b.Put([]byte("state"), []byte("{}"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Module("galley").Update(func(b *bolt.Bucket) error { return b.Put([]byte("rev"), []byte("1")) }); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestWriteSnapshotFileAndVerify(t *testing.T) {
	s := newStoreWithData(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "backup.db")
	sf, err := s.WriteSnapshotFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != sf.Bytes {
		t.Fatalf("snapshot file mode %o size %d, want 0600 and %d", fi.Mode().Perm(), fi.Size(), sf.Bytes)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("temp files left beside the snapshot: %v", entries)
	}
	sum, err := VerifySnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	if sum.SHA256 != sf.SHA256 || sum.Bytes != sf.Bytes {
		t.Fatalf("verify sha256/bytes %s/%d, snapshot wrote %s/%d", sum.SHA256, sum.Bytes, sf.SHA256, sf.Bytes)
	}
	if sum.Schema != migrations[len(migrations)-1].Version || sf.Schema != sum.Schema {
		t.Fatalf("schema: verify %d, write %d", sum.Schema, sf.Schema)
	}
	if time.Since(sum.Created) > time.Minute {
		t.Fatalf("created = %v", sum.Created)
	}
	want := []ModuleSummary{{ID: "citadel", Schema: 3, Keys: 202}, {ID: "galley", Schema: 0, Keys: 1}}
	if !slices.Equal(sum.Modules, want) {
		t.Fatalf("modules = %+v, want %+v", sum.Modules, want)
	}
	if _, err := s.WriteSnapshotFile(s.Path()); err == nil {
		t.Fatal("snapshot over the live store accepted")
	}
}

func TestVerifyRefusesBadSnapshots(t *testing.T) {
	s := newStoreWithData(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	sf, err := s.WriteSnapshotFile(good)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// A store written by a newer meshd.
	newer := filepath.Join(dir, "newer.db")
	if _, err := s.WriteSnapshotFile(newer); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(newer, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, encodeUint(99)) }); err != nil {
		t.Fatal(err)
	}
	db.Close()

	// A bbolt file that is not a meshd store.
	other := filepath.Join(dir, "other.db")
	db, err = bolt.Open(other, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("x")); return err }); err != nil {
		t.Fatal(err)
	}
	db.Close()

	tests := []struct {
		name, path string
		is         error
		msg        string
	}{
		{"garbage", write("garbage.db", bytes.Repeat([]byte("not a database "), 1000)), ErrInvalidSnapshot, "invalid"},
		{"tiny", write("tiny.db", []byte("hello")), ErrInvalidSnapshot, "too small"},
		{"truncated", write("truncated.db", raw[:sf.Bytes/2]), ErrInvalidSnapshot, "truncated"},
		{"newer schema", newer, ErrNewerSchema, "version 99, this meshd knows up to"},
		{"not meshd", other, ErrInvalidSnapshot, "not a meshd store"},
		{"missing", filepath.Join(dir, "nope.db"), os.ErrNotExist, "no such file"},
		{"live store", s.Path(), ErrLocked, "in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := VerifySnapshot(tt.path)
			if !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("VerifySnapshot = %v, want %v with %q", err, tt.is, tt.msg)
			}
		})
	}
}

func TestSaveSnapshotKeepsN(t *testing.T) {
	s := newStoreWithData(t)
	dir := filepath.Join(t.TempDir(), SnapshotDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Files an operator put there are never pruned.
	for _, name := range []string{"notes.txt", "meshd-manual.db"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	var paths []string
	for i := range 4 {
		sf, removed, err := s.SaveSnapshot(dir, 2, t0.Add(time.Duration(i)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, sf.Path)
		if i >= 2 && (len(removed) != 1 || removed[0] != paths[i-2]) {
			t.Fatalf("save %d removed %v, want [%s]", i, removed, paths[i-2])
		}
	}
	if got := filepath.Base(paths[0]); got != "meshd-20300102T030405.000Z.db" {
		t.Fatalf("name = %s", got)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("snapshot dir mode %o, want 0700", fi.Mode().Perm())
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := []string{filepath.Base(paths[2]), filepath.Base(paths[3]), "meshd-manual.db", "notes.txt"}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("dir holds %v, want %v", names, want)
	}
	// A second snapshot in the same millisecond takes the next one, so
	// neither overwrites the other and names still sort by time.
	sf, _, err := s.SaveSnapshot(dir, 3, t0.Add(3*time.Second))
	if err != nil {
		t.Fatalf("second snapshot in one millisecond: %v", err)
	}
	if got := filepath.Base(sf.Path); got != "meshd-20300102T030408.001Z.db" {
		t.Fatalf("name = %s, want the next millisecond", got)
	}
	if _, err := os.Stat(paths[3]); err != nil {
		t.Fatalf("the first snapshot of that millisecond is gone: %v", err)
	}
}

func TestRestore(t *testing.T) {
	src := newStoreWithData(t)
	snap := filepath.Join(t.TempDir(), "snap.db")
	sf, err := src.WriteSnapshotFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	now := func() time.Time { return time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC) }

	readToken := func(dir string) string {
		t.Helper()
		s, err := Open(dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		var v string
		s.Module("citadel").View(func(b *bolt.Bucket) error {
			if b != nil {
				if tb := b.Bucket([]byte("tokens")); tb != nil {
					v = string(tb.Get([]byte("token-007")))
				}
			}
			return nil
		})
		return v
	}

	t.Run("into an empty data dir", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "data")
		res, err := Restore(dir, snap, RestoreOptions{Now: now})
		if err != nil {
			t.Fatal(err)
		}
		if res.Previous != "" || res.Path != filepath.Join(dir, FileName) || res.Snapshot.SHA256 != sf.SHA256 {
			t.Fatalf("Restore = %+v", res)
		}
		for p, want := range map[string]os.FileMode{dir: 0o700, res.Path: 0o600} {
			if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
				t.Fatalf("%s: %v mode %v, want %o", p, err, fi, want)
			}
		}
		if got, _ := fileSHA256(res.Path); got != sf.SHA256 {
			t.Fatal("restored store differs from the snapshot")
		}
		if readToken(dir) == "" {
			t.Fatal("token missing after restore")
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			t.Fatalf("data dir holds %v, want only meshd.db", entries)
		}
	})

	t.Run("over an existing store", func(t *testing.T) {
		dir := t.TempDir()
		s, err := Open(dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		s.Module("galley").Update(func(b *bolt.Bucket) error { return b.Put([]byte("old"), []byte("yes")) })
		s.Close()
		oldSum, _ := fileSHA256(filepath.Join(dir, FileName))
		res, err := Restore(dir, snap, RestoreOptions{Now: now})
		if err != nil {
			t.Fatal(err)
		}
		wantPrev := filepath.Join(dir, "meshd.db.before-restore-20300102T030405Z")
		if res.Previous != wantPrev {
			t.Fatalf("previous = %q, want %q", res.Previous, wantPrev)
		}
		if got, _ := fileSHA256(wantPrev); got != oldSum {
			t.Fatal("the previous store was not kept as it was")
		}
		if readToken(dir) == "" {
			t.Fatal("token missing after restore")
		}
		// Again in the same second: the first backup is not overwritten.
		res, err = Restore(dir, snap, RestoreOptions{Now: now})
		if err != nil {
			t.Fatal(err)
		}
		if res.Previous != wantPrev+".1" {
			t.Fatalf("second restore kept the previous store as %q", res.Previous)
		}
		if got, _ := fileSHA256(wantPrev); got != oldSum {
			t.Fatal("the first backup was overwritten")
		}
	})

	t.Run("over a corrupt store", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, FileName), bytes.Repeat([]byte{0xff}, 8192), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Restore(dir, snap, RestoreOptions{Now: now}); err != nil {
			t.Fatal(err)
		}
		if readToken(dir) == "" {
			t.Fatal("token missing after restore")
		}
	})

	t.Run("refused while the store is open", func(t *testing.T) {
		dir := t.TempDir()
		live, err := Open(dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		before, _ := fileSHA256(live.Path())
		start := time.Now()
		_, err = Restore(dir, snap, RestoreOptions{LockTimeout: 200 * time.Millisecond})
		if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "stop meshd") {
			t.Fatalf("Restore on a locked data dir = %v, want ErrLocked", err)
		}
		if time.Since(start) > 2*time.Second {
			t.Fatal("locked restore took too long to fail")
		}
		if after, _ := fileSHA256(live.Path()); after != before {
			t.Fatal("locked store changed")
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Fatalf("refused restore left files: %v", entries)
		}
	})

	t.Run("refuses an invalid snapshot", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "data")
		bad := filepath.Join(t.TempDir(), "bad.db")
		os.WriteFile(bad, bytes.Repeat([]byte("x"), 8192), 0o600)
		if _, err := Restore(dir, bad, RestoreOptions{}); !errors.Is(err, ErrInvalidSnapshot) {
			t.Fatalf("Restore of garbage = %v", err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("refused restore created the data dir: %v", err)
		}
	})
}

// TestRestoreAsRootKeepsDataDirOwner: an operator restoring with sudo must
// leave a meshd.db that meshd's own user can open.
func TestRestoreAsRootKeepsDataDirOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	src := newStoreWithData(t)
	snap := filepath.Join(t.TempDir(), "snap.db")
	if _, err := src.WriteSnapshotFile(snap); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 4321, 4322); err != nil {
		t.Fatal(err)
	}
	res, err := Restore(dir, snap, RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(res.Path)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 4321 || st.Gid != 4322 {
		t.Fatalf("restored store owned by %d:%d, want the data dir's 4321:4322", st.Uid, st.Gid)
	}
}
