package agent

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/meshd/meshd/core/atomicfile"
)

// TestCertDirSwitchesTogether: a reader that resolves ..data once always
// sees files of one version, whatever the writer does meanwhile; the
// stable names always point at the latest version; old versions go.
func TestCertDirSwitchesTogether(t *testing.T) {
	d := &certDir{dir: filepath.Join(t.TempDir(), "certs")}
	version := func(i int) map[string][]byte {
		v := []byte(fmt.Sprintf("version %d\n", i))
		return map[string][]byte{FileKey: v, FileCertChain: v, FileRootCert: v}
	}
	if err := d.write(version(0)); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var mixed, reads atomic.Int64
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				target, err := os.Readlink(filepath.Join(d.dir, dataLink))
				if err != nil {
					t.Error(err)
					return
				}
				var got [][]byte
				for _, n := range []string{FileKey, FileCertChain, FileRootCert} {
					b, err := os.ReadFile(filepath.Join(d.dir, target, n))
					if err != nil {
						break // pruned under us: a reader holding it open would not notice
					}
					got = append(got, b)
				}
				if len(got) == 3 {
					reads.Add(1)
					if !bytes.Equal(got[0], got[1]) || !bytes.Equal(got[1], got[2]) {
						mixed.Add(1)
					}
				}
			}
		}()
	}
	for i := 1; i <= 30; i++ {
		if err := d.write(version(i)); err != nil {
			t.Fatal(err)
		}
		b, err := d.read(FileKey)
		if err != nil || string(b) != fmt.Sprintf("version %d\n", i) {
			t.Fatalf("after write %d: %q %v", i, b, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if mixed.Load() > 0 {
		t.Fatalf("%d of %d reads saw files of different versions", mixed.Load(), reads.Load())
	}
	entries, _ := os.ReadDir(d.dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 5 { // ..data, one version dir, three links
		t.Fatalf("left behind: %v", names)
	}
	for _, n := range []string{FileKey, FileCertChain, FileRootCert} {
		link, err := os.Readlink(filepath.Join(d.dir, n))
		if err != nil || link != filepath.Join(dataLink, n) {
			t.Errorf("%s -> %s (%v)", n, link, err)
		}
	}
}

func TestCertDirModesAndLeftovers(t *testing.T) {
	for _, share := range []bool{false, true} {
		d := &certDir{dir: filepath.Join(t.TempDir(), "certs"), share: share}
		// A crash left a half-written version behind.
		if err := os.MkdirAll(filepath.Join(d.dir, "..vdeadbeef"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := d.write(map[string][]byte{FileKey: []byte("k"), FileCertChain: []byte("c"), FileRootCert: []byte("r")}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(d.dir, "..vdeadbeef")); !os.IsNotExist(err) {
			t.Error("leftover version not pruned")
		}
		wantDir, wantKey := os.FileMode(0o700), os.FileMode(0o600)
		if share {
			wantDir, wantKey = 0o750, 0o640
		}
		if got := mode(t, d.dir); got != wantDir {
			t.Errorf("share=%v: dir %v", share, got)
		}
		if got := mode(t, d.path(FileKey)); got != wantKey {
			t.Errorf("share=%v: key %v", share, got)
		}
		if got := mode(t, d.path(FileRootCert)); got != 0o644 {
			t.Errorf("share=%v: bundle %v", share, got)
		}
	}
}

func TestWriteFileAtomic(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f.json")
	for _, s := range []string{"one", "two"} {
		if err := atomicfile.WriteBytes(p, []byte(s), 0o640); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); string(b) != s {
			t.Fatalf("got %q", b)
		}
	}
	if got := mode(t, p); got != 0o640 {
		t.Errorf("mode %v", got)
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 || strings.HasPrefix(entries[0].Name(), ".") {
		t.Errorf("temporary files left: %v", entries)
	}
}
