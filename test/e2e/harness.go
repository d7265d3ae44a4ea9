// Package e2e holds meshd's cross-module end-to-end tests and the harness
// they share: build the real binary once, start `meshd serve` in a temp dir
// on free loopback ports, wait for readiness, and stop it with a signal.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Meshd returns the path of a meshd binary built from this checkout, once
// per test process.
func Meshd(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "meshd-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "meshd")
		cmd := exec.Command("go", "build", "-o", buildPath, "./cmd/meshd")
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/meshd: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// RepoPath returns a path inside the repository.
func RepoPath(elem ...string) string {
	return filepath.Join(append([]string{repoRoot()}, elem...)...)
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Server is a running `meshd serve`.
type Server struct {
	Cmd    *exec.Cmd
	Dir    string
	Admin  string // admin address, host:port
	XDS    string // plaintext xDS address (modules.xds.address)
	XDSTLS string // TLS xDS and CA address (modules.xds.tlsAddress)
	out    *syncBuffer
	done   chan struct{}
	err    error
}

// Options for Start.
type Options struct {
	// Dir is the working directory (default: a new temp dir). Relative
	// paths in the config resolve against it.
	Dir string
	// Config is written to Dir/meshd.yaml and passed with -c when non-empty.
	Config string
	// Env adds environment variables.
	Env []string
	// Args are extra arguments after `serve`.
	Args []string
}

// Start runs `meshd serve` with an admin address on a free port and a data
// dir in its working dir. The process is killed when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin := Meshd(t)
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	s := &Server{Dir: opts.Dir, Admin: FreeAddr(t), XDS: FreeAddr(t), XDSTLS: FreeAddr(t), out: &syncBuffer{}, done: make(chan struct{})}
	args := []string{"serve", "--admin-address", s.Admin}
	if opts.Config != "" {
		path := filepath.Join(opts.Dir, "meshd.yaml")
		if err := os.WriteFile(path, []byte(opts.Config), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-c", path)
	}
	args = append(args, opts.Args...)
	s.Cmd = exec.Command(bin, args...)
	s.Cmd.Dir = opts.Dir
	// Every listener goes to a free loopback port, so tests run side by
	// side and beside a meshd a developer has running. opts.Env comes last
	// and wins.
	s.Cmd.Env = append(os.Environ(),
		"MESHD_MODULES_XDS_ADDRESS="+s.XDS,
		"MESHD_MODULES_XDS_TLSADDRESS="+s.XDSTLS,
	)
	s.Cmd.Env = append(s.Cmd.Env, opts.Env...)
	s.Cmd.Stdout = s.out
	s.Cmd.Stderr = s.out
	if err := s.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.err = s.Cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			_ = s.Cmd.Process.Kill()
			<-s.done
		}
		if t.Failed() {
			t.Logf("meshd output:\n%s", s.Output())
		}
	})
	return s
}

// Output returns everything the process wrote so far.
func (s *Server) Output() string { return s.out.String() }

// WaitReady polls /healthz/ready until it answers 200.
func (s *Server) WaitReady(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-s.done:
			t.Fatalf("meshd exited before ready: %v\n%s", s.err, s.Output())
		default:
		}
		resp, err := client.Get("http://" + s.Admin + "/healthz/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("meshd not ready within %s (last: %v)\n%s", timeout, err, s.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Get fetches a path from the admin server.
func (s *Server) Get(t testing.TB, path string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + s.Admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// Stop sends sig and waits for the process to exit, returning its exit code.
func (s *Server) Stop(t testing.TB, sig syscall.Signal, timeout time.Duration) int {
	t.Helper()
	if err := s.Cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	return s.Wait(t, timeout)
}

// Wait waits for the process to exit and returns its exit code.
func (s *Server) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(timeout):
		t.Fatalf("meshd did not exit within %s\n%s", timeout, s.Output())
	}
	return s.Cmd.ProcessState.ExitCode()
}

// Done is closed when the process has exited.
func (s *Server) Done() <-chan struct{} { return s.done }

// Run runs the meshd binary with args in dir and returns its combined
// output and exit code.
func Run(t testing.TB, dir string, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, Meshd(t), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("meshd %s: %v", strings.Join(args, " "), err)
		}
	}
	return string(out), cmd.ProcessState.ExitCode()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
