package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/modules/citadel"
	pilotapi "github.com/meshd/meshd/modules/pilot/api"
	"github.com/meshd/meshd/test/e2e"
)

// The end-to-end test: `meshd serve` and two `meshd agent` processes (two
// "VMs") on loopback. VM A runs an xDS-enabled gRPC server
// (xds.NewGRPCServer, configured by meshd: PeerAuthentication STRICT) and a
// plain gRPC server on the agent's certificate files; its agent registers
// both ports through a WorkloadGroup. VM B runs a proxyless client
// (xds:///, xDS credentials) whose route comes from a VirtualService and
// whose TLS comes from DestinationRules. Each application uses its own
// agent's bootstrap and certificates; assertions are on what they see.

// buildMeshd builds cmd/meshd (once per test process) and checks that it
// has the modules this test needs.
func buildMeshd(t *testing.T) string {
	t.Helper()
	bin := e2e.Meshd(t)
	out, err := exec.Command(bin, "modules", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("meshd modules list: %v\n%s", err, out)
	}
	for _, id := range []string{"xds", "citadel", "galley", "pilot", "autoregister"} {
		if !regexp.MustCompile(`(?m)^` + id + `\s+true`).Match(out) {
			t.Fatalf("meshd does not run module %s by default (cmd/meshd/cli/modules.go):\n%s", id, out)
		}
	}
	return bin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// proc is a child process with its output kept.
type proc struct {
	t     *testing.T
	name  string
	cmd   *exec.Cmd
	out   *syncBuffer
	stdin io.WriteCloser
	done  chan struct{}
}

func startProc(t *testing.T, name, dir string, env []string, bin string, args ...string) *proc {
	t.Helper()
	return startProcIO(t, name, dir, env, false, nil, bin, args...)
}

// startProcIO is startProc with a stdin pipe (p.stdin; the child sees EOF
// when it is closed or the child is killed) and stdout to a writer.
func startProcIO(t *testing.T, name, dir string, env []string, stdin bool, stdout io.Writer, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = p.out
	p.cmd.Stdout = p.out
	if stdout != nil {
		p.cmd.Stdout = stdout
	}
	if stdin {
		var err error
		if p.stdin, err = p.cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- %s output:\n%s", name, p.out.String())
		}
	})
	return p
}

func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.t.Errorf("%s: not reaped 10s after SIGKILL", p.name)
		}
	}
}

// stop sends SIGTERM and waits for the exit status.
func (p *proc) stop(timeout time.Duration) int {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s did not stop within %s\n%s", p.name, timeout, p.out.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// admin is meshd's admin API.
type admin struct {
	t    *testing.T
	addr string
}

func (a admin) do(method, path string, body any, out any) int {
	a.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+a.addr+path, rd)
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode == http.StatusOK {
		if b, ok := out.(*[]byte); ok {
			*b = data
		} else if err := json.Unmarshal(data, out); err != nil {
			a.t.Fatalf("%s %s: %v\n%s", method, path, err, data)
		}
	}
	return resp.StatusCode
}

func (a admin) token(identity string) string {
	a.t.Helper()
	var tok citadel.NewToken
	if code := a.do("POST", "/ca/tokens", citadel.TokenRequest{Identity: identity, TTL: time.Hour, Uses: 1}, &tok); code != 200 {
		a.t.Fatalf("create token: HTTP %d", code)
	}
	return tok.Token
}

func (a admin) workload(key string) (pilotapi.Workload, bool) {
	a.t.Helper()
	var list []pilotapi.Workload
	a.do("GET", "/registry/workloads", nil, &list)
	for _, w := range list {
		if w.Namespace+"/"+w.Name == key {
			return w, true
		}
	}
	return pilotapi.Workload{}, false
}

// client drives the client child.
type client struct {
	t   *testing.T
	in  io.WriteCloser
	out *bufio.Scanner
	mu  sync.Mutex
}

