package galley

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/bus"
	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/galley/api"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Test config: a ServiceEntry and DestinationRule for reviews in one file,
// a VirtualService routing to its subsets in another.
const (
	reviewsSE = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.example.com]
  location: MESH_INTERNAL
  resolution: DNS
  ports: [{number: 9080, name: http, protocol: HTTP}]
`
	reviewsDR = `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.example.com
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`
	reviewsVS = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.example.com]
  http:
  - route:
    - {destination: {host: reviews.example.com, subset: v1}, weight: 90}
    - {destination: {host: reviews.example.com, subset: v2}, weight: 10}
    timeout: %s
`
)

func vs(timeout string) string { return fmt.Sprintf(reviewsVS, timeout) }

// harness runs a galley module on a temp dir, the way the host does.
type harness struct {
	t     *testing.T
	dir   string // watched directory
	data  string // data dir
	cfg   *Config
	m     *Module
	reg   *prometheus.Registry
	bus   *bus.Bus
	sub   *bus.Subscription
	st    *store.Store
	srv   *httptest.Server
	stop  func()
	setup func(m *Module)
}

func newHarness(t *testing.T) *harness {
	dir := t.TempDir()
	h := &harness{t: t, dir: filepath.Join(dir, "mesh"), data: filepath.Join(dir, "data")}
	h.cfg = Default()
	h.cfg.Paths = []string{h.dir}
	h.cfg.Debounce = 10 * time.Millisecond
	require.NoError(t, os.MkdirAll(h.dir, 0o755))
	return h
}

// start provisions and runs the module; it does not wait for readiness.
func (h *harness) start() {
	t := h.t
	st, err := store.Open(h.data, store.Options{})
	require.NoError(t, err)
	h.st = st
	h.reg = prometheus.NewRegistry()
	h.bus = bus.New(bus.Options{})
	h.sub = h.bus.Subscribe("test", api.TopicConfigAccepted, api.TopicConfigRejected)
	h.m = new(Module)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	require.NoError(t, h.m.setup(deps{
		cfg: h.cfg, log: log, ns: st.Module(string(ID)), bus: h.bus,
		metrics: h.reg, mesh: core.DefaultMeshConfig(),
	}))
	if h.setup != nil {
		h.setup(h.m)
	}
	mux := http.NewServeMux()
	h.m.routes(func(p string, hd http.Handler) { mux.Handle(p, hd) })
	h.srv = httptest.NewServer(mux)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.m.Run(ctx) }()
	stopped := false
	h.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		require.NoError(t, <-done)
		h.srv.Close()
		h.bus.Close()
		require.NoError(t, st.Close())
	}
	t.Cleanup(h.stop)
}

func (h *harness) restart() {
	h.stop()
	h.start()
}

