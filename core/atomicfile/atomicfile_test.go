package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f.pem")
	tests := []struct {
		name    string
		data    string
		perm    os.FileMode
		failing bool
		want    string // content afterwards
	}{
		{"create", "one", 0o600, false, "one"},
		{"replace, other mode", "two", 0o644, false, "two"},
		{"a failing fill leaves the old content", "three", 0o600, true, "two"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Write(path, tt.perm, func(f *os.File) error {
				if _, err := f.WriteString(tt.data); err != nil {
					return err
				}
				if tt.failing {
					return errors.New("disk full")
				}
				return nil
			})
			if (err != nil) != tt.failing {
				t.Fatalf("err = %v, want failure %v", err, tt.failing)
			}
			b, err := os.ReadFile(path)
			if err != nil || string(b) != tt.want {
				t.Fatalf("content %q (%v), want %q", b, err, tt.want)
			}
			if !tt.failing {
				if fi, _ := os.Stat(path); fi.Mode().Perm() != tt.perm {
					t.Fatalf("mode %o, want %o", fi.Mode().Perm(), tt.perm)
				}
			}
			// No temporary file is left behind, whatever happened.
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Fatalf("dir holds %d entries, want 1", len(entries))
			}
		})
	}
}

func TestWriteBytesUmask(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bundle.pem")
	// 0644 must hold even though CreateTemp starts files at 0600.
	if err := WriteBytes(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %o", fi.Mode().Perm())
	}
	if err := WriteBytes(filepath.Join(t.TempDir(), "missing", "f"), []byte("x"), 0o600); err == nil {
		t.Fatal("a missing directory must fail")
	}
}
