package citadel

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	pb "istio.io/api/security/v1alpha1"
)

// child is a meshd (citadel + fake xDS) in a re-exec'd test process.
type child struct {
	t      *testing.T
	dir    string
	cmd    *exec.Cmd
	info   childInfo
	exited chan error
	stderr *syncBuffer
}

var childConfig = map[string]any{
	"rotation":  map[string]any{"checkInterval": "20ms", "ackTimeout": "1s"},
	"rateLimit": map[string]any{"perCallerQPS": 0},
}

// startChild starts a child on dir; killAt names a crash point (or "").
func startChild(t *testing.T, dir, killAt string) *child {
	t.Helper()
	os.Remove(filepath.Join(dir, childInfoFile))
	cfg, _ := json.Marshal(childConfig)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChildDir+"="+dir, envChildConfig+"="+string(cfg), envChildKillAt+"="+killAt)
	c := &child{t: t, dir: dir, cmd: cmd, exited: make(chan error, 1), stderr: &syncBuffer{}}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.exited <- cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		raw, err := os.ReadFile(filepath.Join(dir, childInfoFile))
		if err == nil && json.Unmarshal(raw, &c.info) == nil && c.info.PID == cmd.Process.Pid {
			break
		}
		select {
		case err := <-c.exited:
			t.Fatalf("child exited before serving: %v\n%s", err, c.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("child did not start:\n%s", c.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(func() { c.kill() })
	return c
}

// kill SIGKILLs the child (if still running) and waits for it.
func (c *child) kill() {
	if c.cmd.ProcessState != nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGKILL)
	c.waitExit()
}

// waitExit waits for the child to die and checks that SIGKILL killed it.
func (c *child) waitExit() {
	c.t.Helper()
	select {
	case err := <-c.exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			c.t.Fatalf("child ended with %v, want SIGKILL\n%s", err, c.stderr.String())
		}
		c.exited <- err // for a second waitExit
	case <-time.After(20 * time.Second):
		c.t.Fatalf("child did not die\n%s", c.stderr.String())
	}
}

// admin calls the child's admin API.
func (c *child) admin(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, "http://"+c.info.Admin+path, rd)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, raw)
	}
	if b, ok := out.(*[]byte); ok {
		*b = raw
		return nil
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// client dials the child's CSR endpoint trusting its current bundle.
func (c *child) client() (pb.IstioCertificateServiceClient, *grpc.ClientConn) {
	c.t.Helper()
	var bundle []byte
	if err := c.admin("GET", "/ca/roots", nil, &bundle); err != nil {
		c.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(bundle)
	conn, err := grpc.NewClient(c.info.XDS, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})))
	if err != nil {
		c.t.Fatal(err)
	}
	return pb.NewIstioCertificateServiceClient(conn), conn
}

