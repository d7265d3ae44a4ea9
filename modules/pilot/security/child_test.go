package security_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The end-to-end tests run real grpc-go: an xDS-enabled server
// (xds.NewGRPCServer with xDS server credentials) and xDS clients (xDS
// client credentials, dialing xds:///), each in a child process because
// grpc-go reads its bootstrap (GRPC_XDS_BOOTSTRAP_CONFIG) once, at init.
// The test binary re-executes itself with envChild set; children talk
// JSON lines over stdin and stdout.
const envChild = "SECURITY_E2E_CHILD"

// Child settings, by environment.
const (
	envListen = "SECURITY_E2E_LISTEN" // server: address to listen on
	envSource = "SECURITY_E2E_SOURCE" // client: source address to dial from
)

// Methods the echo server serves (any method works).
const (
	methodCall  = "/meshd.test.Echo/Call"
	methodOther = "/meshd.test.Echo/Other"
)

// runServerChild serves every method, answering with the caller's
// identity ("plaintext" without TLS), and reports serving mode changes
// as "mode SERVING" / "mode NOT_SERVING" lines until stdin closes.
func runServerChild() int {
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "server creds:", err)
		return 2
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	srv, err := xds.NewGRPCServer(grpc.Creds(creds), grpc.UnknownServiceHandler(echo),
		xds.ServingModeCallback(func(_ net.Addr, args xds.ServingModeChangeArgs) {
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(out, "mode %s %v\n", strings.ToUpper(args.Mode.String()), args.Err)
			out.Flush()
		}))
	if err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		return 2
	}
	lis, err := net.Listen("tcp", os.Getenv(envListen))
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		return 2
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	_, _ = io.Copy(io.Discard, os.Stdin)
	srv.Stop()
	<-done
	return 0
}

func echo(_ any, stream grpc.ServerStream) error {
	var req wrapperspb.StringValue
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	who := "plaintext"
	if p, ok := peer.FromContext(stream.Context()); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			who = "tls"
			if ti.SPIFFEID != nil {
				who = ti.SPIFFEID.String()
			}
		}
	}
	return stream.SendMsg(wrapperspb.String(who))
}

// call asks a client child to make RPCs.
type call struct {
	Target  string        `json:"target"`
	Method  string        `json:"method"`
	N       int           `json:"n"`
	Timeout time.Duration `json:"timeout,omitempty"`
	// WaitForReady waits for a ready connection instead of failing fast.
	WaitForReady bool `json:"waitForReady,omitempty"`
}

// result counts outcomes: status code names, and for successful RPCs what
// the server answered (the client identity it saw).
type result struct {
	Codes     map[string]int `json:"codes"`
	Answers   map[string]int `json:"answers"`
	FirstErr  string         `json:"firstErr,omitempty"`
	ChildFail string         `json:"childFail,omitempty"`
}

func (r result) only(code codes.Code) bool {
	return len(r.Codes) == 1 && r.Codes[code.String()] > 0
}

// runClientChild answers calls until stdin closes, keeping one channel per
// target, so later calls run on connections earlier ones opened.
func runClientChild() int {
	in := bufio.NewScanner(os.Stdin)
	enc := json.NewEncoder(os.Stdout)
	conns := map[string]*grpc.ClientConn{}
	defer func() {
		for _, cc := range conns {
			cc.Close()
		}
	}()
	for in.Scan() {
		var c call
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			fmt.Fprintln(os.Stderr, "bad command:", err)
			return 2
		}
		cc := conns[c.Target]
		if cc == nil {
			var err error
			cc, err = dialFrom(c.Target, os.Getenv(envSource), true)
			if err != nil {
				_ = enc.Encode(result{ChildFail: err.Error()})
				continue
			}
			conns[c.Target] = cc
		}
		if err := enc.Encode(c.run(cc)); err != nil {
			return 2
		}
	}
	return 0
}

