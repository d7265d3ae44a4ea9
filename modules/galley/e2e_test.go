package galley_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/modules/galley"
	"github.com/meshd/meshd/test/e2e"
)

// The e2e tests run the built meshd binary; -short skips them.

const serveConfig = `modules:
  galley:
    paths: [./mesh]
    debounce: 20ms
`

const e2eSE = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: %[1]s, namespace: shop}
spec:
  hosts: [%[1]s.example.com]
  location: MESH_INTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
`

const e2eVS = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: %[1]s, namespace: shop}
spec:
  hosts: [%[1]s.example.com]
  http:
  - route:
    - destination: {host: %[1]s.example.com}
    timeout: %[2]dms
`

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func getJSON(t *testing.T, s *e2e.Server, path string, v any) {
	t.Helper()
	code, body := s.Get(t, path)
	if code != 200 {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, body)
	}
}

func waitFor(t *testing.T, s *e2e.Server, what string, cond func(galley.Configz) bool) galley.Configz {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var z galley.Configz
		getJSON(t, s, "/debug/configz", &z)
		if cond(z) {
			return z
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; configz: %+v\n%s", what, z, s.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServeBinary runs galley in `meshd serve`: a broken edit is rejected
// with file:line findings in configz, the log and the metrics while the
// last good config keeps serving, and history, diff and rollback work
// from the meshd command line.
func TestServeBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the meshd binary")
	}
	dir := t.TempDir()
	mesh := filepath.Join(dir, "mesh")
	writeFile(t, filepath.Join(mesh, "svc.yaml"), fmt.Sprintf(e2eSE, "reviews"))
	writeFile(t, filepath.Join(mesh, "routes", "reviews.yaml"), fmt.Sprintf(e2eVS, "reviews", 1000))
	s := e2e.Start(t, e2e.Options{Dir: dir, Config: serveConfig})
	s.WaitReady(t, 60*time.Second)
	waitFor(t, s, "revision 1", func(z galley.Configz) bool { return z.Revision == 1 && z.Objects == 2 })

	writeFile(t, filepath.Join(mesh, "routes", "reviews.yaml"), fmt.Sprintf(e2eVS, "reviews", 2000))
	waitFor(t, s, "revision 2", func(z galley.Configz) bool { return z.Revision == 2 })

	// Broken: an unknown field on line 9.
	writeFile(t, filepath.Join(mesh, "routes", "reviews.yaml"), strings.Replace(fmt.Sprintf(e2eVS, "reviews", 3000), "timeout:", "timeuot:", 1))
	z := waitFor(t, s, "rejection", func(z galley.Configz) bool {
		for _, o := range z.Origins {
			if o.State == galley.StateRejected {
				return true
			}
		}
		return false
	})
	if z.Revision != 2 {
		t.Fatalf("revision %d after a rejected edit, want 2", z.Revision)
	}
	if !regexp.MustCompile(`mesh/routes/reviews\.yaml:9: ERROR GAL1006 VirtualService/shop/reviews: spec\.http\[0\]\.timeuot: unknown field \\?"timeuot`).MatchString(s.Output()) {
		t.Fatalf("log lacks the file:line finding:\n%s", s.Output())
	}
	_, metrics := s.Get(t, "/metrics")
	for _, want := range []string{"galley_validation_passed 3", "galley_validation_failed 1", "meshd_galley_config_revision 2", `meshd_galley_accepted_objects{kind="VirtualService"} 1`, "meshd_galley_rejected_origins 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	run := func(want int, args ...string) string {
		t.Helper()
		out, code := e2e.Run(t, dir, nil, append(args, "--admin", s.Admin)...)
		if code != want {
			t.Fatalf("meshd %s: exit %d\n%s", strings.Join(args, " "), code, out)
		}
		return out
	}
	out := run(0, "config", "history")
	if !regexp.MustCompile(`(?m)^2 \*\s.*change\s+2\s+~1\s+mesh/routes/reviews\.yaml$`).MatchString(out) {
		t.Fatalf("history:\n%s", out)
	}
	out = run(0, "config", "diff")
	if !strings.Contains(out, "-      timeout: 1s\n+      timeout: 2s\n") {
		t.Fatalf("diff:\n%s", out)
	}
	out = run(0, "config", "rollback", "1")
	if !strings.HasPrefix(out, "rolled back to revision 1 as revision 3: 0 added, 1 updated, 0 removed\n") {
		t.Fatalf("rollback:\n%s", out)
	}
	out = run(0, "config", "history", "3", "-o", "yaml")
	if !strings.Contains(out, "timeout: 1s") {
		t.Fatalf("history 3 -o yaml:\n%s", out)
	}
	run(1, "config", "history", "42")

	// Fixing the file is a change after the rollback: accepted.
	writeFile(t, filepath.Join(mesh, "routes", "reviews.yaml"), fmt.Sprintf(e2eVS, "reviews", 4000))
	waitFor(t, s, "revision 4", func(z galley.Configz) bool { return z.Revision == 4 })
	if code := s.Stop(t, syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	out, code := e2e.Run(t, dir, nil, "config", "diff", "3", "4", "--data-dir", filepath.Join(dir, "data"))
	if code != 0 || !strings.Contains(out, "+      timeout: 4s\n") {
		t.Fatalf("diff --data-dir: exit %d\n%s", code, out)
	}
}

// TestStoreSurvivesSIGKILL churns config files so that galley writes
// revisions continuously, SIGKILLs meshd in the middle, and restarts it on
// the same data dir: every revision the admin API reported is still in the
// history, unchanged, and meshd starts serving the last revision it stored.
func TestStoreSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the meshd binary")
	}
	dir := t.TempDir()
	mesh := filepath.Join(dir, "mesh")
	const files = 4
	for i := range files {
		name := fmt.Sprintf("svc%d", i)
		writeFile(t, filepath.Join(mesh, name+".yaml"), fmt.Sprintf(e2eSE, name)+"---\n"+fmt.Sprintf(e2eVS, name, 1000))
	}
	s := e2e.Start(t, e2e.Options{Dir: dir, Config: serveConfig})
	s.WaitReady(t, 60*time.Second)
	waitFor(t, s, "revision 1", func(z galley.Configz) bool { return z.Revision == 1 })

	// Churn: rewrite a random file every few milliseconds while reading
	// the history, and SIGKILL meshd after enough revisions.
	stop := make(chan struct{})
	churned := make(chan map[string]int)
	go func() {
		last := map[string]int{}
		r := rand.New(rand.NewPCG(1, 2))
		for n := 1; ; n++ {
			select {
			case <-stop:
				churned <- last
				return
			default:
			}
			name := fmt.Sprintf("svc%d", r.IntN(files))
			ms := 1000 + n
			writeFile(t, filepath.Join(mesh, name+".yaml"), fmt.Sprintf(e2eSE, name)+"---\n"+fmt.Sprintf(e2eVS, name, ms))
			last[name] = ms
			time.Sleep(time.Duration(r.IntN(8)) * time.Millisecond)
		}
	}()
	reported := map[uint64]string{} // revision -> digest
	var maxReported uint64
	deadline := time.Now().Add(30 * time.Second)
	for maxReported < 25 {
		var list galley.RevisionList
		getJSON(t, s, "/config/revisions", &list)
		for _, r := range list.Revisions {
			reported[r.Revision] = r.Digest
			maxReported = max(maxReported, r.Revision)
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d revisions in 30 s\n%s", maxReported, s.Output())
		}
		time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond)
	}
	if err := s.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-s.Done()
	close(stop)
	last := <-churned
	killed := time.Now()

	s2 := e2e.Start(t, e2e.Options{Dir: dir, Config: serveConfig})
	s2.WaitReady(t, 60*time.Second)
	var list galley.RevisionList
	getJSON(t, s2, "/config/revisions", &list)
	stored := map[uint64]galley.RevisionInfo{}
	for _, r := range list.Revisions {
		stored[r.Revision] = r
	}
	for rev, digest := range reported {
		if got, ok := stored[rev]; !ok || got.Digest != digest {
			t.Fatalf("revision %d (digest %s) reported before the kill is %+v after restart", rev, digest, got)
		}
	}
	var z galley.Configz
	getJSON(t, s2, "/debug/configz", &z)
	restored := z.RestoredRevision
	if restored < maxReported {
		t.Fatalf("restored revision %d, but %d was reported before the kill", restored, maxReported)
	}
	for _, r := range list.Revisions {
		if r.Revision > restored && r.Time.Before(killed) {
			t.Fatalf("revision %d was stored before the kill but meshd restored %d", r.Revision, restored)
		}
	}
	t.Logf("%d revisions reported before the kill (up to %d); restored %d; %d in history", len(reported), maxReported, restored, len(list.Revisions))

	// Then the files are read again, and what is served is what they say.
	waitFor(t, s2, "files applied", func(z galley.Configz) bool {
		if !z.Ready || len(z.Origins) != files {
			return false
		}
		for _, o := range z.Origins {
			if o.State != galley.StateAccepted {
				return false
			}
		}
		return true
	})
	getJSON(t, s2, "/debug/configz", &z)
	var rev galley.RevisionDetail
	getJSON(t, s2, fmt.Sprintf("/config/revisions/%d", z.Revision), &rev)
	for name, ms := range last {
		want := time.Duration(ms) * time.Millisecond
		var got time.Duration
		for _, o := range rev.Config {
			if string(o.Key) != "VirtualService/shop/"+name {
				continue
			}
			var vs struct {
				Spec struct {
					HTTP []struct{ Timeout string } `json:"http"`
				} `json:"spec"`
			}
			if err := json.Unmarshal(o.Object, &vs); err != nil {
				t.Fatal(err)
			}
			got, _ = time.ParseDuration(vs.Spec.HTTP[0].Timeout)
		}
		if got != want {
			t.Fatalf("%s: served timeout %s, but the file says %s (revision %d)", name, got, want, rev.Revision)
		}
	}
}