func (h *harness) write(name, data string) {
	h.t.Helper()
	path := filepath.Join(h.dir, name)
	require.NoError(h.t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(h.t, os.WriteFile(path, []byte(data), 0o644))
}

// writeRename writes like editors that save to a temp file and rename it
// over the original.
func (h *harness) writeRename(name, data string) {
	h.t.Helper()
	tmp := filepath.Join(h.dir, "."+name+".tmp")
	require.NoError(h.t, os.WriteFile(tmp, []byte(data), 0o644))
	require.NoError(h.t, os.Rename(tmp, filepath.Join(h.dir, name)))
}

func (h *harness) path(name string) string { return filepath.Join(h.dir, name) }

// eventually waits for cond, failing with the configz document.
func (h *harness) eventually(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			z, _ := json.MarshalIndent(h.m.Configz(), "", "  ")
			h.t.Fatalf("timed out waiting for %s; configz:\n%s", what, z)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (h *harness) waitRevision(rev uint64) {
	h.t.Helper()
	h.eventually(fmt.Sprintf("revision %d", rev), func() bool { return h.m.Accepted().Revision() >= rev })
	require.Equal(h.t, rev, h.m.Accepted().Revision())
}

func (h *harness) origin(name string) OriginStatus {
	for _, o := range h.m.Configz().Origins {
		if o.Origin == h.path(name) {
			return o
		}
	}
	return OriginStatus{}
}

func (h *harness) waitState(name, state string) OriginStatus {
	h.t.Helper()
	h.eventually(name+" "+state, func() bool { return h.origin(name).State == state })
	return h.origin(name)
}

// timeout returns the accepted VirtualService's first route timeout.
func (h *harness) timeout() string {
	o, ok := h.m.Accepted().Get("VirtualService/shop/reviews")
	if !ok {
		return "none"
	}
	raw, err := canonical(o)
	require.NoError(h.t, err)
	var v struct {
		Spec struct {
			HTTP []struct{ Timeout string } `json:"http"`
		} `json:"spec"`
	}
	require.NoError(h.t, json.Unmarshal(raw, &v))
	return v.Spec.HTTP[0].Timeout
}

func (h *harness) get(path string, out any) int {
	h.t.Helper()
	resp, err := http.Get(h.srv.URL + path)
	require.NoError(h.t, err)
	defer resp.Body.Close()
	require.NoError(h.t, json.NewDecoder(resp.Body).Decode(out))
	return resp.StatusCode
}

func (h *harness) post(path string, out any) int {
	h.t.Helper()
	resp, err := http.Post(h.srv.URL+path, "", nil)
	require.NoError(h.t, err)
	defer resp.Body.Close()
	require.NoError(h.t, json.NewDecoder(resp.Body).Decode(out))
	return resp.StatusCode
}

func codes(fs []api.Finding) []string {
	var out []string
	for _, f := range fs {
		if f.Severity == api.SeverityError {
			out = append(out, string(f.Code))
		}
	}
	return out
}

// TestInvalidEditKeepsLastGood is the must-show test: an edit that
// makes a watched file invalid leaves that file's accepted objects in
// place, while other files' changes go through, and a later valid edit is
// accepted.
func TestInvalidEditKeepsLastGood(t *testing.T) {
	h := newHarness(t)
	h.write("reviews.yaml", reviewsSE+"---\n"+reviewsDR)
	h.write("routes.yaml", vs("1s"))
	h.start()
	h.waitRevision(1)
	require.NoError(t, h.m.Ready())
	require.Equal(t, 3, h.m.Accepted().Len())
	dr, _ := h.m.Accepted().Get("DestinationRule/shop/reviews")

	// An unknown field: rejected, the accepted DestinationRule stays.
	h.write("reviews.yaml", reviewsSE+"---\n"+strings.Replace(reviewsDR, "  subsets:", "  subsetz:", 1))
	o := h.waitState("reviews.yaml", StateRejected)
	require.Equal(t, []string{"GAL1006"}, codes(o.LastRejected.Findings))
	require.Equal(t, 15, o.LastRejected.Findings[0].Line, "file:line of the unknown field")
	require.False(t, o.LastRejected.Retrying, "a decode error cannot go away by itself")
	require.Equal(t, uint64(1), h.m.Accepted().Revision())
	got, ok := h.m.Accepted().Get("DestinationRule/shop/reviews")
	require.True(t, ok)
	require.Same(t, dr, got, "the last good DestinationRule keeps serving")
	require.Equal(t, 2, o.Objects, "its accepted objects stay")
	require.Equal(t, 1.0, testutil.ToFloat64(h.m.metrics.failed))
	require.Equal(t, 1.0, testutil.ToFloat64(h.m.metrics.rejected))

	// Another file's valid change goes through meanwhile.
	h.write("routes.yaml", vs("2s"))
	h.waitRevision(2)
	require.Equal(t, "2s", h.timeout())
	got, _ = h.m.Accepted().Get("DestinationRule/shop/reviews")
	require.Same(t, dr, got)
	require.Equal(t, StateRejected, h.origin("reviews.yaml").State)

	// A change that breaks another file's objects is rejected: dropping
	// subset v2 leaves routes.yaml's route to it dangling.
	h.write("reviews.yaml", reviewsSE+"---\n"+strings.Replace(reviewsDR, "  - {name: v2, labels: {version: v2}}\n", "", 1))
	h.eventually("rejection for breaking routes.yaml", func() bool {
		o := h.origin("reviews.yaml")
		return o.LastRejected != nil && slices.Equal(codes(o.LastRejected.Findings), []string{"GAL3002"})
	})
	o = h.origin("reviews.yaml")
	require.Equal(t, h.path("routes.yaml"), o.LastRejected.Findings[0].File, "the finding points at the route that would dangle")

	// A valid edit is accepted.
	h.writeRename("reviews.yaml", reviewsSE+"---\n"+strings.Replace(reviewsDR, "version: v2}", "version: v2, track: canary}", 1))
	h.waitRevision(3)
	o = h.waitState("reviews.yaml", StateAccepted)
	require.Equal(t, uint64(3), o.Revision)
	require.NotNil(t, o.LastRejected, "the last rejection stays visible")
	require.False(t, o.LastRejected.Pending)
	got, _ = h.m.Accepted().Get("DestinationRule/shop/reviews")
	require.NotSame(t, dr, got)
	require.Equal(t, 0.0, testutil.ToFloat64(h.m.metrics.rejected))
	require.Equal(t, 3.0, testutil.ToFloat64(h.m.metrics.revision))
	require.Equal(t, 1.0, testutil.ToFloat64(h.m.metrics.objects.WithLabelValues("VirtualService")))

	// Events: three accepted revisions, two rejections.
	var accepted []uint64
	rejected := 0
	for _, ev := range h.sub.Drain() {
		switch ev := ev.(type) {
		case api.ConfigAccepted:
			accepted = append(accepted, ev.Revision)
		case api.ConfigRejected:
			require.Equal(t, h.path("reviews.yaml"), ev.Source)
			rejected++
		}
	}
	require.Equal(t, []uint64{1, 2, 3}, accepted)
	require.Equal(t, 2, rejected)
}

// TestOrderOfEdits: a file that refers to something another file has not
// defined yet is rejected, and accepted by itself once the other file
// catches up, so edits in the "wrong" order still converge on the files.
// Here the other file's change alone would break the first file's accepted
// route, so the two are accepted together.
func TestOrderOfEdits(t *testing.T) {
	h := newHarness(t)
	h.write("reviews.yaml", reviewsSE+"---\n"+reviewsDR)
	h.write("routes.yaml", vs("1s"))
	h.start()
	h.waitRevision(1)

	h.write("routes.yaml", strings.Replace(vs("1s"), "subset: v2", "subset: v3", 1))
	o := h.waitState("routes.yaml", StateRejected)
	require.Equal(t, []string{"GAL3002"}, codes(o.LastRejected.Findings))
	require.True(t, o.LastRejected.Retrying)

	h.write("reviews.yaml", reviewsSE+"---\n"+strings.Replace(reviewsDR, "name: v2, labels: {version: v2}", "name: v3, labels: {version: v3}", 1))
	h.waitState("routes.yaml", StateAccepted)
	h.waitState("reviews.yaml", StateAccepted)
	require.Equal(t, uint64(2), h.m.Accepted().Revision(), "both files in one revision")

	// Routes to an undefined subset first, its definition later: two
	// revisions.
	h.write("routes.yaml", strings.Replace(vs("1s"), "subset: v2", "subset: v4", 1))
	h.waitState("routes.yaml", StateRejected)
	h.write("reviews.yaml", reviewsSE+"---\n"+strings.Replace(reviewsDR, "name: v2, labels: {version: v2}", "name: v3, labels: {version: v3}}\n  - {name: v4, labels: {version: v4}", 1))
	h.waitState("routes.yaml", StateAccepted)
	require.Equal(t, uint64(4), h.m.Accepted().Revision(), "reviews.yaml, then routes.yaml")
}

// TestRenameAndDelete: rename-over saves are changes like any other, a
// deleted file's objects are removed, and a deletion that would leave
// references dangling is refused.
func TestRenameAndDelete(t *testing.T) {
	h := newHarness(t)
	h.write("reviews.yaml", reviewsSE+"---\n"+reviewsDR)
	h.write("routes.yaml", vs("1s"))
	h.write("extra/ratings.yaml", strings.ReplaceAll(reviewsSE, "reviews", "ratings"))
	h.start()
	h.waitRevision(1)
	require.Equal(t, 4, h.m.Accepted().Len())

	h.writeRename("routes.yaml", vs("3s"))
	h.waitRevision(2)
	require.Equal(t, "3s", h.timeout())

	// A broken rename-over is rejected like a broken write.
	h.writeRename("routes.yaml", vs("-1s"))
	h.waitState("routes.yaml", StateRejected)
	require.Equal(t, "3s", h.timeout())

	require.NoError(t, os.RemoveAll(filepath.Join(h.dir, "extra")))
	h.waitRevision(3)
	_, ok := h.m.Accepted().Get("ServiceEntry/shop/ratings")
	require.False(t, ok)

	// reviews.yaml defines what routes.yaml's accepted VirtualService
	// routes to: deleting it is refused and its objects stay.
	require.NoError(t, os.Remove(h.path("reviews.yaml")))
	o := h.waitState("reviews.yaml", StateRejected)
	require.Contains(t, codes(o.LastRejected.Findings), "GAL3002")
	require.Equal(t, 3, h.m.Accepted().Len())

	// Once routes.yaml is gone too, the waiting deletion goes through.
	require.NoError(t, os.Remove(h.path("routes.yaml")))
	h.waitRevision(5)
	require.Equal(t, 0, h.m.Accepted().Len())
	require.Empty(t, h.m.Configz().Origins)
}

// TestRestart: after a restart galley serves the stored revision before any
// file is read, then reads the files: unchanged files make no revision,
// files changed while it was down are checked as changes.
func TestRestart(t *testing.T) {
	h := newHarness(t)
	h.write("reviews.yaml", reviewsSE+"---\n"+reviewsDR)
	h.write("routes.yaml", vs("1s"))
	h.start()
	h.waitRevision(1)
	h.write("routes.yaml", vs("2s"))
	h.waitRevision(2)
	h.stop()

	// Served from the store before Run.
	h.m = new(Module)
	st, err := store.Open(h.data, store.Options{})
	require.NoError(t, err)
	m := new(Module)
	require.NoError(t, m.setup(deps{cfg: h.cfg, log: slog.New(slog.DiscardHandler), ns: st.Module(string(ID)), mesh: core.DefaultMeshConfig()}))
	require.Equal(t, uint64(2), m.Accepted().Revision())
	require.Equal(t, 3, m.Accepted().Len())
	require.NoError(t, m.Ready(), "ready with the stored config")
	z := m.Configz()
	require.Equal(t, uint64(2), z.Revision)
	require.Equal(t, uint64(2), z.RestoredRevision)
	require.Len(t, z.Origins, 2, "origins come from the store too")
	obj, _ := m.Accepted().Get("VirtualService/shop/reviews")
	require.Equal(t, h.path("routes.yaml"), obj.Source.File)
	require.NoError(t, st.Close())

	// Unchanged files: no new revision; the objects are swapped for the
	// freshly decoded ones (with a line index).
	h.start()
	h.eventually("sources read", func() bool { return h.m.Configz().Sources[0].Synced && len(h.m.Configz().Origins) == 2 })
	require.Equal(t, uint64(2), h.m.Configz().RestoredRevision)
	time.Sleep(50 * time.Millisecond)
	require.Equal(t, uint64(2), h.m.Accepted().Revision())

	// Changed and deleted while down.
	h.stop()
	h.write("routes.yaml", vs("5s"))
	h.write("more.yaml", strings.ReplaceAll(reviewsSE, "reviews", "ratings"))
	h.start()
	h.waitRevision(3)
	require.Equal(t, "5s", h.timeout())
	require.Equal(t, 4, h.m.Accepted().Len())
	h.stop()
	require.NoError(t, os.Remove(h.path("more.yaml")))
	h.start()
	h.waitRevision(4)
	require.Equal(t, 3, h.m.Accepted().Len())
}

// TestStartWithBrokenFile: with an empty store, the valid files are
// accepted and galley gets ready even though one file is broken.
func TestStartWithBrokenFile(t *testing.T) {
	h := newHarness(t)
	h.write("reviews.yaml", reviewsSE+"---\n"+reviewsDR)
	h.write("routes.yaml", vs("0.0001s"))
	h.start()
	h.waitRevision(1)
	require.NoError(t, h.m.Ready())
	require.Equal(t, 2, h.m.Accepted().Len())
	require.Equal(t, StateRejected, h.origin("routes.yaml").State)
}

// TestNoFiles: the embedded default's ./mesh may be missing; galley is
// ready with an empty config and picks the directory up when it appears.
func TestNoFiles(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, os.Remove(h.dir))
	h.start()
	h.eventually("ready", func() bool { return h.m.Ready() == nil })
	require.Equal(t, uint64(0), h.m.Accepted().Revision())
	h.write("sub/reviews.yaml", reviewsSE)
	h.waitRevision(1)
}
