package galley

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/meshd/meshd/modules/galley/api"
)

// switchable is a validator whose behaviour a test changes.
type switchable struct {
	down  atomic.Bool
	panic atomic.Bool
	// errorOn names a key to report an error on.
	errorOn atomic.Value
	calls   atomic.Int32
}

func (v *switchable) Validate(ctx context.Context, objs []*api.Object) ([]api.Finding, error) {
	v.calls.Add(1)
	if v.panic.Load() {
		panic("validator bug")
	}
	if v.down.Load() {
		return nil, errors.New("plugin down")
	}
	var out []api.Finding
	for _, o := range objs {
		if k, _ := v.errorOn.Load().(string); k == string(o.Key()) {
			out = append(out, api.Finding{Code: "ORG001", Severity: api.SeverityError, Object: o.Key(), Field: "spec.http[0].timeout", Message: "timeouts over 2s need approval"})
		}
		if o.Kind == api.KindDestinationRule {
			out = append(out, api.Finding{Code: "ORG002", Severity: api.SeverityWarning, Object: o.Key(), Message: "consider outlier detection"})
		}
	}
	return out, nil
}

func validatorHarness(t *testing.T, policy FailurePolicy) (*harness, *switchable) {
	h := newHarness(t)
	h.cfg.Validators.FailurePolicy = string(policy)
	h.cfg.Validators.RetryInterval = 20 * time.Millisecond
	h.cfg.Validators.Timeout = time.Second
	v := &switchable{}
	h.setup = func(m *Module) { require.NoError(t, m.AddValidator("org-policy", v)) }
	h.write("reviews.yaml", reviewsSE+"---\n"+reviewsDR)
	h.write("routes.yaml", vs("1s"))
	h.start()
	h.waitRevision(1)
	return h, v
}

func TestValidatorFindings(t *testing.T) {
	h, v := validatorHarness(t, FailClosed)
	require.Equal(t, []string{"org-policy"}, h.m.Configz().Validators)
	w := h.origin("reviews.yaml").Warnings
	require.Len(t, w, 1, "a validator's warnings do not block")
	require.Equal(t, api.Code("ORG002"), w[0].Code)
	require.Equal(t, "org-policy: consider outlier detection", w[0].Message)
	require.Equal(t, h.path("reviews.yaml"), w[0].File)
	require.Equal(t, 10, w[0].Line)

	v.errorOn.Store("VirtualService/shop/reviews")
	h.write("routes.yaml", vs("5s"))
	o := h.waitState("routes.yaml", StateRejected)
	require.Equal(t, []string{"ORG001"}, codes(o.LastRejected.Findings))
	f := o.LastRejected.Findings[0]
	require.Equal(t, h.path("routes.yaml"), f.File)
	require.Equal(t, 10, f.Line, "galley turns the field into a line")
	require.Equal(t, "1s", h.timeout())
	require.Error(t, h.m.AddValidator("org-policy", v), "names are unique")
}

// TestValidatorFailClosed: with failurePolicy fail, a change waits while a
// validator is down and goes through when it is back.
func TestValidatorFailClosed(t *testing.T) {
	h, v := validatorHarness(t, FailClosed)
	v.down.Store(true)
	h.write("routes.yaml", vs("2s"))
	o := h.waitState("routes.yaml", StateRejected)
	require.Equal(t, []string{"GAL4001"}, codes(o.LastRejected.Findings))
	require.Contains(t, o.LastRejected.Findings[0].Message, `validator "org-policy" failed: plugin down`)
	require.True(t, o.LastRejected.Retrying)
	n := v.calls.Load()
	h.eventually("retries", func() bool { return v.calls.Load() > n+2 })
	require.Equal(t, "1s", h.timeout())

	v.down.Store(false)
	h.waitRevision(2)
	require.Equal(t, "2s", h.timeout())

	v.panic.Store(true)
	h.write("routes.yaml", vs("3s"))
	o = h.waitState("routes.yaml", StateRejected)
	require.Contains(t, o.LastRejected.Findings[0].Message, "panic: validator bug")
}

