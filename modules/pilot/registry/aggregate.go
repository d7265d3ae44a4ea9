// Package registry merges what discovery sources know into one view.
//
// A Source runs until its context ends and reports its whole current state
// through its Sink each time it changes (state of the world, not deltas): a
// source cannot leave the aggregate half-updated, and a restarted source
// simply reports again. Sources keep unchanged *model.Service pointers from
// one state to the next, so comparing two views is cheap.
//
// The aggregate merges states by a stated precedence: when two sources know
// the same service (host name and namespace), the one earlier in the
// precedence list wins outright, definition and endpoints, and the clash is
// reported as a Conflict. Mixing endpoints from two definitions would pair
// ports that may not match, so meshd never does.
package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/meshd/meshd/modules/pilot/model"
)

// State is one source's full view.
type State struct {
	Services []*model.Service
}

// Sink receives a source's state. Update never blocks and keeps only the
// latest state.
type Sink interface {
	Update(State)
}

// Source discovers services.
type Source interface {
	// Run reports state through sink until ctx ends, then returns nil. An
	// error makes the aggregate restart the source with backoff, keeping its
	// last reported state meanwhile.
	Run(ctx context.Context, sink Sink) error
}

// Conflict is a service known to more than one source.
type Conflict struct {
	Hostname  string   `json:"hostname"`
	Namespace string   `json:"namespace"`
	Winner    string   `json:"winner"`
	Losers    []string `json:"losers"`
}

// View is the merged state at one version. It is immutable.
type View struct {
	Version   uint64
	Services  []*model.Service // sorted by host name, then namespace
	Conflicts []Conflict
	byKey     map[model.Key]*model.Service
	byHost    map[string][]*model.Service
}

// Service returns the service with the given key.
func (v *View) Service(k model.Key) (*model.Service, bool) {
	if v == nil {
		return nil, false
	}
	s, ok := v.byKey[k]
	return s, ok
}

// ByHost returns the services with host name h in every namespace, sorted by
// namespace.
func (v *View) ByHost(h string) []*model.Service {
	if v == nil {
		return nil
	}
	return v.byHost[h]
}

// HasHost reports whether any source knows host name h. It makes a View
// usable as galley's analysis HostIndex.
func (v *View) HasHost(h string) bool { return len(v.ByHost(h)) > 0 }

// Change classifies what differs between two views.
type Change struct {
	// Definitions is true when any service was added, removed or changed
	// apart from its endpoints: listeners, routes and clusters need a push.
	Definitions bool
	// Endpoints lists services whose endpoints alone changed.
	Endpoints []model.Key
}

// Empty reports whether nothing changed.
func (c Change) Empty() bool { return !c.Definitions && len(c.Endpoints) == 0 }

// Diff compares two views.
func Diff(old, cur *View) Change {
	var ch Change
	if old == nil {
		return Change{Definitions: cur != nil && len(cur.Services) > 0}
	}
	if len(old.byKey) != len(cur.byKey) {
		ch.Definitions = true
	}
	for k, s := range cur.byKey {
		prev, ok := old.byKey[k]
		switch {
		case !ok:
			ch.Definitions = true
		case prev == s:
		case prev.DefinitionHash() != s.DefinitionHash():
			ch.Definitions = true
		case prev.EndpointHash() != s.EndpointHash():
			ch.Endpoints = append(ch.Endpoints, k)
		}
	}
	if !ch.Definitions {
		for k := range old.byKey {
			if _, ok := cur.byKey[k]; !ok {
				ch.Definitions = true
				break
			}
		}
	}
	slices.SortFunc(ch.Endpoints, compareKeys)
	return ch
}

func compareKeys(a, b model.Key) int {
	return cmp.Or(cmp.Compare(a.Hostname, b.Hostname), cmp.Compare(a.Namespace, b.Namespace))
}

// Aggregate runs sources and merges their states.
type Aggregate struct {
	log        *slog.Logger
	precedence []string

	mu      sync.Mutex
	sources map[string]Source
	states  map[string]State
	synced  map[string]bool
	view    *View
	dirty   bool
	version uint64
	changed chan struct{}
	running bool
}

// New returns an aggregate. precedence lists source names, highest first;
// sources it does not name come after, in name order.
func New(log *slog.Logger, precedence []string) *Aggregate {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Aggregate{
		log:        log,
		precedence: slices.Clone(precedence),
		sources:    map[string]Source{},
		states:     map[string]State{},
		synced:     map[string]bool{},
		changed:    make(chan struct{}, 1),
		view:       &View{byKey: map[model.Key]*model.Service{}, byHost: map[string][]*model.Service{}},
	}
}

// Add registers a source under name. Call it before Run.
func (a *Aggregate) Add(name string, s Source) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running {
		return fmt.Errorf("registry source %q: %w", name, ErrStarted)
	}
	if _, dup := a.sources[name]; dup {
		return fmt.Errorf("registry source %q added twice", name)
	}
	a.sources[name] = s
	return nil
}

