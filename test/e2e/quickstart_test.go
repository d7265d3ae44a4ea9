package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestQuickstart runs examples/quickstart as its README says, with meshd
// serving the quickstart's own meshd.yaml: the two greeter backends, meshd,
// and the client printing its split. It then edits the mesh's routing.yaml
// (a copy, on free ports) and checks the running client's split follows
// within a second, and that the tester header always reaches v2.
func TestQuickstart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds meshd and the quickstart programs")
	}
	bin := t.TempDir()
	for _, prog := range []string{"backends", "client"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, prog), "./examples/quickstart/"+prog)
		cmd.Dir = RepoPath()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build quickstart %s: %v\n%s", prog, err, out)
		}
	}
	v1, v2 := FreeAddr(t), FreeAddr(t)

	// The quickstart's mesh, moved to free ports, where its meshd.yaml
	// expects it relative to meshd's working directory.
	dir := t.TempDir()
	meshDir := filepath.Join(dir, "examples", "quickstart", "mesh")
	if err := os.MkdirAll(meshDir, 0o755); err != nil {
		t.Fatal(err)
	}
	port := func(addr string) string { return addr[strings.LastIndexByte(addr, ':')+1:] }
	for _, f := range []string{"greeter.yaml", "routing.yaml"} {
		b, err := os.ReadFile(RepoPath("examples", "quickstart", "mesh", f))
		if err != nil {
			t.Fatal(err)
		}
		s := strings.NewReplacer("grpc: 50051", "grpc: "+port(v1), "grpc: 50052", "grpc: "+port(v2)).Replace(string(b))
		if err := os.WriteFile(filepath.Join(meshDir, f), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	config, err := os.ReadFile(RepoPath("examples", "quickstart", "meshd.yaml"))
	if err != nil {
		t.Fatal(err)
	}

	backends := exec.Command(filepath.Join(bin, "backends"), "-v1", v1, "-v2", v2)
	backends.Stderr = os.Stderr
	if err := backends.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = backends.Process.Kill(); _ = backends.Wait() })

	srv := Start(t, Options{Dir: dir, Config: string(config)})
	srv.WaitReady(t, 60*time.Second)

	client := exec.Command(filepath.Join(bin, "client"), "-xds", srv.XDS, "-interval", "100ms", "-calls", "60", "-tester-calls", "10")
	stdout, err := client.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	client.Stderr = &stderr
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = client.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = client.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = client.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("client stderr:\n%s", stderr.String())
		}
	})

	type round struct {
		at          time.Time
		v1, v2, tst int
		line        string
	}
	rounds := make(chan round, 1024)
	line := regexp.MustCompile(`^(\d\d:\d\d:\d\d\.\d\d\d)  everyone: (.*?)\s+x-user=tester: (.*)$`)
	pct := func(s, version string) int {
		m := regexp.MustCompile(version + `\s+(\d+)%`).FindStringSubmatch(s)
		if m == nil {
			return 0
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	var mu sync.Mutex
	var output []string
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			mu.Lock()
			output = append(output, sc.Text())
			mu.Unlock()
			m := line.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			ts, err := time.ParseInLocation("15:04:05.000", m[1], time.Local)
			if err != nil {
				continue
			}
			now := time.Now()
			at := time.Date(now.Year(), now.Month(), now.Day(), ts.Hour(), ts.Minute(), ts.Second(), ts.Nanosecond(), time.Local)
			rounds <- round{at: at, v1: pct(m[2], "v1"), v2: pct(m[2], "v2"), tst: pct(m[3], "v2"), line: sc.Text()}
		}
		close(rounds)
	}()
	next := func(within time.Duration) round {
		t.Helper()
		select {
		case r, ok := <-rounds:
			if !ok {
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("client exited; output:\n%s", strings.Join(output, "\n"))
			}
			return r
		case <-time.After(within):
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("no round printed within %v; output:\n%s", within, strings.Join(output, "\n"))
		}
		return round{}
	}

	// As the README says: about 90/10, and the tester always on v2.
	for range 5 {
		r := next(40 * time.Second)
		if r.v1 < 70 || r.tst != 100 {
			t.Fatalf("round %q: want about 90%% v1 and all tester calls on v2", r.line)
		}
	}

	// Edit the weights, as the README asks, and time the client's answer.
	routing := filepath.Join(meshDir, "routing.yaml")
	b, err := os.ReadFile(routing)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.NewReplacer("weight: 90", "weight: 10", "weight: 10", "weight: 90").Replace(string(b))
	if edited == string(b) {
		t.Fatal("routing.yaml no longer has the 90/10 weights the README talks about")
	}
	saved := time.Now()
	if err := os.WriteFile(routing, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	for {
		r := next(5 * time.Second)
		if r.at.Before(saved) {
			continue
		}
		if r.v2 >= 70 {
			took := r.at.Sub(saved)
			t.Logf("split after the edit: %q, %v after saving", r.line, took.Round(time.Millisecond))
			if took > time.Second {
				t.Fatalf("the new weights reached the client %v after the file was saved, want within 1s", took)
			}
			if r.tst != 100 {
				t.Fatalf("tester calls left v2: %q", r.line)
			}
			break
		}
		if time.Since(saved) > 3*time.Second {
			t.Fatalf("the split did not change within 3s: %q", r.line)
		}
	}
}