// TestValidatorFailOpen: with failurePolicy ignore, a change is accepted
// without the failed validator, with a warning.
func TestValidatorFailOpen(t *testing.T) {
	h, v := validatorHarness(t, FailOpen)
	v.down.Store(true)
	h.write("routes.yaml", vs("2s"))
	h.waitRevision(2)
	w := h.origin("routes.yaml").Warnings
	require.Len(t, w, 1)
	require.Equal(t, api.CodeValidatorFailed, w[0].Code)
	require.Equal(t, api.SeverityWarning, w[0].Severity)
}

// hostSet is a registry view.
type hostSet map[string]bool

func (h hostSet) HasHost(host string) bool { return h[host] }

// TestHostIndex: with pilot's registry, routes to unknown hosts are errors;
// errors that the registry reveals in accepted config do not block other
// changes, and a registry update lets a waiting change through.
func TestHostIndex(t *testing.T) {
	h := newHarness(t)
	const ratings = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings}
    timeout: 1s
`
	h.write("reviews.yaml", reviewsSE+"---\n"+reviewsDR)
	h.write("ratings.yaml", ratings)
	h.start()
	h.waitRevision(1)
	w := h.origin("ratings.yaml").Warnings
	require.NotEmpty(t, w)
	require.Equal(t, api.CodeUnverifiedHost, w[0].Code, "offline, a short host may be a Kubernetes service")
	require.False(t, h.m.Configz().Registry)

	h.m.SetHostIndex(hostSet{})
	require.True(t, h.m.Configz().Registry)
	// Unrelated changes still go through...
	h.write("reviews.yaml", reviewsSE+"---\n"+strings.Replace(reviewsDR, "version: v2}", "version: v2, x: y}", 1))
	h.waitRevision(2)
	// ...but ratings.yaml's own change is checked against the registry.
	h.write("ratings.yaml", strings.Replace(ratings, "timeout: 1s", "timeout: 2s", 1))
	o := h.waitState("ratings.yaml", StateRejected)
	require.Contains(t, codes(o.LastRejected.Findings), string(api.CodeUnknownHost))
	require.True(t, o.LastRejected.Retrying)

	h.m.SetHostIndex(hostSet{"ratings.shop.svc.cluster.local": true})
	h.waitRevision(3)
	h.waitState("ratings.yaml", StateAccepted)
}

// TestAddSource: sources added by other modules run beside the files;
// adding one after galley started is refused.
func TestAddSource(t *testing.T) {
	h := newHarness(t)
	src := &memSource{updates: make(chan []api.Update, 4)}
	h.setup = func(m *Module) { require.NoError(t, m.AddSource("kubernetes", src)) }
	h.write("reviews.yaml", reviewsSE+"---\n"+reviewsDR)
	h.start()
	require.Error(t, h.m.Ready(), "waits for the kubernetes source")

	objs := New(Options{}).CheckBytes("kubernetes://VirtualService/shop/reviews", []byte(vs("1s"))).Objects
	src.updates <- []api.Update{{Origin: "kubernetes://VirtualService/shop/reviews", Objects: objs}}
	h.waitRevision(1)
	require.Equal(t, 3, h.m.Accepted().Len())
	require.ErrorIs(t, h.m.AddSource("late", src), api.ErrStarted)
	z := h.m.Configz()
	require.Len(t, z.Sources, 2)
	require.Equal(t, "kubernetes://VirtualService/shop/reviews", z.Origins[1].Origin)
	require.Equal(t, "kubernetes", z.Origins[1].Source)

	// The source fails; galley restarts it, and a source that forgets an
	// origin on its new full report removes its objects.
	src.updates <- nil // fail
	h.eventually("restart", func() bool { return h.m.Configz().Sources[1].Restarts == 1 })
	src.updates <- []api.Update{}
	h.waitRevision(2)
	require.Equal(t, 2, h.m.Accepted().Len())
	require.Equal(t, "returned before shutdown", h.m.Configz().Sources[1].LastError)
}

// memSource reports what a test sends it: each batch is a full state
// followed by Synced; a nil batch makes Run return.
type memSource struct {
	updates chan []api.Update
}

func (s *memSource) Run(ctx context.Context, sink api.Sink) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case us := <-s.updates:
			if us == nil {
				return nil
			}
			sink.Update(us...)
			sink.Synced()
		}
	}
}