// checkStore opens the dead child's store and checks it is consistent: the
// state names roots that are stored with keys that load, and every
// certificate a client received is on record.
func checkStore(t *testing.T, dir string, received []string) *Status {
	t.Helper()
	o, err := OpenOffline(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	s, err := o.Status(context.Background())
	if err != nil {
		t.Fatalf("status after SIGKILL: %v", err)
	}
	if !slices.Contains([]Phase{PhaseIdle, PhaseStaged, PhaseSwitched}, s.Phase) || len(s.Roots) == 0 {
		t.Fatalf("inconsistent state after SIGKILL: %+v", s)
	}
	m := &Module{ns: o.ns, log: discardLogger()}
	for _, r := range s.Roots {
		if _, err := m.loadAuthority(r.ID); err != nil {
			t.Fatalf("root %s after SIGKILL: %v", r.ID, err)
		}
	}
	certs, err := o.ListCerts(context.Background(), CertFilter{All: true})
	if err != nil {
		t.Fatal(err)
	}
	onRecord := map[string]bool{}
	for _, c := range certs {
		onRecord[c.Serial] = true
	}
	for _, s := range received {
		if !onRecord[s] {
			t.Fatalf("certificate %s was handed out but is not in the ledger", s)
		}
	}
	return s
}

// TestKillDuringSigning SIGKILLs a CA in the middle of a stream of
// concurrent CSRs (at a random moment, and exactly between signing and
// recording), restarts it and checks the store.
func TestKillDuringSigning(t *testing.T) {
	dir := t.TempDir()
	c := startChild(t, dir, "")
	var tok NewToken
	if err := c.admin("POST", "/ca/tokens", TokenRequest{Identity: "vm/a", TTL: time.Hour, Uses: 0}, &tok); err != nil {
		t.Fatal(err)
	}
	var before Status
	c.admin("GET", "/ca/status", nil, &before)
	w := newWorkload(t, "vm", "a")
	csr := w.csr(t, nil, nil)

	var mu sync.Mutex
	var received []string
	client, conn := c.client()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				resp, err := request(context.Background(), client, csr, tok.Token, 0)
				if err != nil {
					return // the CA died
				}
				w := &workload{chain: resp.CertChain}
				mu.Lock()
				received = append(received, fmt.Sprintf("%032x", w.leaf(t).SerialNumber))
				mu.Unlock()
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	c.kill()
	wg.Wait()
	conn.Close()
	if len(received) == 0 {
		t.Fatal("nothing was issued before the kill")
	}
	after := checkStore(t, dir, received)
	if after.Roots[0].ID != before.Roots[0].ID {
		t.Fatalf("root changed across the kill: %s -> %s", before.Roots[0].ID, after.Roots[0].ID)
	}

	// Killed exactly after signing, before the ledger commit: the caller
	// gets an error, and nothing half-done is left.
	c = startChild(t, dir, "sign")
	client, conn = c.client()
	if _, err := request(context.Background(), client, csr, tok.Token, 0); err == nil {
		t.Fatal("a certificate came back from a CA killed before recording it")
	}
	conn.Close()
	c.waitExit()
	checkStore(t, dir, received)

	// And the CA carries on with the same root.
	c = startChild(t, dir, "")
	client, conn = c.client()
	defer conn.Close()
	if _, err := request(context.Background(), client, csr, tok.Token, 0); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	var st Status
	c.admin("GET", "/ca/status", nil, &st)
	if st.Roots[0].ID != before.Roots[0].ID {
		t.Fatal("root changed across restarts")
	}
}

// TestKillDuringRotation kills the CA at each step of a rotation (before
// and after each transaction), restarts it, and checks that the store is
// consistent and the rotation finishes.
func TestKillDuringRotation(t *testing.T) {
	for _, point := range []string{"stage", "staged", "switched", "retire", "retired"} {
		t.Run(point, func(t *testing.T) {
			dir := t.TempDir()
			c := startChild(t, dir, point)
			var before Status
			if err := c.admin("GET", "/ca/status", nil, &before); err != nil {
				t.Fatal(err)
			}
			old := before.Roots[0].ID
			c.admin("POST", "/ca/rotate", nil, nil) // the child may die while answering
			c.waitExit()
			s := checkStore(t, dir, nil)
			t.Logf("state after SIGKILL at %s: phase %s, bundle %d", point, s.Phase, s.BundleVersion)

			c = startChild(t, dir, "")
			if point == "stage" {
				// Killed before the rotation was stored: nothing happened.
				// The operator asks again.
				var st Status
				c.admin("GET", "/ca/status", nil, &st)
				if st.Phase != PhaseIdle || st.Roots[0].ID != old || st.BundleVersion != 1 {
					t.Fatalf("after a kill before staging: %+v", st)
				}
				if err := c.admin("POST", "/ca/rotate", nil, nil); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				var st Status
				if err := c.admin("GET", "/ca/status", nil, &st); err != nil {
					t.Fatal(err)
				}
				if st.Phase == PhaseIdle && st.Roots[0].ID != old {
					if st.BundleVersion != 3 || len(st.Roots) != 1 {
						t.Fatalf("finished rotation: %+v", st)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("rotation did not finish after restart: %+v", st)
				}
				time.Sleep(20 * time.Millisecond)
			}
			w := newWorkload(t, "vm", "a")
			var tok NewToken
			if err := c.admin("POST", "/ca/tokens", TokenRequest{Identity: w.id, TTL: time.Hour, Uses: 1}, &tok); err != nil {
				t.Fatal(err)
			}
			client, conn := c.client()
			defer conn.Close()
			resp, err := request(context.Background(), client, w.csr(t, nil, nil), tok.Token, 0)
			if err != nil {
				t.Fatalf("signing after the rotation: %v", err)
			}
			w.chain = resp.CertChain
			pool := w.bundle(t)
			if _, err := w.leaf(t).Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