func (c *client) run(cmd loadCmd) *loadResult {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	b, _ := json.Marshal(cmd)
	if _, err := c.in.Write(append(b, '\n')); err != nil {
		c.t.Fatal(err)
	}
	if !c.out.Scan() {
		c.t.Fatalf("client child: no result (%v)", c.out.Err())
	}
	var res loadResult
	if err := json.Unmarshal(c.out.Bytes(), &res); err != nil {
		c.t.Fatal(err)
	}
	return &res
}

const e2eMesh = `
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: echo, namespace: shop}
spec:
  metadata: {labels: {app: echo}}
  template:
    serviceAccount: echo
    ports: {grpc: 7070, grpc-xds: 7071}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: grpc, number: 7070, protocol: GRPC}]
  workloadSelector: {labels: {app: echo}}
---
# The same workloads' xDS-enabled server (gRFC A36), configured by meshd.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo-xds, namespace: shop}
spec:
  hosts: [echo-xds.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: grpc-xds, number: 7070, protocol: GRPC}]
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo-xds, namespace: shop}
spec:
  host: echo-xds.shop.svc.cluster.local
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec:
  mtls: {mode: STRICT}
---
# frontend has no workloads of its own: only the VirtualService sends its
# traffic anywhere.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: frontend, namespace: shop}
spec:
  hosts: [frontend.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: grpc, number: 7070, protocol: GRPC}]
  workloadSelector: {labels: {app: frontend}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: frontend, namespace: shop}
spec:
  hosts: [frontend.shop.svc.cluster.local]
  http:
  - route:
    - destination: {host: echo-xds.shop.svc.cluster.local, port: {number: 7070}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: shop}
spec:
  host: echo.shop.svc.cluster.local
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
`

// vm is one "VM": a directory with agent.yaml, a join token, and the
// agent's data dir.
type vm struct {
	dir   string
	agent *proc
}

func (v vm) certs() string { return filepath.Join(v.dir, "data", "certs") }

