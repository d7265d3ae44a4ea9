package platforms

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	_ "google.golang.org/grpc/xds" // the xds:/// resolver
)

// grpc-go reads its xDS bootstrap once per process, so the client is this
// test binary re-executed with envChild and GRPC_XDS_BOOTSTRAP_CONFIG set.
// It takes one JSON batch per stdin line and answers one JSON result per
// stdout line. Backends live in the parent.
const envChild = "MESHD_PLATFORMS_CHILD"

const method = "/meshd.test.Echo/Call"

type batch struct {
	Target       string        `json:"target"`
	N            int           `json:"n"`
	Timeout      time.Duration `json:"timeout,omitempty"`
	WaitForReady bool          `json:"waitForReady,omitempty"`
}

type result struct {
	Backends  map[string]int `json:"backends"`
	Codes     map[string]int `json:"codes"`
	FirstErr  string         `json:"firstErr,omitempty"`
	ChildFail string         `json:"childFail,omitempty"`
}

func runChild() int {
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	conns := map[string]*grpc.ClientConn{}
	defer func() {
		for _, cc := range conns {
			cc.Close()
		}
	}()
	for in.Scan() {
		var b batch
		if err := json.Unmarshal(in.Bytes(), &b); err != nil {
			return 2
		}
		cc := conns[b.Target]
		if cc == nil {
			var err error
			if cc, err = grpc.NewClient(b.Target, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(dialTestNet)); err != nil {
				_ = out.Encode(result{ChildFail: err.Error()})
				continue
			}
			conns[b.Target] = cc
		}
		r := result{Backends: map[string]int{}, Codes: map[string]int{}}
		if b.Timeout == 0 {
			b.Timeout = 5 * time.Second
		}
		for range b.N {
			ctx, cancel := context.WithTimeout(context.Background(), b.Timeout)
			var resp wrapperspb.StringValue
			err := cc.Invoke(ctx, method, wrapperspb.String("hi"), &resp, grpc.WaitForReady(b.WaitForReady))
			cancel()
			r.Codes[status.Code(err).String()]++
			if err == nil {
				r.Backends[resp.GetValue()]++
			} else if r.FirstErr == "" {
				r.FirstErr = err.Error()
			}
		}
		if err := out.Encode(r); err != nil {
			return 2
		}
	}
	return 0
}

// testNet stands in for 127.0.0.1 in Kubernetes: the API server refuses
// loopback addresses in EndpointSlices, so the Kubernetes tests publish
// their backends (which listen on 127.0.0.1 only) under TEST-NET-1,
// 192.0.2.0/24, a range that is never routed, and the client's dialer
// connects to 127.0.0.1 on the same port instead. Only the socket changes:
// grpc-go still learns every address and port from meshd over xDS.
var testNet = netip.MustParsePrefix("192.0.2.0/24")

// testNetAddr is the address a backend is published under in Kubernetes.
const testNetAddr = "192.0.2.10"

func dialTestNet(ctx context.Context, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if ip, err := netip.ParseAddr(host); err == nil && testNet.Contains(ip) {
		host = "127.0.0.1"
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", net.JoinHostPort(host, port))
}

// client is the grpc-go child.
type client struct {
	t   *testing.T
	in  io.WriteCloser
	out *bufio.Scanner
	mu  sync.Mutex
	err bytes.Buffer
}

func newClient(t *testing.T, xdsAddr, ns string) *client {
	t.Helper()
	bootstrap, _ := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri": xdsAddr, "channel_creds": []any{map[string]any{"type": "insecure"}}, "server_features": []any{"xds_v3"},
		}},
		"node": map[string]any{
			"id":       "platforms-client-" + strconv.Itoa(os.Getpid()),
			"metadata": map[string]any{"NAMESPACE": ns, "GENERATOR": "grpc"},
		},
	})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=1", "GRPC_XDS_BOOTSTRAP_CONFIG="+string(bootstrap), "GRPC_GO_LOG_SEVERITY_LEVEL=error")
	c := &client{t: t}
	cmd.Stderr = writerFunc(func(p []byte) (int, error) { c.mu.Lock(); defer c.mu.Unlock(); return c.err.Write(p) })
	var err error
	if c.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.out = bufio.NewScanner(stdout)
	c.out.Buffer(make([]byte, 1<<20), 1<<20)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.in.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			c.mu.Lock()
			t.Logf("client stderr:\n%s", c.err.String())
			c.mu.Unlock()
		}
	})
	return c
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func (c *client) run(b batch) result {
	c.t.Helper()
	line, _ := json.Marshal(b)
	if _, err := c.in.Write(append(line, '\n')); err != nil {
		c.t.Fatalf("client: %v", err)
	}
	got := make(chan bool, 1)
	go func() { got <- c.out.Scan() }()
	select {
	case ok := <-got:
		if !ok {
			c.t.Fatalf("client exited: %v", c.out.Err())
		}
	case <-time.After(90 * time.Second):
		c.t.Fatal("client did not answer within 90s")
	}
	var r result
	if err := json.Unmarshal(c.out.Bytes(), &r); err != nil {
		c.t.Fatal(err)
	}
	if r.ChildFail != "" {
		c.t.Fatalf("client: %s", r.ChildFail)
	}
	return r
}

// warm makes RPCs that wait for a ready backend until one answers.
func (c *client) warm(t *testing.T, target string) {
	t.Helper()
	r := c.run(batch{Target: target, N: 1, WaitForReady: true, Timeout: 30 * time.Second})
	if r.Codes["OK"] != 1 {
		t.Fatalf("first RPC to %s: %v %s", target, r.Codes, r.FirstErr)
	}
}

// until runs batches of n RPCs until all of one batch go to want, or the
// timeout passes; it returns how long that took.
func (c *client) until(t *testing.T, target string, n int, timeout time.Duration, want ...string) time.Duration {
	t.Helper()
	start := time.Now()
	var last result
	for time.Since(start) < timeout {
		last = c.run(batch{Target: target, N: n, Timeout: 2 * time.Second})
		sum := 0
		for _, w := range want {
			sum += last.Backends[w]
		}
		if sum == n {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: RPCs did not all reach %v within %s; last batch %v %v (%s)", target, want, timeout, last.Backends, last.Codes, last.FirstErr)
	return 0
}

// backend is a gRPC server on 127.0.0.1 answering any method with its name.
type backend struct {
	name  string
	port  int
	calls atomic.Int64
}

func newBackend(t *testing.T, name string) *backend {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, port: lis.Addr().(*net.TCPAddr).Port}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, s grpc.ServerStream) error {
		b.calls.Add(1)
		var req wrapperspb.StringValue
		if err := s.RecvMsg(&req); err != nil {
			return err
		}
		return s.SendMsg(wrapperspb.String(b.name))
	}))
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return b
}

func (b *backend) String() string { return fmt.Sprintf("%s@%d", b.name, b.port) }
