package filesink

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/modules/telemetry/api"
)

func records(from, n int) []api.Record {
	out := make([]api.Record, n)
	for i := range out {
		out[i] = api.Record{Kind: api.KindHTTP, Reporter: "destination", RequestID: fmt.Sprint(from + i), Path: "/p"}
	}
	return out
}

// readIDs returns the request IDs in a file, checking every line is a
// JSON record.
func readIDs(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ids []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r api.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: line %q: %v", path, sc.Text(), err)
		}
		ids = append(ids, r.RequestID)
	}
	return ids
}

// TestRotation writes far more than MaxBytes*(MaxBackups+1): the files
// kept are bounded in number and size, hold whole lines, and are the
// newest records in order.
func TestRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "access.log")
	const maxBytes, backups = 2000, 2
	s, err := New(Options{Path: path, MaxBytes: maxBytes, MaxBackups: backups})
	if err != nil {
		t.Fatal(err)
	}
	const total = 1000
	for i := 0; i < total; i += 10 {
		if err := s.Export(context.Background(), records(i, 10)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := "access.log access.log.1 access.log.2"; strings.Join(names, " ") != want {
		t.Fatalf("files %v, want %s", names, want)
	}
	var ids []string
	for _, name := range []string{"access.log.2", "access.log.1", "access.log"} {
		p := filepath.Join(filepath.Dir(path), name)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > maxBytes {
			t.Errorf("%s is %d bytes, over %d", name, st.Size(), maxBytes)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v", name, st.Mode().Perm())
		}
		ids = append(ids, readIDs(t, p)...)
	}
	// The kept records are the last ones written, consecutive, ending
	// with the last.
	if len(ids) == 0 || ids[len(ids)-1] != fmt.Sprint(total-1) {
		t.Fatalf("last record %v", ids[len(ids)-1:])
	}
	first := total - len(ids)
	for i, id := range ids {
		if id != fmt.Sprint(first+i) {
			t.Fatalf("record %d is %s, want %d: lost or reordered", i, id, first+i)
		}
	}
	// Rotated files are full: the next line did not fit.
	line, _ := json.Marshal(records(100, 1)[0])
	for _, name := range []string{"access.log.2", "access.log.1"} {
		st, _ := os.Stat(filepath.Join(filepath.Dir(path), name))
		if st.Size() <= maxBytes-int64(len(line))-1 {
			t.Errorf("%s rotated at %d bytes, though a %d-byte line still fitted", name, st.Size(), len(line)+1)
		}
	}
}

// TestReopenAppends: a restart continues the file and its size accounting.
func TestReopenAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.log")
	for round := range 2 {
		s, err := New(Options{Path: path, MaxBytes: 1 << 20, MaxBackups: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Export(context.Background(), records(round*5, 5)); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if ids := readIDs(t, path); len(ids) != 10 || ids[9] != "9" {
		t.Errorf("ids %v", ids)
	}
	if _, err := os.Stat(path + ".1"); !os.IsNotExist(err) {
		t.Error("rotated without reaching MaxBytes")
	}
}

// TestNoBackups: with MaxBackups 0 the file starts over.
func TestNoBackups(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.log")
	s, err := New(Options{Path: path, MaxBytes: 500, MaxBackups: 0})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := 0; i < 100; i += 5 {
		if err := s.Export(context.Background(), records(i, 5)); err != nil {
			t.Fatal(err)
		}
	}
	matches, _ := filepath.Glob(path + "*")
	if len(matches) != 1 {
		t.Errorf("files %v, want only %s", matches, path)
	}
	if ids := readIDs(t, path); ids[len(ids)-1] != "99" {
		t.Errorf("ids %v", ids)
	}
}

// TestOversizedLine: a record longer than MaxBytes gets a file of its own.
func TestOversizedLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.log")
	s, err := New(Options{Path: path, MaxBytes: 100, MaxBackups: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	big := records(0, 1)
	big[0].Path = strings.Repeat("x", 500)
	for _, batch := range [][]api.Record{records(1, 1), big, records(2, 1)} {
		if err := s.Export(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
	}
	if ids := readIDs(t, path+".1"); len(ids) != 1 || ids[0] != "0" {
		t.Errorf("oversized record not alone in its file: %v", ids)
	}
	if ids := readIDs(t, path); len(ids) != 1 || ids[0] != "2" {
		t.Errorf("current file %v", ids)
	}
}

func TestClosed(t *testing.T) {
	s, err := New(Options{Path: filepath.Join(t.TempDir(), "a.log"), MaxBytes: 100, MaxBackups: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Export(context.Background(), records(0, 1)); err == nil {
		t.Error("Export after Close succeeded")
	}
}
