package galley

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/galley/api"
)

// History reads accepted revisions from the store: the admin API's
// history and diff, and `meshd config history|diff --data-dir` on a stopped
// meshd.
type History struct {
	st    *revStore
	close func() error
}

// OpenHistory opens the store in dataDir read-only. It fails while a meshd
// runs on that data dir (the store is locked); use the admin API then.
func OpenHistory(dataDir string) (*History, error) {
	if _, err := filepath.Abs(dataDir); err != nil {
		return nil, err
	}
	s, err := store.Open(dataDir, store.Options{ReadOnly: true})
	if err != nil {
		if errors.Is(err, store.ErrLocked) {
			return nil, fmt.Errorf("%w (meshd is running; leave out --data-dir to use its admin API)", err)
		}
		return nil, err
	}
	return &History{st: &revStore{ns: s.Module(string(ID)), history: 1}, close: s.Close}, nil
}

// Close closes a History from OpenHistory.
func (h *History) Close() error {
	if h.close == nil {
		return nil
	}
	return h.close()
}

// Revisions lists the retained revisions, newest first (limit 0: all).
func (h *History) Revisions(limit int) (*RevisionList, error) {
	list, err := h.st.list(limit)
	if err != nil {
		return nil, err
	}
	if list == nil {
		list = []RevisionInfo{}
	}
	rl := &RevisionList{Revisions: list}
	if len(list) > 0 {
		rl.Current = list[0].Revision
	}
	return rl, nil
}

// Revision returns revision n with its changes and, if objects, its whole
// config.
func (h *History) Revision(n uint64, objects bool) (*RevisionDetail, error) {
	mat, err := h.st.materialize(n)
	if err != nil {
		return nil, err
	}
	d := &RevisionDetail{RevisionInfo: mat.record.info(), Changes: []ChangeView{}}
	for _, c := range mat.record.Changes {
		origin := ""
		if c.After != nil {
			origin = c.After.Origin
		} else if c.Before != nil {
			origin = c.Before.Origin
		}
		d.Changes = append(d.Changes, ChangeView{Key: c.Key, Op: c.Op, Origin: origin})
	}
	if objects {
		d.Config = []ObjectView{}
		for _, k := range keysOf(mat.entries) {
			d.Config = append(d.Config, view(k, mat.entries[k], mat.blobs))
		}
	}
	return d, nil
}

func view(k api.Key, e Entry, blobs map[blobHash][]byte) ObjectView {
	return ObjectView{Key: k, Origin: e.Origin, File: e.File, Line: e.Line, Object: blobs[e.Blob]}
}

// Diff compares two revisions; to 0 means the latest, from 0 the one
// before to.
func (h *History) Diff(from, to uint64) (*Diff, error) {
	b, err := h.st.materialize(to)
	if err != nil {
		return nil, err
	}
	to = b.record.Revision
	if from == 0 {
		if to <= 1 {
			return nil, fmt.Errorf("%w: revision %d has no previous revision", ErrNoRevision, to)
		}
		from = to - 1
	}
	a, err := h.st.materialize(from)
	if err != nil {
		return nil, err
	}
	d := &Diff{From: from, To: to, Added: []ObjectView{}, Removed: []ObjectView{}, Changed: []ObjectChange{}}
	for _, k := range keysOf(a.entries) {
		ea := a.entries[k]
		eb, ok := b.entries[k]
		switch {
		case !ok:
			d.Removed = append(d.Removed, view(k, ea, a.blobs))
		case ea.Blob != eb.Blob:
			d.Changed = append(d.Changed, ObjectChange{Key: k, From: view(k, ea, a.blobs), To: view(k, eb, b.blobs)})
		}
	}
	for _, k := range keysOf(b.entries) {
		if _, ok := a.entries[k]; !ok {
			d.Added = append(d.Added, view(k, b.entries[k], b.blobs))
		}
	}
	return d, nil
}
