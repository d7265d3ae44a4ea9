package store

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestOpenCreatesPrivateDirAndFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for path, want := range map[string]os.FileMode{dir: 0o700, s.Path(): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode = %o, want %o", path, got, want)
		}
	}
	v, err := s.SchemaVersion()
	if err != nil || v != migrations[len(migrations)-1].Version {
		t.Fatalf("SchemaVersion() = %d, %v", v, err)
	}
}

func TestSecondOpenFailsFastWithLocked(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	_, err = Open(dir, Options{})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), "data dir locked by another meshd") {
		t.Fatalf("message %q does not say the data dir is locked", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("second Open took %s, want under 2s", d)
	}
}

func TestUnwritableDataDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(filepath.Join(file, "data"), Options{})
	if err == nil || !strings.Contains(err.Error(), "data dir") {
		t.Fatalf("Open under a file = %v", err)
	}
}

func TestModuleNamespacesAreIsolated(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, b := s.Module("galley"), s.Module("citadel")
	if err := a.View(func(bk *bolt.Bucket) error {
		if bk != nil {
			return errors.New("bucket exists before first write")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := a.Update(func(bk *bolt.Bucket) error { return bk.Put([]byte("k"), []byte("galley")) }); err != nil {
		t.Fatal(err)
	}
	if err := b.Update(func(bk *bolt.Bucket) error { return bk.Put([]byte("k"), []byte("citadel")) }); err != nil {
		t.Fatal(err)
	}
	for ns, want := range map[*Namespace]string{a: "galley", b: "citadel"} {
		if err := ns.View(func(bk *bolt.Bucket) error {
			if got := string(bk.Get([]byte("k"))); got != want {
				return fmt.Errorf("got %q want %q", got, want)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestModuleMigrations(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ns := s.Module("galley")
	applied := 0
	v1 := []Migration{{Version: 1, Name: "revisions", Apply: func(tx *bolt.Tx) error {
		applied++
		_, err := ModuleBucket(tx, "galley").CreateBucketIfNotExists([]byte("revisions"))
		return err
	}}}
	if err := ns.Migrate(v1); err != nil {
		t.Fatal(err)
	}
	if err := ns.Migrate(v1); err != nil || applied != 1 {
		t.Fatalf("re-running migrations: err=%v applied=%d, want 1", err, applied)
	}
	v2 := append(v1, Migration{Version: 2, Name: "history", Apply: func(tx *bolt.Tx) error {
		applied++
		_, err := ModuleBucket(tx, "galley").CreateBucketIfNotExists([]byte("history"))
		return err
	}})
	if err := ns.Migrate(v2); err != nil || applied != 2 {
		t.Fatalf("v2: err=%v applied=%d", err, applied)
	}
	s.Close()

	// An older meshd (knowing only v1) must refuse the newer tree.
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Module("galley").Migrate(v1); !errors.Is(err, ErrNewerSchema) {
		t.Fatalf("old migrations on new tree = %v, want ErrNewerSchema", err)
	}
	if err := s.Module("galley").View(func(bk *bolt.Bucket) error {
		if bk.Bucket([]byte("history")) == nil {
			return errors.New("history bucket missing")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestNewerStoreSchemaRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, encodeUint(99)) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrNewerSchema) {
		t.Fatalf("Open = %v, want ErrNewerSchema", err)
	}
}

// TestReopenAfterSIGKILL kills a writer mid-stream and checks that every
// write it reported as committed is in the store after reopening.
func TestReopenAfterSIGKILL(t *testing.T) {
	if os.Getenv("MESHD_STORE_WRITER") != "" {
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestStoreWriterChild$", "-test.v")
	cmd.Env = append(os.Environ(), "MESHD_STORE_WRITER="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	var committed []uint64
	for sc.Scan() {
		line := sc.Text()
		seq, ok := strings.CutPrefix(line, "committed ")
		if !ok {
			continue
		}
		n, _ := strconv.ParseUint(seq, 10, 64)
		committed = append(committed, n)
		if len(committed) == 200 {
			// Kill while the writer is in the middle of further commits.
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	_ = cmd.Wait()
	if len(committed) < 200 {
		t.Fatalf("writer reported only %d commits", len(committed))
	}

	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("reopen after SIGKILL: %v", err)
	}
	defer s.Close()
	err = s.Module("test").View(func(b *bolt.Bucket) error {
		if b == nil {
			return errors.New("no bucket after reopen")
		}
		for _, n := range committed {
			v := b.Get(EncodeUint64(n))
			if string(v) != fmt.Sprintf("value-%d", n) {
				return fmt.Errorf("committed write %d lost (got %q)", n, v)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestStoreWriterChild is the child process of TestReopenAfterSIGKILL: it
// writes numbered records forever, printing each one after its commit.
func TestStoreWriterChild(t *testing.T) {
	dir := os.Getenv("MESHD_STORE_WRITER")
	if dir == "" {
		t.Skip("child process of TestReopenAfterSIGKILL")
	}
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ns := s.Module("test")
	for n := uint64(1); ; n++ {
		err := ns.Update(func(b *bolt.Bucket) error {
			// A larger value per commit keeps pages splitting, so the kill
			// lands in varied places within a write.
			if err := b.Put(EncodeUint64(n), fmt.Appendf(nil, "value-%d", n)); err != nil {
				return err
			}
			return b.Put(fmt.Appendf(nil, "pad-%d", n), make([]byte, 512))
		})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("committed %d\n", n)
	}
}
