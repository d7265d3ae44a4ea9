// Package validatortest is the conformance suite of the validator plugin
// kind: what galley must see from any api.Validator, checked the same way
// against a validator called in process and against the same validator
// behind the plugin shims (pluginvalidator, over go-plugin's
// TestPluginGRPCConn). The corpus is the broken bookstore example, which
// makes galley's own rules report dozens of findings.
package validatortest

import (
	"context"
	"embed"
	"errors"
	"io/fs"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
	"github.com/meshd/meshd/modules/galley/validate"
)

//go:embed testdata/*.yaml
var corpus embed.FS

// Corpus returns the suite's objects, decoded by galley.
func Corpus(t testing.TB) []*api.Object {
	t.Helper()
	dec := decode.New(decode.Options{})
	var objs []*api.Object
	names, err := fs.Glob(corpus, "testdata/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		data, err := corpus.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		r := dec.Decode(n, data)
		objs = append(objs, r.Objects...)
	}
	if len(objs) < 10 {
		t.Fatalf("corpus decoded to %d objects", len(objs))
	}
	return objs
}

// Builtin is galley's own per-object validation as an api.Validator: the
// in-process implementation the shims must reproduce exactly.
func Builtin() api.Validator {
	return api.ValidatorFunc(func(_ context.Context, objs []*api.Object) ([]api.Finding, error) {
		return validate.Objects(objs), nil
	})
}

// Wrap turns a validator into the validator under test: the identity for
// the in-process path, the shims for the plugin path.
type Wrap func(t *testing.T, v api.Validator) api.Validator

// Run runs the suite.
func Run(t *testing.T, wrap Wrap) {
	objs := Corpus(t)

	t.Run("galley's findings arrive unchanged", func(t *testing.T) {
		want := api.SortFindings(validate.Objects(objs))
		if len(want) == 0 {
			t.Fatal("the corpus has no findings")
		}
		got, err := wrap(t, Builtin()).Validate(context.Background(), objs)
		if err != nil {
			t.Fatal(err)
		}
		got = api.SortFindings(got)
		if len(got) != len(want) {
			t.Fatalf("%d findings, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("finding %d:\n got  %s\n want %s", i, got[i], want[i])
			}
		}
	})

	t.Run("objects arrive whole", func(t *testing.T) {
		var mu sync.Mutex
		var seen []*api.Object
		spy := api.ValidatorFunc(func(_ context.Context, in []*api.Object) ([]api.Finding, error) {
			mu.Lock()
			seen = in
			mu.Unlock()
			return nil, nil
		})
		if _, err := wrap(t, spy).Validate(context.Background(), objs); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != len(objs) {
			t.Fatalf("validator saw %d objects, want %d", len(seen), len(objs))
		}
		for i, o := range objs {
			s := seen[i]
			if s.Key() != o.Key() || s.APIVersion != o.APIVersion || s.Source != o.Source ||
				!maps.Equal(s.Labels, o.Labels) || !maps.Equal(s.Annotations, o.Annotations) || !proto.Equal(s.Spec, o.Spec) {
				t.Errorf("object %d %s arrived as %+v", i, o.Key(), *s)
			}
		}
	})

	t.Run("file and line come from the object and field", func(t *testing.T) {
		target := objs[len(objs)/2]
		v := api.ValidatorFunc(func(_ context.Context, in []*api.Object) ([]api.Finding, error) {
			return []api.Finding{
				{Code: "TEST001", Severity: api.SeverityError, Object: target.Key(), Field: "spec", Message: "an error",
					File: target.Source.File, Line: target.Line("spec")},
				{Code: "TEST002", Severity: api.SeverityWarning, Object: target.Key(), Message: "a warning about the object",
					File: target.Source.File, Line: target.Line("")},
				{Code: "TEST003", Severity: api.SeverityInfo, Message: "a note about the whole set"},
			}, nil
		})
		got, err := wrap(t, v).Validate(context.Background(), objs)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 3 || got[0].Line != target.Line("spec") || got[0].File != target.Source.File || got[0].Line == 0 ||
			got[1].Severity != api.SeverityWarning || got[2].Object != "" || got[2].Line != 0 {
			t.Fatalf("findings %v", got)
		}
	})

	t.Run("an error says the set was not checked", func(t *testing.T) {
		v := api.ValidatorFunc(func(context.Context, []*api.Object) ([]api.Finding, error) {
			return nil, errors.New("policy backend unreachable")
		})
		f, err := wrap(t, v).Validate(context.Background(), objs)
		if err == nil || !strings.Contains(err.Error(), "policy backend unreachable") || f != nil {
			t.Fatalf("findings %v, err %v", f, err)
		}
	})

	t.Run("deadline is honoured", func(t *testing.T) {
		v := api.ValidatorFunc(func(ctx context.Context, _ []*api.Object) ([]api.Finding, error) {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(10 * time.Second):
				return nil, nil
			}
		})
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := wrap(t, v).Validate(ctx, objs)
		if err == nil {
			t.Fatal("no error past the deadline")
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("returned after %s", d)
		}
	})

	t.Run("empty set", func(t *testing.T) {
		got, err := wrap(t, Builtin()).Validate(context.Background(), nil)
		if err != nil || len(got) != 0 {
			t.Fatalf("findings %v, err %v", got, err)
		}
	})
}
