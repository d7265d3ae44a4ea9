// Package sourcetest is the conformance suite of the discovery plugin kind:
// what any registry.Source must do as pilot's aggregate sees it, checked
// the same way against a source used in process and against the same
// source behind the plugin shims (pluginsource, over go-plugin's
// TestPluginGRPCConn). Plugin authors can run it against their own source
// with the shims in their tests.
package sourcetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
)

// Scripted is a registry.Source a test drives: it reports each state given
// to Set and returns the error given to Fail.
type Scripted struct {
	mu    sync.Mutex
	cur   *registry.State
	kick  chan struct{}
	fail  chan error
	runs  int
	since chan struct{} // closed when Run starts
}

// NewScripted returns a source with no state yet.
func NewScripted() *Scripted {
	return &Scripted{kick: make(chan struct{}, 1), fail: make(chan error, 1), since: make(chan struct{})}
}

// Set makes st the source's state.
func (s *Scripted) Set(st registry.State) {
	s.mu.Lock()
	s.cur = &st
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Fail makes the running Run return err.
func (s *Scripted) Fail(err error) { s.fail <- err }

// Runs is how many times Run was called.
func (s *Scripted) Runs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runs
}

// Run implements registry.Source: it reports the current state (if any)
// and each later one until ctx ends.
func (s *Scripted) Run(ctx context.Context, sink registry.Sink) error {
	s.mu.Lock()
	s.runs++
	cur := s.cur
	s.mu.Unlock()
	if cur != nil {
		sink.Update(*cur)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-s.fail:
			return err
		case <-s.kick:
			s.mu.Lock()
			cur := s.cur
			s.mu.Unlock()
			if cur != nil {
				sink.Update(*cur)
			}
		}
	}
}

// Wrap turns the scripted source into the source under test: the identity
// for the in-process path, the shims for the plugin path.
type Wrap func(t *testing.T, src registry.Source) registry.Source

// Sink records what a source reports.
type Sink struct {
	mu     sync.Mutex
	states []registry.State
	ch     chan struct{}
}

// NewSink returns an empty recording sink.
func NewSink() *Sink { return &Sink{ch: make(chan struct{}, 1)} }

// Update implements registry.Sink.
func (s *Sink) Update(st registry.State) {
	s.mu.Lock()
	s.states = append(s.states, st)
	s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
}

// Last returns the latest state and how many were reported.
func (s *Sink) Last() (registry.State, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.states) == 0 {
		return registry.State{}, 0
	}
	return s.states[len(s.states)-1], len(s.states)
}

// WaitFor waits until the latest state satisfies ok.
func (s *Sink) WaitFor(t testing.TB, what string, ok func(registry.State) bool) registry.State {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if st, n := s.Last(); n > 0 && ok(st) {
			return st
		}
		select {
		case <-s.ch:
		case <-deadline:
			st, n := s.Last()
			t.Fatalf("timed out waiting for %s; %d states, last has %d services", what, n, len(st.Services))
		}
	}
}

// running is a Run in the background.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// run starts src.Run in the background until the test ends.
func run(t *testing.T, src registry.Source, sink registry.Sink) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() { r.err = src.Run(ctx, sink); close(r.done) }()
	t.Cleanup(func() { _ = r.stop() })
	return r
}

// stop cancels Run and returns its error.
func (r *running) stop() error {
	r.cancel()
	select {
	case <-r.done:
		return r.err
	case <-time.After(5 * time.Second):
		return errors.New("Run did not return within 5 s of cancellation")
	}
}

// Service builds a finalized service with n endpoints on port 8080.
func Service(host, ns string, n int) *model.Service {
	s := &model.Service{
		Hostname:   host,
		Namespace:  ns,
		Ports:      []model.Port{{Name: "http", Number: 8080, Protocol: model.ProtocolHTTP, TargetPort: 9090}, {Name: "grpc-admin", Number: 8081, Protocol: model.ProtocolGRPC}},
		Addresses:  []string{"240.0.0.1"},
		Resolution: model.ResolutionStatic,
		ExportTo:   []string{"*"},
		Labels:     map[string]string{"app": strings.Split(host, ".")[0]},
		Source:     "scripted",
	}
	for i := range n {
		s.Endpoints = append(s.Endpoints, &model.Endpoint{
			Address:        fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255),
			Port:           9090,
			ServicePort:    8080,
			Labels:         map[string]string{"version": fmt.Sprintf("v%d", i%3)},
			Locality:       model.Locality{Region: "eu", Zone: fmt.Sprintf("eu-%d", i%2), Subzone: "a"},
			Weight:         uint32(i % 4),
			Health:         model.Health(i % 3),
			Namespace:      ns,
			ServiceAccount: "sa",
			Workload:       fmt.Sprintf("w-%d", i),
			Network:        "net1",
		})
	}
	return s.Finalize()
}

// Equal reports how two service lists differ, ignoring Source (a shim
// names services after the plugin instance), or "" when they are equal.
func Equal(want, got []*model.Service) string {
	if len(want) != len(got) {
		return fmt.Sprintf("%d services, want %d", len(got), len(want))
	}
	for i := range want {
		w, g := *want[i], *got[i]
		if w.Key() != g.Key() {
			return fmt.Sprintf("service %d is %v, want %v", i, g.Key(), w.Key())
		}
		if w.DefinitionHash() != withSource(&g, w.Source).DefinitionHash() {
			return fmt.Sprintf("service %v: definition differs: got %+v, want %+v", w.Key(), g, w)
		}
		if w.EndpointHash() != g.EndpointHash() || len(w.Endpoints) != len(g.Endpoints) {
			return fmt.Sprintf("service %v: endpoints differ (%d, want %d)", w.Key(), len(g.Endpoints), len(w.Endpoints))
		}
		for j := range w.Endpoints {
			if !endpointEqual(w.Endpoints[j], g.Endpoints[j]) {
				return fmt.Sprintf("service %v endpoint %d: got %+v, want %+v", w.Key(), j, *g.Endpoints[j], *w.Endpoints[j])
			}
		}
	}
	return ""
}

