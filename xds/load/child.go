package load

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/server"
)

// Server implementations the child can run.
const (
	ImplMeshd    = "meshd"
	ImplBaseline = "baseline"
)

// ChildOptions configure the server process.
type ChildOptions struct {
	Impl     string
	Services int
	Big      int // endpoints of service 0
	// Debounce of meshd's server (the module defaults when zero).
	DebounceQuiet, DebounceMax time.Duration
}

// Stats are the server process's counters, read over the control port.
type Stats struct {
	CPUSeconds  float64 `json:"cpuSeconds"` // user+system, getrusage(RUSAGE_SELF)
	RSSBytes    int64   `json:"rssBytes"`   // VmRSS
	HeapInuse   uint64  `json:"heapInuse"`  // after runtime.GC when asked
	HeapAlloc   uint64  `json:"heapAlloc"`
	BytesSent   int64   `json:"bytesSent"` // on xDS connections
	BytesRecv   int64   `json:"bytesRecv"`
	Goroutines  int     `json:"goroutines"`
	Connections int64   `json:"connections"`
}

// RunChild runs the xDS server process until ctx ends or /quit is called.
// It prints "READY <xds address> <control address>" on out once serving.
func RunChild(ctx context.Context, o ChildOptions, out io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m := NewModel(o.Services, o.Big)
	xlis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	cl := &countingListener{Listener: xlis}
	ctl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}

	var g *grpc.Server
	var push func(kind string)
	var wg sync.WaitGroup
	switch o.Impl {
	case ImplMeshd:
		srv := server.New(server.Options{
			DebounceQuiet: o.DebounceQuiet, DebounceMax: o.DebounceMax, MaxStreams: 1 << 20,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
		for _, url := range []string{api.ClusterType, api.EndpointType, api.ListenerType, api.RouteType} {
			if err := srv.RegisterGenerator(url, &modelGen{m: m, url: url}); err != nil {
				return err
			}
		}
		g = srv.NewGRPCServer(nil)
		wg.Go(func() { _ = srv.Run(ctx) })
		push = func(kind string) {
			if kind == "endpoint" {
				srv.Push(api.EndpointPush("load", ClusterName(0)))
			} else {
				srv.Push(api.FullPush("load"))
			}
		}
	case ImplBaseline:
		b := newBaseline(ctx, m)
		g = grpc.NewServer(grpc.MaxConcurrentStreams(100), grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}))
		discovery.RegisterAggregatedDiscoveryServiceServer(g, b.srv)
		push = func(string) { b.setAll() }
	default:
		return fmt.Errorf("unknown server implementation %q (want %s or %s)", o.Impl, ImplMeshd, ImplBaseline)
	}
	wg.Go(func() { _ = g.Serve(cl) })

	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("gc") == "1" {
			runtime.GC()
			debug.FreeOSMemory()
			// MESHLOAD_HEAPPROFILE keeps the latest heap profile taken at a
			// memory measurement, for finding what a proxy costs.
			if path := os.Getenv("MESHLOAD_HEAPPROFILE"); path != "" {
				if f, err := os.Create(path + "." + o.Impl); err == nil {
					_ = pprof.WriteHeapProfile(f)
					f.Close()
				}
			}
		}
		_ = json.NewEncoder(w).Encode(readStats(cl))
	})
	mux.HandleFunc("POST /push", func(w http.ResponseWriter, r *http.Request) {
		kind := r.URL.Query().Get("kind")
		if kind == "endpoint" {
			m.MoveEndpoint()
		} else {
			m.Bump()
		}
		push(kind)
	})
	// MESHLOAD_OPSPROFILE profiles the server over the measured ops only
	// (the driver calls these around them).
	var prof *os.File
	mux.HandleFunc("POST /profile/start", func(http.ResponseWriter, *http.Request) {
		if path := os.Getenv("MESHLOAD_OPSPROFILE"); path != "" && prof == nil {
			if f, err := os.Create(path + "." + o.Impl); err == nil && pprof.StartCPUProfile(f) == nil {
				prof = f
			}
		}
	})
	mux.HandleFunc("POST /profile/stop", func(http.ResponseWriter, *http.Request) {
		if prof != nil {
			pprof.StopCPUProfile()
			prof.Close()
			prof = nil
		}
	})
	mux.HandleFunc("POST /quit", func(http.ResponseWriter, *http.Request) { cancel() })
	hs := &http.Server{Handler: mux}
	wg.Go(func() { _ = hs.Serve(ctl) })
	fmt.Fprintf(out, "READY %s %s\n", xlis.Addr(), ctl.Addr())
	<-ctx.Done()
	_ = hs.Close()
	g.Stop()
	wg.Wait()
	return nil
}

