package pilot

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
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	_ "google.golang.org/grpc/xds" // the xds:/// resolver and balancers
)

// The end-to-end tests run real grpc-go clients. grpc-go reads its xDS
// bootstrap (GRPC_XDS_BOOTSTRAP_CONFIG) once, at package init, so a client
// with a bootstrap pointing at the test's xDS server must be a new
// process: the test binary re-executes itself with envChild set and talks
// to the child over stdin/stdout, one JSON command and one JSON result per
// line. Backends run in the parent, where the test can change how they
// behave.
const envChild = "PILOT_E2E_CHILD"

// Methods the echo backends serve (any method works; these two let routes
// match on the path).
const (
	methodCall  = "/meshd.test.Echo/Call"
	methodOther = "/meshd.test.Echo/Other"
)

// rpcBatch asks the child to make RPCs.
type rpcBatch struct {
	Target string `json:"target"` // xds:///host:port
	Method string `json:"method"`
	N      int    `json:"n"`
	// Concurrency is how many RPCs run at once (default 16).
	Concurrency int               `json:"concurrency,omitempty"`
	Headers     map[string]string `json:"headers,omitempty"`
	// SeqHeader, when set, is sent with a unique value per RPC.
	SeqHeader string `json:"seqHeader,omitempty"`
	// Timeout is each RPC's deadline (default 5s).
	Timeout time.Duration `json:"timeout,omitempty"`
	// WaitForReady makes RPCs wait for a ready backend instead of failing
	// fast, for warming up a channel.
	WaitForReady bool `json:"waitForReady,omitempty"`
}

// rpcResult is what a batch did.
type rpcResult struct {
	// Backends counts successful RPCs by the backend that answered.
	Backends map[string]int `json:"backends"`
	// Codes counts RPCs by status code name.
	Codes map[string]int `json:"codes"`
	// Millis are the RPCs' durations, in the order they finished.
	Millis    []float64 `json:"millis"`
	FirstErr  string    `json:"firstErr,omitempty"`
	ChildFail string    `json:"childFail,omitempty"`
}

func (r rpcResult) share(backend string) float64 {
	total := 0
	for _, n := range r.Codes {
		total += n
	}
	if total == 0 {
		return 0
	}
	return float64(r.Backends[backend]) / float64(total)
}

// runChild is the child's main: it answers batches until stdin closes.
func runChild() int {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := json.NewEncoder(os.Stdout)
	conns := map[string]*grpc.ClientConn{}
	defer func() {
		for _, cc := range conns {
			cc.Close()
		}
	}()
	for in.Scan() {
		var b rpcBatch
		if err := json.Unmarshal(in.Bytes(), &b); err != nil {
			fmt.Fprintln(os.Stderr, "child: bad command:", err)
			return 2
		}
		cc := conns[b.Target]
		if cc == nil {
			var err error
			cc, err = grpc.NewClient(b.Target, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				_ = out.Encode(rpcResult{ChildFail: err.Error()})
				continue
			}
			conns[b.Target] = cc
		}
		if err := out.Encode(b.run(cc)); err != nil {
			return 2
		}
	}
	return 0
}

var seq atomic.Int64

func (b rpcBatch) run(cc *grpc.ClientConn) rpcResult {
	res := rpcResult{Backends: map[string]int{}, Codes: map[string]int{}}
	if b.Concurrency <= 0 {
		b.Concurrency = 16
	}
	if b.Timeout <= 0 {
		b.Timeout = 5 * time.Second
	}
	var mu sync.Mutex
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(b.Concurrency, b.N) {
		wg.Go(func() {
			for range work {
				md := metadata.New(b.Headers)
				if b.SeqHeader != "" {
					md.Set(b.SeqHeader, strconv.FormatInt(seq.Add(1), 10))
				}
				ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), md), b.Timeout)
				var resp wrapperspb.StringValue
				start := time.Now()
				err := cc.Invoke(ctx, b.Method, wrapperspb.String("hi"), &resp, grpc.WaitForReady(b.WaitForReady))
				took := time.Since(start)
				cancel()
				mu.Lock()
				res.Millis = append(res.Millis, float64(took.Microseconds())/1000)
				res.Codes[status.Code(err).String()]++
				if err == nil {
					res.Backends[resp.GetValue()]++
				} else if res.FirstErr == "" {
					res.FirstErr = err.Error()
				}
				mu.Unlock()
			}
		})
	}
	for i := range b.N {
		work <- i
	}
	close(work)
	wg.Wait()
	return res
}

// client is a grpc-go child process with its own xDS bootstrap.
type client struct {
	t      *testing.T
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Scanner
	stderr *bytes.Buffer
	mu     sync.Mutex
}