func withSource(s *model.Service, src string) *model.Service {
	c := *s
	c.Source = src
	return (&c).Finalize()
}

func endpointEqual(a, b *model.Endpoint) bool {
	return a.Address == b.Address && a.Port == b.Port && a.ServicePort == b.ServicePort &&
		maps.Equal(a.Labels, b.Labels) && a.Locality == b.Locality && a.Weight == b.Weight &&
		a.Health == b.Health && a.Namespace == b.Namespace && a.ServiceAccount == b.ServiceAccount &&
		a.Workload == b.Workload && a.Network == b.Network
}

// Run runs the suite against the scripted source wrapped by wrap.
func Run(t *testing.T, wrap Wrap) {
	t.Run("state reaches the sink", func(t *testing.T) {
		src := NewScripted()
		want := []*model.Service{Service("a.example.com", "ns1", 3), Service("b.example.com", "ns2", 0)}
		src.Set(registry.State{Services: want})
		sink := NewSink()
		r := run(t, wrap(t, src), sink)
		got := sink.WaitFor(t, "the first state", func(st registry.State) bool { return len(st.Services) == 2 })
		if d := Equal(want, got.Services); d != "" {
			t.Fatal(d)
		}
		if err := r.stop(); err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	})

	t.Run("each change replaces the state", func(t *testing.T) {
		src := NewScripted()
		sink := NewSink()
		run(t, wrap(t, src), sink)
		a := Service("a.example.com", "ns1", 2)
		src.Set(registry.State{Services: []*model.Service{a}})
		sink.WaitFor(t, "state 1", func(st registry.State) bool { return len(st.Services) == 1 })
		b := Service("b.example.com", "ns1", 5)
		src.Set(registry.State{Services: []*model.Service{a, b}})
		got := sink.WaitFor(t, "state 2", func(st registry.State) bool { return len(st.Services) == 2 })
		if d := Equal([]*model.Service{a, b}, got.Services); d != "" {
			t.Fatal(d)
		}
		src.Set(registry.State{})
		sink.WaitFor(t, "the empty state", func(st registry.State) bool { return len(st.Services) == 0 })
	})

	t.Run("unchanged services keep their pointers", func(t *testing.T) {
		src := NewScripted()
		sink := NewSink()
		run(t, wrap(t, src), sink)
		a, b := Service("a.example.com", "ns1", 4), Service("b.example.com", "ns1", 4)
		src.Set(registry.State{Services: []*model.Service{a, b}})
		first := sink.WaitFor(t, "state 1", func(st registry.State) bool { return len(st.Services) == 2 })
		b2 := Service("b.example.com", "ns1", 5)
		src.Set(registry.State{Services: []*model.Service{a, b2}})
		second := sink.WaitFor(t, "state 2", func(st registry.State) bool {
			return len(st.Services) == 2 && len(st.Services[1].Endpoints) == 5
		})
		if second.Services[0] != first.Services[0] {
			t.Error("the unchanged service is a new pointer: pilot would see a change")
		}
		if second.Services[1] == first.Services[1] {
			t.Error("the changed service kept its old pointer")
		}
	})

	t.Run("large state arrives whole", func(t *testing.T) {
		src := NewScripted()
		var want []*model.Service
		for i := range 6 {
			want = append(want, Service(fmt.Sprintf("s%d.example.com", i), "ns", 700+i*300))
		}
		want = append(want, Service("big.example.com", "ns", 5500), Service("z.example.com", "ns", 0))
		slices.SortFunc(want, func(a, b *model.Service) int { return strings.Compare(a.Hostname, b.Hostname) })
		src.Set(registry.State{Services: want})
		sink := NewSink()
		run(t, wrap(t, src), sink)
		got := sink.WaitFor(t, "the large state", func(st registry.State) bool { return len(st.Services) == len(want) })
		if d := Equal(want, got.Services); d != "" {
			t.Fatal(d)
		}
		sink.mu.Lock()
		for i, st := range sink.states {
			if len(st.Services) != len(want) {
				t.Errorf("state %d has %d services of %d: a partial state leaked", i, len(st.Services), len(want))
			}
		}
		sink.mu.Unlock()
	})

	t.Run("a failing source makes Run fail", func(t *testing.T) {
		src := NewScripted()
		src.Set(registry.State{Services: []*model.Service{Service("a.example.com", "ns1", 1)}})
		sink := NewSink()
		r := run(t, wrap(t, src), sink)
		sink.WaitFor(t, "state", func(st registry.State) bool { return len(st.Services) == 1 })
		src.Fail(errors.New("backend unreachable"))
		select {
		case <-r.done:
			if r.err == nil {
				t.Fatal("Run returned nil after its source failed")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after its source failed")
		}
		// The aggregate runs it again: it reports again.
		sink2 := NewSink()
		run(t, wrap(t, src), sink2)
		sink2.WaitFor(t, "state after restart", func(st registry.State) bool { return len(st.Services) == 1 })
	})

	t.Run("cancel stops Run with nil", func(t *testing.T) {
		src := NewScripted()
		r := run(t, wrap(t, src), NewSink())
		time.Sleep(50 * time.Millisecond)
		start := time.Now()
		if err := r.stop(); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("Run took %s to return after cancel", d)
		}
	})
}
