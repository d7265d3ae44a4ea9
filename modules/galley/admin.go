package galley

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/meshd/meshd/core/admin"

	"github.com/meshd/meshd/modules/galley/api"
)

// Admin API routes, served on the admin address (loopback by default).
// Anyone who can reach them can roll the mesh config back, so keep the admin
// address on loopback or behind an authenticating proxy.
const (
	routeConfigz   = "GET /debug/configz"
	routeRevisions = "GET /config/revisions"
	routeRevision  = "GET /config/revisions/{n}"
	routeDiff      = "GET /config/diff"
	routeRollback  = "POST /config/rollback"
)

// AdminError is the JSON body of a failed admin call.
type AdminError = admin.Error

// Configz is GET /debug/configz: what galley serves and, per origin, what
// it accepted and what it last rejected.
type Configz struct {
	// Revision is the accepted revision.
	Revision uint64 `json:"revision"`
	// RestoredRevision is the revision loaded from the store at startup
	// and served until the sources were read (0: none).
	RestoredRevision uint64 `json:"restoredRevision,omitempty"`
	Ready            bool   `json:"ready"`
	Objects          int    `json:"objects"`
	// Kinds counts accepted objects per kind.
	Kinds   map[string]int `json:"kinds"`
	Sources []SourceStatus `json:"sources"`
	// Registry says whether analysis checks hosts against the service
	// registry (pilot handed it over) or only against ServiceEntries.
	Registry   bool           `json:"registry"`
	Validators []string       `json:"validators,omitempty"`
	Origins    []OriginStatus `json:"origins"`
}

// SourceStatus is one config source in /debug/configz.
type SourceStatus struct {
	Name   string `json:"name"`
	Synced bool   `json:"synced"`
	// Restarts counts restarts after failures; LastError is the latest.
	Restarts  int    `json:"restarts,omitempty"`
	LastError string `json:"lastError,omitempty"`
}

// Configz returns the /debug/configz document.
func (m *Module) Configz() Configz {
	st := m.engine.status.Load()
	z := Configz{
		Revision: st.revision, RestoredRevision: st.restored, Ready: m.ready.Load(),
		Kinds: st.kinds, Origins: st.origins, Registry: m.hosts.Load() != nil,
	}
	for _, n := range st.kinds {
		z.Objects += n
	}
	if z.Origins == nil {
		z.Origins = []OriginStatus{}
	}
	m.mu.Lock()
	for _, s := range m.sources {
		s.mu.Lock()
		z.Sources = append(z.Sources, SourceStatus{Name: s.name, Synced: s.synced, Restarts: max(s.runs-1, 0), LastError: s.err})
		s.mu.Unlock()
	}
	for _, v := range m.validators {
		z.Validators = append(z.Validators, v.Name)
	}
	m.mu.Unlock()
	if z.Sources == nil {
		z.Sources = []SourceStatus{}
	}
	return z
}

// RevisionList is GET /config/revisions.
type RevisionList struct {
	// Current is the accepted revision.
	Current uint64 `json:"current"`
	// Revisions are the retained revisions, newest first.
	Revisions []RevisionInfo `json:"revisions"`
}

// ObjectView is one object of a revision.
type ObjectView struct {
	Key    api.Key `json:"key"`
	Origin string  `json:"origin"`
	File   string  `json:"file,omitempty"`
	Line   int     `json:"line,omitempty"`
	// Object is the canonical JSON of the object: apiVersion, kind,
	// metadata and spec, as meshd validate would read it back.
	Object json.RawMessage `json:"object"`
}

// ChangeView is one change of a revision.
type ChangeView struct {
	Key    api.Key `json:"key"`
	Op     string  `json:"op"`
	Origin string  `json:"origin"`
}

// RevisionDetail is GET /config/revisions/{n}.
type RevisionDetail struct {
	RevisionInfo
	Changes []ChangeView `json:"changes"`
	// Config is the whole config of the revision, ordered by key.
	Config []ObjectView `json:"config,omitempty"`
}

// ObjectChange is a key whose object differs between two revisions.
type ObjectChange struct {
	Key  api.Key    `json:"key"`
	From ObjectView `json:"from"`
	To   ObjectView `json:"to"`
}

// Diff is GET /config/diff: what changed from one revision to another.
type Diff struct {
	From    uint64         `json:"from"`
	To      uint64         `json:"to"`
	Added   []ObjectView   `json:"added"`
	Removed []ObjectView   `json:"removed"`
	Changed []ObjectChange `json:"changed"`
}

func (m *Module) routes(handle func(string, http.Handler)) {
	h := func(f func(*http.Request) (any, error)) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			v, err := f(r)
			if err != nil {
				code := http.StatusBadRequest
				if errors.Is(err, ErrNoRevision) {
					code = http.StatusNotFound
				}
				admin.WriteError(w, code, err)
				return
			}
			admin.WriteJSON(w, http.StatusOK, v)
		})
	}
	handle(routeConfigz, h(func(*http.Request) (any, error) { return m.Configz(), nil }))
	handle(routeRevisions, h(func(r *http.Request) (any, error) {
		limit, err := uintParam(r, "limit", 0)
		if err != nil {
			return nil, err
		}
		return m.Revisions(int(limit))
	}))
	handle(routeRevision, h(func(r *http.Request) (any, error) {
		n, err := strconv.ParseUint(r.PathValue("n"), 10, 64)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("revision %q: want a positive number", r.PathValue("n"))
		}
		return m.Revision(n, r.URL.Query().Get("objects") != "false")
	}))
	handle(routeDiff, h(func(r *http.Request) (any, error) {
		from, err := uintParam(r, "from", 0)
		if err != nil {
			return nil, err
		}
		to, err := uintParam(r, "to", 0)
		if err != nil {
			return nil, err
		}
		return m.Diff(from, to)
	}))
	handle(routeRollback, h(func(r *http.Request) (any, error) {
		to, err := uintParam(r, "to", 0)
		if err != nil {
			return nil, err
		}
		if to == 0 {
			return nil, errors.New("rollback needs ?to=<revision>")
		}
		return m.Rollback(r.Context(), to)
	}))
}

func uintParam(r *http.Request, name string, def uint64) (uint64, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: want a non-negative number", name, s)
	}
	return n, nil
}

// Revisions lists the retained revisions, newest first (limit 0: all).
func (m *Module) Revisions(limit int) (*RevisionList, error) { return m.history().Revisions(limit) }

// Revision returns revision n with its changes and, if objects, its whole
// config.
func (m *Module) Revision(n uint64, objects bool) (*RevisionDetail, error) {
	return m.history().Revision(n, objects)
}

// Diff compares two revisions; to 0 means the latest, from 0 the one
// before to.
func (m *Module) Diff(from, to uint64) (*Diff, error) { return m.history().Diff(from, to) }

func (m *Module) history() *History { return &History{st: m.store} }

// Rollback makes a new revision equal to revision to. Every origin's
// current content is held: it is applied again once it changes. See
// README.md.
func (m *Module) Rollback(ctx context.Context, to uint64) (*RollbackResult, error) {
	res, err := m.engine.rollback(ctx, to)
	m.metrics.rejected.Set(float64(m.rejectedCount()))
	return res, err
}