func readStats(cl *countingListener) Stats {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return Stats{
		CPUSeconds: tvSeconds(ru.Utime) + tvSeconds(ru.Stime),
		RSSBytes:   rss(),
		HeapInuse:  ms.HeapInuse, HeapAlloc: ms.HeapAlloc,
		BytesSent: cl.sent.Load(), BytesRecv: cl.recv.Load(),
		Goroutines: runtime.NumGoroutine(), Connections: cl.conns.Load(),
	}
}

func tvSeconds(tv syscall.Timeval) float64 { return float64(tv.Sec) + float64(tv.Usec)/1e6 }

// rss returns VmRSS from /proc/self/status (0 where there is no /proc).
func rss() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// countingListener counts bytes on accepted connections: the wire bytes
// (HTTP/2 frames included) the server sent and received.
type countingListener struct {
	net.Listener
	sent, recv, conns atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.conns.Add(1)
	return &countingConn{Conn: c, l: l}, nil
}

type countingConn struct {
	net.Conn
	l *countingListener
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.l.recv.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.l.sent.Add(int64(n))
	return n, err
}

func (c *countingConn) Close() error {
	c.l.conns.Add(-1)
	return c.Conn.Close()
}

// modelGen serves the model to meshd's server: one group for every proxy.
type modelGen struct {
	m   *Model
	url string
}

func (g *modelGen) Key(*api.Proxy) string { return "" }

func (g *modelGen) Generate(_ context.Context, req api.GenerateRequest) ([]api.Resource, error) {
	n, eps, big, gen, epGen := g.m.state()
	var out []api.Resource
	switch g.url {
	case api.ClusterType:
		for i := range n {
			out = append(out, api.Resource{Name: ClusterName(i), Message: Cluster(i, gen)})
		}
	case api.EndpointType:
		want := func(int) bool { return true }
		if req.Names != nil {
			set := map[string]bool{}
			for _, name := range req.Names {
				set[name] = true
			}
			want = func(i int) bool { return set[ClusterName(i)] }
		}
		for i := range n {
			if !want(i) {
				continue
			}
			k := eps
			if i == 0 {
				k = big
			}
			out = append(out, api.Resource{Name: ClusterName(i), Message: LoadAssignment(i, k, epGen)})
		}
	case api.ListenerType:
		out = append(out, api.Resource{Name: ListenerName, Message: Listener()})
	case api.RouteType:
		out = append(out, api.Resource{Name: RouteName, Message: Routes(n)})
	}
	return out, nil
}

// baseline is go-control-plane's SnapshotCache with one snapshot per node,
// the usual way to use it: a node gets its snapshot when it first asks,
// and every push sets a new snapshot for every node.
type baseline struct {
	ctx     context.Context
	m       *Model
	sc      cache.SnapshotCache
	srv     serverv3.Server
	mu      sync.Mutex
	nodes   map[string]bool
	version int
	res     map[resource.Type][]types.Resource
}

func newBaseline(ctx context.Context, m *Model) *baseline {
	b := &baseline{ctx: ctx, m: m, nodes: map[string]bool{}}
	// ads=false: with ads=true the cache never answers a request that does
	// not name every resource of the type (see docs/benchmarks.md).
	b.sc = cache.NewSnapshotCache(false, cache.IDHash{}, nil)
	b.rebuild()
	onNode := func(id string) {
		b.mu.Lock()
		defer b.mu.Unlock()
		if !b.nodes[id] {
			b.nodes[id] = true
			b.setLocked(id)
		}
	}
	b.srv = serverv3.NewServer(ctx, b.sc, serverv3.CallbackFuncs{
		StreamRequestFunc:      func(_ int64, r *discovery.DiscoveryRequest) error { onNode(r.GetNode().GetId()); return nil },
		StreamDeltaRequestFunc: func(_ int64, r *discovery.DeltaDiscoveryRequest) error { onNode(r.GetNode().GetId()); return nil },
	})
	return b
}

func (b *baseline) rebuild() {
	c, e, l, r := b.m.Resources()
	conv := func(in []NamedMessage) []types.Resource {
		out := make([]types.Resource, len(in))
		for i, nm := range in {
			out[i] = nm.Msg
		}
		return out
	}
	b.version++
	b.res = map[resource.Type][]types.Resource{
		resource.ClusterType: conv(c), resource.EndpointType: conv(e),
		resource.ListenerType: conv(l), resource.RouteType: conv(r),
	}
}

func (b *baseline) setLocked(node string) {
	snap, err := cache.NewSnapshot(strconv.Itoa(b.version), b.res)
	if err == nil {
		err = b.sc.SetSnapshot(b.ctx, node, snap)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "baseline:", err)
	}
}

// setAll rebuilds the resources once and sets a new snapshot per node.
func (b *baseline) setAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rebuild()
	for id := range b.nodes {
		b.setLocked(id)
	}
}
