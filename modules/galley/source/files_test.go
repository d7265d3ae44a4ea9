package source_test

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/source"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a Sink that keeps the latest update per origin.
type recorder struct {
	mu      sync.Mutex
	latest  map[string]api.Update
	updates int
	synced  int
	ch      chan struct{}
}

func newRecorder() *recorder {
	return &recorder{latest: map[string]api.Update{}, ch: make(chan struct{}, 1)}
}

func (r *recorder) Update(us ...api.Update) {
	r.mu.Lock()
	for _, u := range us {
		r.latest[u.Origin] = u
		r.updates++
	}
	r.mu.Unlock()
	select {
	case r.ch <- struct{}{}:
	default:
	}
}

func (r *recorder) Synced() {
	r.mu.Lock()
	r.synced++
	r.mu.Unlock()
}

// names returns origin -> object names of the origins not removed.
func (r *recorder) state() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]string{}
	for o, u := range r.latest {
		if u.Removed {
			continue
		}
		var names []string
		for _, obj := range u.Objects {
			names = append(names, obj.Name)
		}
		if len(u.Findings) > 0 {
			names = append(names, "!"+string(u.Findings[0].Code))
		}
		out[o] = strings.Join(names, ",")
	}
	return out
}

func (r *recorder) waitState(t *testing.T, want map[string]string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if got := r.state(); maps.Equal(got, want) {
			return
		}
		select {
		case <-r.ch:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("source state %v, want %v", r.state(), want)
		}
	}
}

func se(name string) string {
	return "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: " + name + ", namespace: ns}\n" +
		"spec: {hosts: [" + name + ".example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}\n"
}

func write(t *testing.T, path, data string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(data), 0o644))
}

func run(t *testing.T, paths ...string) *recorder {
	t.Helper()
	r := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	f := source.NewFiles(source.FilesOptions{Paths: paths, Debounce: 10 * time.Millisecond})
	go func() { done <- f.Run(ctx, r) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return r
}

// TestFilesWatch walks a tree through what editors and tools do to files.
func TestFilesWatch(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "mesh")
	write(t, filepath.Join(root, "a.yaml"), se("a"))
	write(t, filepath.Join(root, "sub", "b.yml"), se("b")+"---\n"+se("b2"))
	write(t, filepath.Join(root, "notes.txt"), "not config")
	write(t, filepath.Join(root, ".hidden", "c.yaml"), se("c"))
	a, b := filepath.Join(root, "a.yaml"), filepath.Join(root, "sub", "b.yml")

	r := run(t, root)
	r.waitState(t, map[string]string{a: "a", b: "b,b2"})
	require.Equal(t, 1, r.synced)

	t.Run("write in place", func(t *testing.T) {
		write(t, a, se("a1"))
		r.waitState(t, map[string]string{a: "a1", b: "b,b2"})
	})
	t.Run("rename over", func(t *testing.T) {
		tmp := filepath.Join(root, ".a.yaml.swp")
		write(t, tmp, se("a2"))
		require.NoError(t, os.Rename(tmp, a))
		r.waitState(t, map[string]string{a: "a2", b: "b,b2"})
	})
	t.Run("remove and create", func(t *testing.T) {
		require.NoError(t, os.Remove(a))
		r.waitState(t, map[string]string{b: "b,b2"})
		r.mu.Lock()
		require.True(t, r.latest[a].Removed)
		r.mu.Unlock()
		write(t, a, se("a3"))
		r.waitState(t, map[string]string{a: "a3", b: "b,b2"})
	})
	t.Run("new subdirectories", func(t *testing.T) {
		d := filepath.Join(root, "new", "deeper", "d.json")
		write(t, d, `{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "d", "namespace": "ns"}, "spec": {"hosts": ["d.example.com"], "resolution": "DNS", "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}}`)
		r.waitState(t, map[string]string{a: "a3", b: "b,b2", d: "d"})
		// A file written into the new directory after its watch exists.
		e := filepath.Join(root, "new", "e.yaml")
		write(t, e, se("e"))
		r.waitState(t, map[string]string{a: "a3", b: "b,b2", d: "d", e: "e"})
		require.NoError(t, os.RemoveAll(filepath.Join(root, "new")))
		r.waitState(t, map[string]string{a: "a3", b: "b,b2"})
	})
	t.Run("broken file is reported with findings", func(t *testing.T) {
		write(t, a, "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec: {hosts: [a.example.com], bogus: 1}\n")
		r.waitState(t, map[string]string{a: "!GAL1006", b: "b,b2"})
	})
	t.Run("truncate then write is one change", func(t *testing.T) {
		r.mu.Lock()
		n := r.updates
		r.mu.Unlock()
		require.NoError(t, os.WriteFile(b, nil, 0o644)) // a shell redirect truncates first...
		time.Sleep(300 * time.Millisecond)              // ...and the command writes later
		r.mu.Lock()
		require.Equal(t, n, r.updates, "an emptied file waits")
		r.mu.Unlock()
		write(t, b, se("b3"))
		r.waitState(t, map[string]string{a: "!GAL1006", b: "b3"})
		r.mu.Lock()
		require.Equal(t, n+1, r.updates)
		r.mu.Unlock()
	})
	t.Run("emptied file counts once it stays empty", func(t *testing.T) {
		require.NoError(t, os.WriteFile(b, nil, 0o644))
		r.waitState(t, map[string]string{a: "!GAL1006", b: ""})
	})
	t.Run("touch without change is not reported", func(t *testing.T) {
		r.mu.Lock()
		n := r.updates
		r.mu.Unlock()
		now := time.Now().Add(time.Second)
		require.NoError(t, os.Chtimes(b, now, now))
		time.Sleep(200 * time.Millisecond)
		r.mu.Lock()
		defer r.mu.Unlock()
		require.Equal(t, n, r.updates)
	})
}

