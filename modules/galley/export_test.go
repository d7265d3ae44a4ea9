package galley

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/galley/api"
)

// TestEngine is the accept/reject engine on a store in a temp dir, for the
// benchmarks in package galley_test.
type TestEngine struct{ e *engine }

// NewTestEngine returns an engine with the default checker.
func NewTestEngine(tb testing.TB) *TestEngine {
	st, err := store.Open(tb.TempDir(), store.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	rs, err := newRevStore(st.Module(string(ID)), 100)
	if err != nil {
		tb.Fatal(err)
	}
	c := New(Options{})
	return &TestEngine{e: newEngine(rs, func() *Checker { return c }, slog.New(slog.DiscardHandler), time.Now, engineHooks{})}
}

// Apply applies updates.
func (t *TestEngine) Apply(updates ...api.Update) { t.e.apply(context.Background(), updates, nil) }

// Revision returns the accepted revision.
func (t *TestEngine) Revision() uint64 { return t.e.Accepted().Revision() }

// Rejected counts origins whose latest content is rejected.
func (t *TestEngine) Rejected() int {
	n := 0
	for _, o := range t.e.status.Load().origins {
		if o.State == StateRejected {
			n++
		}
	}
	return n
}