// Changed is signalled after any source reports a new state.
func (a *Aggregate) Changed() <-chan struct{} { return a.changed }

// Synced reports whether every source has reported at least once, so the
// first push does not advertise a half-discovered mesh.
func (a *Aggregate) Synced() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for name := range a.sources {
		if !a.synced[name] {
			return false
		}
	}
	return true
}

// Pending returns the names of sources that have not reported yet.
func (a *Aggregate) Pending() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for name := range a.sources {
		if !a.synced[name] {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

type sink struct {
	a    *Aggregate
	name string
}

func (s sink) Update(st State) {
	s.a.mu.Lock()
	s.a.states[s.name] = st
	s.a.synced[s.name] = true
	s.a.dirty = true
	s.a.mu.Unlock()
	select {
	case s.a.changed <- struct{}{}:
	default:
	}
}

// SinkFor returns the sink of a source added under name, for sources that
// are driven from outside Run (such as the config source, fed by galley).
func (a *Aggregate) SinkFor(name string) Sink { return sink{a: a, name: name} }

// Run runs every source until ctx ends. A failing source is restarted with
// jittered exponential backoff (up to 30 s) while its last state keeps
// serving; it never stops the others.
func (a *Aggregate) Run(ctx context.Context) error {
	a.mu.Lock()
	a.running = true
	names := make([]string, 0, len(a.sources))
	for n := range a.sources {
		names = append(names, n)
	}
	a.mu.Unlock()
	var wg sync.WaitGroup
	for _, name := range names {
		src := a.sources[name]
		wg.Go(func() { a.runSource(ctx, name, src) })
	}
	wg.Wait()
	return nil
}

func (a *Aggregate) runSource(ctx context.Context, name string, src Source) {
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		err := safeRun(ctx, src, sink{a: a, name: name})
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("returned before shutdown")
		}
		if time.Since(start) > time.Minute {
			backoff = 100 * time.Millisecond
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		a.log.Warn("registry source failed; keeping its last state and restarting", "source", name, "err", err, "retry", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

func safeRun(ctx context.Context, src Source, s Sink) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return src.Run(ctx, s)
}

func (a *Aggregate) rank(name string) (int, string) {
	if i := slices.Index(a.precedence, name); i >= 0 {
		return i, ""
	}
	return len(a.precedence), name
}

// View returns the merged view, rebuilding it if any source reported since
// the last call.
func (a *Aggregate) View() *View {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.dirty {
		return a.view
	}
	a.dirty = false
	a.version++
	names := make([]string, 0, len(a.states))
	for n := range a.states {
		names = append(names, n)
	}
	slices.SortFunc(names, func(x, y string) int {
		rx, nx := a.rank(x)
		ry, ny := a.rank(y)
		return cmp.Or(cmp.Compare(rx, ry), cmp.Compare(nx, ny))
	})
	v := &View{Version: a.version, byKey: map[model.Key]*model.Service{}, byHost: map[string][]*model.Service{}}
	owner := map[model.Key]string{}
	conflicts := map[model.Key]*Conflict{}
	for _, name := range names {
		for _, s := range a.states[name].Services {
			k := s.Key()
			if winner, taken := owner[k]; taken {
				c := conflicts[k]
				if c == nil {
					c = &Conflict{Hostname: k.Hostname, Namespace: k.Namespace, Winner: winner}
					conflicts[k] = c
				}
				if !slices.Contains(c.Losers, name) {
					c.Losers = append(c.Losers, name)
				}
				continue
			}
			owner[k] = name
			v.byKey[k] = s
			v.Services = append(v.Services, s)
		}
	}
	slices.SortFunc(v.Services, func(x, y *model.Service) int { return compareKeys(x.Key(), y.Key()) })
	for _, s := range v.Services {
		v.byHost[s.Hostname] = append(v.byHost[s.Hostname], s)
	}
	for _, c := range conflicts {
		v.Conflicts = append(v.Conflicts, *c)
	}
	slices.SortFunc(v.Conflicts, func(x, y Conflict) int {
		return cmp.Or(cmp.Compare(x.Hostname, y.Hostname), cmp.Compare(x.Namespace, y.Namespace))
	})
	known := conflictSet(a.view.Conflicts)
	for _, c := range v.Conflicts {
		if !known[c.Hostname+"/"+c.Namespace] {
			a.log.Warn("service known to several registries; using the one with precedence",
				"host", c.Hostname, "namespace", c.Namespace, "winner", c.Winner, "ignored", c.Losers)
		}
	}
	a.view = v
	return v
}

func conflictSet(cs []Conflict) map[string]bool {
	m := make(map[string]bool, len(cs))
	for _, c := range cs {
		m[c.Hostname+"/"+c.Namespace] = true
	}
	return m
}
