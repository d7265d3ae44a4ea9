// Package testservers starts the real servers that meshd's Kubernetes and
// Consul tests run against: etcd plus kube-apiserver, and a Consul agent in
// dev mode. All listen on loopback only, on free ports, and are stopped when
// the test ends.
//
// The binaries are built from the Go module proxy by test/tools/build.sh
// into a cache keyed by version. A test finds each one through an
// environment variable (MESHD_KUBE_APISERVER, MESHD_ETCD, MESHD_CONSUL) or
// in that cache (${MESHD_TOOLS_CACHE:-$HOME/.cache/meshd-tools}). When a
// binary is missing the test is skipped with the command that builds it,
// unless MESHD_CI=1, where a missing server fails the test: CI must never
// pass by skipping.
package testservers

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Versions of the servers; test/tools/build.sh builds the same (a test
// checks that they agree).
const (
	KubeVersion   = "v1.36.3"
	EtcdVersion   = "v3.6.16"
	ConsulVersion = "v1.20.6"
)

// Tool names a server binary.
type Tool struct {
	Name    string // binary name: kube-apiserver, etcd, consul
	Version string
	Env     string // environment variable that overrides the path
}

// The tools.
var (
	KubeAPIServer = Tool{Name: "kube-apiserver", Version: KubeVersion, Env: "MESHD_KUBE_APISERVER"}
	Etcd          = Tool{Name: "etcd", Version: EtcdVersion, Env: "MESHD_ETCD"}
	Consul        = Tool{Name: "consul", Version: ConsulVersion, Env: "MESHD_CONSUL"}
)

// CacheDir returns the directory build.sh caches binaries in.
func CacheDir() string {
	if d := os.Getenv("MESHD_TOOLS_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "meshd-tools")
	}
	return filepath.Join(home, ".cache", "meshd-tools")
}

// Path returns where the tool is: its environment variable, else the cache.
// ok is false when no executable is there.
func (tl Tool) Path() (path string, ok bool) {
	if p := os.Getenv(tl.Env); p != "" {
		return p, isExecutable(p)
	}
	p := filepath.Join(CacheDir(), tl.Name+"-"+tl.Version, tl.Name)
	return p, isExecutable(p)
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// Require returns the tool's path, or skips the test (fails it under
// MESHD_CI=1) when the tool is not built.
func (tl Tool) Require(t testing.TB) string {
	t.Helper()
	p, ok := tl.Path()
	if ok {
		return p
	}
	msg := fmt.Sprintf("%s %s not found at %s (set %s, or build it with test/tools/build.sh %s)",
		tl.Name, tl.Version, p, tl.Env, tl.Name)
	if os.Getenv("MESHD_CI") == "1" {
		t.Fatal(msg + "; MESHD_CI=1 forbids skipping")
	}
	t.Skip(msg)
	return ""
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// RepoRoot returns the root of the meshd checkout.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Process is a server child process with its output captured.
type Process struct {
	Name string
	Cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// startProcess starts bin with args; the process dies with the test
// process (Pdeathsig) and is stopped at test end.
func startProcess(t testing.TB, name, bin string, args []string, dir string, env ...string) *Process {
	t.Helper()
	p := &Process{Name: name, out: &syncBuffer{}, done: make(chan struct{})}
	p.Cmd = exec.Command(bin, args...)
	p.Cmd.Dir = dir
	p.Cmd.Env = append(os.Environ(), env...)
	p.Cmd.Stdout = p.out
	p.Cmd.Stderr = p.out
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.Cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("%s output (last 4 KiB):\n%s", name, p.Tail(4096))
		}
	})
	return p
}

// Stop sends SIGTERM and waits up to 10 s, then kills the process.
func (p *Process) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.Cmd.Process.Kill()
		<-p.done
	}
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Tail returns up to n bytes of the end of the process output.
func (p *Process) Tail(n int) string {
	s := p.out.String()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}

// waitFor polls ready every 50 ms until it returns nil, the process exits,
// or timeout passes.
func waitFor(t testing.TB, p *Process, timeout time.Duration, ready func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return
		}
		if p.Exited() {
			t.Fatalf("%s exited before it was ready: %v\n%s", p.Name, p.err, p.Tail(8192))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready within %s: %v\n%s", p.Name, timeout, err, p.Tail(8192))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	// Keep the last 1 MiB: servers are chatty and tests only show the tail.
	if b.b.Len() > 1<<20 {
		rest := bytes.Clone(b.b.Bytes()[b.b.Len()-(512<<10):])
		b.b.Reset()
		b.b.Write(rest)
	}
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// hostPort joins a loopback host and a port.
func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", fmt.Sprint(port)) }
