package core

import (
	"errors"
	"net/http"
	"path/filepath"
	"time"

	"github.com/meshd/meshd/core/admin"
	"github.com/meshd/meshd/core/store"
)

// SnapshotResponse is the answer of POST /store/snapshot: where the
// snapshot was written, its size, SHA-256 and store schema, and the old
// snapshots removed to stay within store.snapshots.keep.
type SnapshotResponse struct {
	store.SnapshotFile
	Removed []string `json:"removed,omitempty"`
}

// ErrSnapshotBusy is the answer (409) to a snapshot request while another
// one is being written.
var ErrSnapshotBusy = errors.New("a store snapshot is already being written; try again when it has finished")

// handleSnapshot writes a snapshot of the store into <dataDir>/snapshots.
//
// The snapshot is not streamed to the caller: it holds the CA root key and
// the admin API has no authentication, so the file stays in the data dir,
// readable only by meshd's user, and the answer says where it is. Requests
// are served one at a time (each is a full copy of the store) and a second
// one while a snapshot runs is refused rather than queued.
func (h *Host) handleSnapshot(w http.ResponseWriter, r *http.Request) {
	if !h.snapMu.TryLock() {
		admin.WriteError(w, http.StatusConflict, ErrSnapshotBusy)
		return
	}
	defer h.snapMu.Unlock()
	dir := filepath.Join(filepath.Dir(h.store.Path()), store.SnapshotDir)
	start := time.Now()
	sf, removed, err := h.store.SaveSnapshot(dir, h.cfg.Store.Snapshots.Keep, start)
	if err != nil && sf == nil {
		h.log.Error("store snapshot failed", "err", err)
		admin.WriteError(w, http.StatusInternalServerError, err)
		return
	}
	if err != nil {
		// Written, but pruning failed: the snapshot is good, so say where
		// it is and log the rest.
		h.log.Warn("store snapshot written; pruning old snapshots failed", "path", sf.Path, "err", err)
	}
	h.log.Info("store snapshot written", "path", sf.Path, "bytes", sf.Bytes, "sha256", sf.SHA256,
		"schema", sf.Schema, "removed", len(removed), "took", time.Since(start).Round(time.Millisecond))
	admin.WriteJSON(w, http.StatusOK, SnapshotResponse{SnapshotFile: *sf, Removed: removed})
}