// dialFrom makes a channel whose connections leave from source (a
// loopback address), with xDS client credentials (mTLS where the
// cluster says so, plaintext otherwise) or plain insecure ones.
func dialFrom(target, source string, xdsCreds bool) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if xdsCreds {
		var err error
		if creds, err = xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()}); err != nil {
			return nil, err
		}
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if source != "" {
		local := &net.TCPAddr{IP: net.ParseIP(source)}
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: local}
			return d.DialContext(ctx, "tcp", addr)
		}))
	}
	return grpc.NewClient(target, opts...)
}

func (c call) run(cc *grpc.ClientConn) result {
	r := result{Codes: map[string]int{}, Answers: map[string]int{}}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	for range max(c.N, 1) {
		ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
		var resp wrapperspb.StringValue
		err := cc.Invoke(ctx, c.Method, wrapperspb.String("hi"), &resp, grpc.WaitForReady(c.WaitForReady))
		cancel()
		r.Codes[status.Code(err).String()]++
		if err == nil {
			r.Answers[resp.GetValue()]++
		} else if r.FirstErr == "" {
			r.FirstErr = err.Error()
		}
	}
	return r
}

// child is a running child process.
type child struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	in     io.WriteCloser
	lines  chan string
	stderr *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startChild runs the test binary as a child of kind ("server",
// "client") with the bootstrap and extra environment.
func startChild(t *testing.T, kind, name string, bootstrap []byte, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+kind, "GRPC_XDS_BOOTSTRAP_CONFIG="+string(bootstrap), "GRPC_GO_LOG_SEVERITY_LEVEL=error")
	cmd.Env = append(cmd.Env, env...)
	c := &child{t: t, name: name, cmd: cmd, lines: make(chan string, 64), stderr: &lockedBuffer{}}
	cmd.Stderr = c.stderr
	var err error
	if c.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		c.in.Close()
		waited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-waited
		}
		for range c.lines { // drain, so the reader ends
		}
		<-readDone
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, c.stderr.String())
		}
	})
	return c
}

// next returns the child's next stdout line.
func (c *child) next(timeout time.Duration) (string, bool) {
	select {
	case l, ok := <-c.lines:
		return l, ok
	case <-time.After(timeout):
		return "", false
	}
}

// run sends a call to a client child and returns its result.
func (c *child) run(x call) result {
	c.t.Helper()
	if x.Method == "" {
		x.Method = methodCall
	}
	b, _ := json.Marshal(x)
	if _, err := c.in.Write(append(b, '\n')); err != nil {
		c.t.Fatalf("%s: %v", c.name, err)
	}
	line, ok := c.next(60 * time.Second)
	if !ok {
		c.t.Fatalf("%s did not answer", c.name)
	}
	var r result
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		c.t.Fatalf("%s answered %q: %v", c.name, line, err)
	}
	if r.ChildFail != "" {
		c.t.Fatalf("%s: %s", c.name, r.ChildFail)
	}
	return r
}

// bootstrapFor is a proxyless workload's gRPC bootstrap, shaped like the
// agent's: meshd's xDS server, the node's identity and metadata, and the
// certificate provider instance "default" (file_watcher) on the
// workload's certificate files.
func bootstrapFor(t *testing.T, xdsAddr, id string, metadata map[string]any, certDir string) []byte {
	t.Helper()
	metadata["GENERATOR"] = "grpc"
	b, err := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      xdsAddr,
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": []any{"xds_v3"},
		}},
		"node": map[string]any{"id": id, "metadata": metadata},
		"certificate_providers": map[string]any{"default": map[string]any{
			"plugin_name": "file_watcher",
			"config": map[string]any{
				"certificate_file":    filepath.Join(certDir, "cert-chain.pem"),
				"private_key_file":    filepath.Join(certDir, "key.pem"),
				"ca_certificate_file": filepath.Join(certDir, "root-cert.pem"),
				"refresh_interval":    "1s",
			},
		}},
		"server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%s",
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