// newClient starts a child whose bootstrap points at xdsAddr, as a
// proxyless client in namespace ns.
func newClient(t *testing.T, xdsAddr, ns string) *client {
	t.Helper()
	return newLabelledClient(t, xdsAddr, ns, "", nil)
}

// newLabelledClient is newClient for a client whose node metadata carries
// workload labels (LABELS); name tells its node ID from other clients'.
func newLabelledClient(t *testing.T, xdsAddr, ns, name string, labels map[string]string) *client {
	t.Helper()
	meta := map[string]any{"NAMESPACE": ns, "GENERATOR": "grpc"}
	if labels != nil {
		meta["LABELS"] = labels
	}
	id := "e2e-client-" + strconv.Itoa(os.Getpid())
	if name != "" {
		id += "-" + name
	}
	bootstrap, err := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      xdsAddr,
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": []any{"xds_v3"},
		}},
		"node": map[string]any{
			"id":       id,
			"metadata": meta,
			"locality": map[string]any{"region": "local", "zone": "a"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=1", "GRPC_XDS_BOOTSTRAP_CONFIG="+string(bootstrap),
		"GRPC_GO_LOG_SEVERITY_LEVEL=error")
	c := &client{t: t, cmd: cmd, stderr: &bytes.Buffer{}}
	cmd.Stderr = &lockedWriter{w: c.stderr, mu: &c.mu}
	if c.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.out = bufio.NewScanner(stdout)
	c.out.Buffer(make([]byte, 4<<20), 4<<20)
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
			t.Logf("client stderr:\n%s", c.stderr.String())
			c.mu.Unlock()
		}
	})
	return c
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// run sends a batch and waits for its result.
func (c *client) run(b rpcBatch) rpcResult {
	c.t.Helper()
	if b.Method == "" {
		b.Method = methodCall
	}
	line, _ := json.Marshal(b)
	if _, err := c.in.Write(append(line, '\n')); err != nil {
		c.t.Fatalf("send to client: %v", err)
	}
	got := make(chan bool, 1)
	go func() { got <- c.out.Scan() }()
	select {
	case ok := <-got:
		if !ok {
			c.t.Fatalf("client exited: %v", c.out.Err())
		}
	case <-time.After(60 * time.Second):
		c.t.Fatal("client did not answer within 60s")
	}
	var r rpcResult
	if err := json.Unmarshal(c.out.Bytes(), &r); err != nil {
		c.t.Fatalf("client answer %q: %v", c.out.Bytes(), err)
	}
	if r.ChildFail != "" {
		c.t.Fatalf("client: %s", r.ChildFail)
	}
	return r
}

// backend is a real gRPC server on 127.0.0.1 that answers any method with
// its name, and can fail or stall on demand.
type backend struct {
	name string
	port uint32
	srv  *grpc.Server

	calls atomic.Int64
	// failCode, when not OK, fails every call with it.
	failCode atomic.Uint32
	// delay stalls every call.
	delay atomic.Int64
	// failFirst fails the first n attempts of each x-request-id with
	// UNAVAILABLE.
	failFirst atomic.Int64

	mu       sync.Mutex
	attempts map[string]int
}

func newBackend(t *testing.T, name string) *backend {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, port: uint32(lis.Addr().(*net.TCPAddr).Port), attempts: map[string]int{}}
	b.srv = grpc.NewServer(grpc.UnknownServiceHandler(b.handle))
	done := make(chan struct{})
	go func() { defer close(done); _ = b.srv.Serve(lis) }()
	t.Cleanup(func() { b.srv.Stop(); <-done })
	return b
}

func (b *backend) handle(_ any, stream grpc.ServerStream) error {
	b.calls.Add(1)
	var req wrapperspb.StringValue
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	if d := time.Duration(b.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
	if c := codes.Code(b.failCode.Load()); c != codes.OK {
		return status.Errorf(c, "%s fails", b.name)
	}
	if n := b.failFirst.Load(); n > 0 {
		md, _ := metadata.FromIncomingContext(stream.Context())
		id := ""
		if v := md.Get("x-request-id"); len(v) > 0 {
			id = v[0]
		}
		b.mu.Lock()
		b.attempts[id]++
		attempt := b.attempts[id]
		b.mu.Unlock()
		if attempt <= int(n) {
			return status.Errorf(codes.Unavailable, "%s fails attempt %d of %s", b.name, attempt, id)
		}
	}
	return stream.SendMsg(wrapperspb.String(b.name))
}

// attemptCounts returns how many attempts each request id took, sorted.
func (b *backend) attemptCounts() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]int, 0, len(b.attempts))
	for _, n := range b.attempts {
		out = append(out, n)
	}
	sort.Ints(out)
	return out
}