// TestFilesMissingRoot: a path that does not exist yet is picked up when
// it appears, and a single file path is watched through its directory.
func TestFilesMissingRoot(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "later", "mesh")
	single := filepath.Join(dir, "single.yaml")
	r := run(t, root, single)
	r.waitState(t, map[string]string{})
	require.Eventually(t, func() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.synced == 1 }, 5*time.Second, 10*time.Millisecond)

	f := filepath.Join(root, "x.yaml")
	write(t, f, se("x"))
	r.waitState(t, map[string]string{f: "x"})
	write(t, single, se("s"))
	r.waitState(t, map[string]string{f: "x", single: "s"})
	require.NoError(t, os.Remove(single))
	r.waitState(t, map[string]string{f: "x"})
}

// TestFilesConfigMap imitates a Kubernetes ConfigMap volume: files are
// symlinks through ..data, which is swapped atomically.
func TestFilesConfigMap(t *testing.T) {
	root := t.TempDir()
	v1 := filepath.Join(root, "..2024_v1")
	write(t, filepath.Join(v1, "c.yaml"), se("v1"))
	require.NoError(t, os.Symlink("..2024_v1", filepath.Join(root, "..data")))
	require.NoError(t, os.Symlink(filepath.Join("..data", "c.yaml"), filepath.Join(root, "c.yaml")))
	c := filepath.Join(root, "c.yaml")

	r := run(t, root)
	r.waitState(t, map[string]string{c: "v1"})

	write(t, filepath.Join(root, "..2024_v2", "c.yaml"), se("v2"))
	require.NoError(t, os.Symlink("..2024_v2", filepath.Join(root, "..data_tmp")))
	require.NoError(t, os.Rename(filepath.Join(root, "..data_tmp"), filepath.Join(root, "..data")))
	r.waitState(t, map[string]string{c: "v2"})
	require.True(t, slices.Contains(slices.Collect(maps.Keys(r.state())), c))
}
