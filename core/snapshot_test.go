package core

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/core/store"
)

func postSnapshot(t *testing.T, h *Host) (*httptest.ResponseRecorder, SnapshotResponse) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/store/snapshot", nil))
	var resp SnapshotResponse
	if rec.Code == http.StatusOK {
		if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
			t.Fatalf("decode %s: %v", rec.Body, err)
		}
	}
	return rec, resp
}

func TestSnapshotRoute(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Store.Snapshots.Keep = 2
	h := newTestHost(t, NewRegistry(), cfg)
	dataDir := filepath.Dir(h.store.Path())

	var paths []string
	for i := range 3 {
		rec, resp := postSnapshot(t, h)
		if rec.Code != http.StatusOK {
			t.Fatalf("POST /store/snapshot = %d %s", rec.Code, rec.Body)
		}
		if filepath.Dir(resp.Path) != filepath.Join(dataDir, store.SnapshotDir) || !strings.HasPrefix(filepath.Base(resp.Path), "meshd-") {
			t.Fatalf("snapshot written to %s, want under %s/snapshots", resp.Path, dataDir)
		}
		if resp.Bytes == 0 || len(resp.SHA256) != 64 || resp.Schema == 0 {
			t.Fatalf("response %+v", resp)
		}
		sum, err := store.VerifySnapshot(resp.Path)
		if err != nil {
			t.Fatal(err)
		}
		if sum.SHA256 != resp.SHA256 {
			t.Fatalf("file sha256 %s, response says %s", sum.SHA256, resp.SHA256)
		}
		fi, err := os.Stat(resp.Path)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("snapshot file: %v %v", err, fi.Mode())
		}
		if i == 2 && (len(resp.Removed) != 1 || resp.Removed[0] != paths[0]) {
			t.Fatalf("third snapshot removed %v, want the first (%s)", resp.Removed, paths[0])
		}
		paths = append(paths, resp.Path)
		time.Sleep(2 * time.Millisecond) // names have millisecond precision
	}
	entries, _ := os.ReadDir(filepath.Join(dataDir, store.SnapshotDir))
	if len(entries) != 2 {
		t.Fatalf("snapshots dir holds %d files, want keep=2", len(entries))
	}
	if fi, _ := os.Stat(filepath.Join(dataDir, store.SnapshotDir)); fi.Mode().Perm() != 0o700 {
		t.Fatalf("snapshots dir mode %o", fi.Mode().Perm())
	}

	// One at a time: a request while a snapshot is being written is refused.
	h.snapMu.Lock()
	rec, _ := postSnapshot(t, h)
	h.snapMu.Unlock()
	if rec.Code != http.StatusConflict || !strings.Contains(rec.Body.String(), "already being written") {
		t.Fatalf("concurrent snapshot = %d %s, want 409", rec.Code, rec.Body)
	}

	// The database is never sent to the caller, and only POST writes one.
	rec = httptest.NewRecorder()
	h.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/store/snapshot", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("GET /store/snapshot = %d, want 405", rec.Code)
	}
}

func TestSnapshotKeepValidated(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Store.Snapshots.Keep = 0
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "store.snapshots.keep") {
		t.Fatalf("keep=0: %v", err)
	}
}