func writeVM(t *testing.T, root, name, xdsTLS, sa, extra string) vm {
	t.Helper()
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`controlPlane:
  address: %s
  rootCertFile: %s
  retryMax: 1s
identity:
  trustDomain: example.org
  namespace: shop
  serviceAccount: %s
  joinTokenFile: %s
  certTTL: 6s
dataDir: %s
grpcBootstrap:
  refreshInterval: 0.5s
log:
  level: debug
%s`, xdsTLS, filepath.Join(root, "root-cert.pem"), sa, filepath.Join(dir, "join-token"), filepath.Join(dir, "data"), extra)
	if err := os.WriteFile(filepath.Join(dir, "agent.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return vm{dir: dir}
}

func waitFile(t *testing.T, path string, p *proc) {
	t.Helper()
	eventually(t, 30*time.Second, "file "+path, func() bool {
		select {
		case <-p.done:
			t.Fatalf("%s exited:\n%s", p.name, p.out.String())
		default:
		}
		_, err := os.Stat(path)
		return err == nil
	})
}

// TestVMEndToEnd: see the comment at the top of the file.
func TestVMEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs meshd")
	}
	bin := buildMeshd(t)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "mesh"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "mesh", "vm.yaml"), []byte(e2eMesh), 0o644); err != nil {
		t.Fatal(err)
	}
	const grace = 3 * time.Second
	meshdYAML := "mesh:\n  trustDomain: example.org\nmodules:\n  autoregister:\n    gracePeriod: 3s\n  galley:\n    paths: [./mesh]\n"
	if err := os.WriteFile(filepath.Join(root, "meshd.yaml"), []byte(meshdYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	adm := admin{t: t, addr: freeAddr(t)}
	xdsTLS := freeAddr(t)
	server := startProc(t, "meshd", root, []string{"MESHD_MODULES_XDS_ADDRESS=" + freeAddr(t), "MESHD_MODULES_XDS_TLSADDRESS=" + xdsTLS},
		bin, "serve", "-c", "meshd.yaml", "--admin-address", adm.addr)
	eventually(t, 60*time.Second, "meshd ready", func() bool {
		select {
		case <-server.done:
			t.Fatalf("meshd exited:\n%s", server.out.String())
		default:
		}
		return adm.do("GET", "/healthz/ready", nil, nil) == 200
	})
	var roots []byte
	if adm.do("GET", "/ca/roots", nil, &roots) != 200 || len(roots) == 0 {
		t.Fatalf("no trust bundle from meshd:\n%s", server.out.String())
	}
	if err := os.WriteFile(filepath.Join(root, "root-cert.pem"), roots, 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("bad input ends the agent with status 2", func(t *testing.T) {
		dir := t.TempDir()
		write := func(cfg string) {
			if err := os.WriteFile(filepath.Join(dir, "agent.yaml"), []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		base := "controlPlane:\n  address: " + xdsTLS + "\n%sidentity: {trustDomain: example.org, namespace: shop, serviceAccount: bad, joinTokenFile: token}\n" +
			"workload: {name: bad-vm, address: 127.0.0.1}\ndataDir: data\n"
		write(fmt.Sprintf(base, ""))
		out, code := e2e.Run(t, dir, nil, "agent", "-c", "agent.yaml")
		if code != ExitConfig || !strings.Contains(out, "meshd: agent.yaml:1: controlPlane: set rootCertFile") {
			t.Errorf("no root: exit %d\n%s", code, out)
		}
		write(fmt.Sprintf(base, "  rootPin: sha256:"+strings.Repeat("00", 32)+"\n"))
		os.WriteFile(filepath.Join(dir, "token"), []byte(adm.token("ns/shop/sa/bad")), 0o600)
		out, code = e2e.Run(t, dir, nil, "agent", "-c", "agent.yaml")
		if code != ExitConfig || !strings.Contains(out, "no root in meshd's trust bundle matches controlPlane.rootPin: meshd at "+xdsTLS+" offers sha256:") {
			t.Errorf("wrong pin: exit %d\n%s", code, out)
		}
	})

	// VM A runs the echo server and registers it; VM B runs the client.
	echoAddr, xdsServerAddr := freeAddr(t), freeAddr(t)
	_, echoPort, _ := net.SplitHostPort(echoAddr)
	_, xdsPort, _ := net.SplitHostPort(xdsServerAddr)
	a := writeVM(t, root, "vm-a", xdsTLS, "echo", fmt.Sprintf(`workload:
  name: echo-vm
  address: 127.0.0.1
  service: echo
  labels: {version: v1}
  workloadGroup: echo
  ports: [{name: grpc, port: %s, protocol: GRPC}, {name: grpc-xds, port: %s, protocol: GRPC}]
  probe: {type: grpc, tls: true, interval: 200ms, reportInterval: 1s}
`, echoPort, xdsPort))
	b := writeVM(t, root, "vm-b", xdsTLS, "client", "workload:\n  name: client-vm\n  address: 127.0.0.1\n")
	for v, id := range map[vm]string{a: "ns/shop/sa/echo", b: "ns/shop/sa/client"} {
		if err := os.WriteFile(filepath.Join(v.dir, "join-token"), []byte(adm.token(id)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a.agent = startProc(t, "agent vm-a", a.dir, nil, bin, "agent", "-c", "agent.yaml")
	b.agent = startProc(t, "agent vm-b", b.dir, nil, bin, "agent", "-c", "agent.yaml")
	waitFile(t, filepath.Join(a.dir, "data", "grpc-bootstrap.json"), a.agent)
	waitFile(t, filepath.Join(b.dir, "data", "grpc-bootstrap.json"), b.agent)
	// The tokens are spent: from now on the agents live on their certificates.
	os.Remove(filepath.Join(a.dir, "join-token"))
	os.Remove(filepath.Join(b.dir, "join-token"))

	self, _ := os.Executable()
	// The server runs until its stdin closes.
	startProcIO(t, "echo server (vm-a)", root, []string{envChild + "=server", envCerts + "=" + a.certs(), envAddr + "=" + echoAddr},
		true, nil, self, "-test.run=^$")
	clientOutR, clientOut := io.Pipe()
	cp := startProcIO(t, "client (vm-b)", root, []string{envChild + "=client", "GRPC_XDS_BOOTSTRAP=" + filepath.Join(b.dir, "data", "grpc-bootstrap.json")},
		true, clientOut, self, "-test.run=^$")
	t.Cleanup(func() { clientOut.Close() })
	cl := &client{t: t, in: cp.stdin, out: bufio.NewScanner(clientOutR)}
	// An xDS-enabled gRPC server (gRFC A36) on VM A asks meshd for its
	// inbound listener by the bootstrap's server_listener template.
	xdsServerOut := &syncBuffer{}
	startProcIO(t, "xds server (vm-a)", root, []string{envChild + "=server", envXDS + "=1", envAddr + "=" + xdsServerAddr,
		"GRPC_XDS_BOOTSTRAP=" + filepath.Join(a.dir, "data", "grpc-bootstrap.json")}, true, xdsServerOut, self, "-test.run=^$")

	echoID, clientID := "spiffe://example.org/ns/shop/sa/echo", "spiffe://example.org/ns/shop/sa/client"
	target := "xds:///frontend.shop.svc.cluster.local:7070"

	top := t // processes that outlive a subtest belong to the test
	must := func(ok bool) {
		if !ok {
			t.FailNow()
		}
	}
	must(t.Run("registration", func(t *testing.T) {
		eventually(t, 20*time.Second, "echo-vm registered and healthy", func() bool {
			w, ok := adm.workload("shop/echo-vm")
			return ok && w.Healthy
		})
		w, _ := adm.workload("shop/echo-vm")
		if w.Address != "127.0.0.1" || w.ServiceAccount != "echo" || w.Labels["app"] != "echo" || w.Labels["version"] != "v1" ||
			fmt.Sprint(w.Ports["grpc"]) != echoPort {
			t.Fatalf("registered %+v", w)
		}
		if _, ok := adm.workload("shop/client-vm"); ok {
			t.Fatal("client-vm registered without a workloadGroup")
		}
	}))

	// check asserts a batch went through with the expected identities on
	// both sides.
	check := func(t *testing.T, res *loadResult, n int) {
		t.Helper()
		if res.Failed > 0 || res.OK != n {
			t.Fatalf("%d ok, %d failed: %v", res.OK, res.Failed, res.Errors)
		}
		if len(res.ServerIDs) != 1 || res.ServerIDs[echoID] != n {
			t.Errorf("client saw server identities %v, want %s", res.ServerIDs, echoID)
		}
		if len(res.PeerIDs) != 1 || res.PeerIDs[clientID] != n {
			t.Errorf("server saw client identities %v, want %s", res.PeerIDs, clientID)
		}
	}

	must(t.Run("proxyless server and client over mTLS through a VirtualService", func(t *testing.T) {
		// The server's side is meshd's too (PeerAuthentication STRICT,
		// certificates from the bootstrap's provider): grpc-go's
		// xds.NewGRPCServer serves once meshd sends its inbound listener.
		eventually(t, 30*time.Second, "xds.NewGRPCServer serving", func() bool { return strings.Contains(xdsServerOut.String(), `"mode":"SERVING"`) })
		// frontend has no endpoints: only the VirtualService gets these
		// RPCs anywhere.
		check(t, cl.run(loadCmd{Target: target, N: 20, WaitForReady: true, Timeout: 20 * time.Second}), 20)
	}))

	t.Run("plain gRPC server with the agent's files", func(t *testing.T) {
		// An application that is not xDS-enabled on the server side uses
		// the certificate files directly.
		check(t, cl.run(loadCmd{Target: "xds:///echo.shop.svc.cluster.local:7070", N: 20, WaitForReady: true, Timeout: 20 * time.Second}), 20)
	})

	t.Run("certificates renew under load", func(t *testing.T) {
		// 6 s certificates renew every 3 to 5 s on both VMs; new
		// connections pick up the new files, old ones keep working.
		res := cl.run(loadCmd{Target: target, Duration: 12 * time.Second, Concurrency: 4, FreshEvery: 300 * time.Millisecond})
		t.Logf("%d RPCs; server serials %d, client serials %d", res.OK, len(res.ServerSerials), len(res.PeerSerials))
		if res.Failed > 0 {
			t.Fatalf("%d of %d RPCs failed: %v", res.Failed, res.OK+res.Failed, res.Errors)
		}
		if len(res.ServerSerials) < 2 || len(res.PeerSerials) < 2 {
			t.Fatalf("no renewed certificate in use: server serials %v, client serials %v", res.ServerSerials, res.PeerSerials)
		}
		if len(res.ServerIDs) != 1 || len(res.PeerIDs) != 1 {
			t.Fatalf("identities changed: %v %v", res.ServerIDs, res.PeerIDs)
		}
	})

	t.Run("restart without the token", func(t *testing.T) {
		loadDone := make(chan *loadResult, 1)
		go func() {
			loadDone <- cl.run(loadCmd{Target: target, Duration: 8 * time.Second, Concurrency: 2, FreshEvery: 300 * time.Millisecond})
		}()
		time.Sleep(time.Second)
		restartedAt := time.Now()
		if code := a.agent.stop(10 * time.Second); code != 0 {
			t.Fatalf("agent exit status %d", code)
		}
		if _, err := os.Stat(filepath.Join(a.dir, "join-token")); !os.IsNotExist(err) {
			t.Fatal("token file still there")
		}
		a.agent = startProc(top, "agent vm-a (restarted)", a.dir, nil, bin, "agent", "-c", "agent.yaml")
		eventually(t, 15*time.Second, "renewal after restart", func() bool {
			var certs []citadel.CertInfo
			adm.do("GET", "/ca/certs?identity="+echoID+"&all=true", nil, &certs)
			for _, c := range certs {
				if c.Issued.After(restartedAt) && strings.HasPrefix(c.Authenticator, "client-cert") {
					return true
				}
			}
			return false
		})
		if !a.agent.out.Contains("using the stored certificate") {
			t.Errorf("restarted agent did not start from its stored certificate:\n%s", a.agent.out.String())
		}
		res := <-loadDone
		if res.Failed > 0 {
			t.Fatalf("%d of %d RPCs failed across the agent restart: %v", res.Failed, res.OK+res.Failed, res.Errors)
		}
		if _, ok := adm.workload("shop/echo-vm"); !ok {
			t.Fatal("echo-vm deregistered across a restart shorter than the grace period")
		}
	})

	t.Run("deregistered after the grace period", func(t *testing.T) {
		killed := time.Now() // meshd sees the stream end after this
		a.agent.kill()       // SIGKILL: no goodbye
		t.Logf("agent killed at %s", killed.Format("15:04:05.000"))
		time.Sleep(grace / 2)
		if _, ok := adm.workload("shop/echo-vm"); !ok {
			t.Fatalf("removed %s after the agent died, before the %s grace period", time.Since(killed), grace)
		}
		eventually(t, grace+10*time.Second, "echo-vm deregistered", func() bool {
			_, ok := adm.workload("shop/echo-vm")
			return !ok
		})
		if gone := time.Since(killed); gone < grace {
			t.Fatalf("removed after %s, before the grace period", gone)
		}
		// No endpoint: traffic stops.
		eventually(t, 10*time.Second, "traffic stops", func() bool {
			res := cl.run(loadCmd{Target: target, N: 1, Timeout: time.Second})
			return res.Failed == 1
		})
	})
	if t.Failed() {
		var z []byte
		adm.do("GET", "/debug/autoregisterz", nil, &z)
		t.Logf("autoregisterz: %s", z)
	}
}
