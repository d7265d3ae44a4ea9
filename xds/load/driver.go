package load

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshd/meshd/xds/api"
)

// Options choose scenarios and sizes. Zero values take the documented
// defaults (the sizes of the targets in docs/benchmarks.md).
type Options struct {
	// Impls to run: meshd and/or baseline (default both).
	Impls []string
	// Scenarios: full-push, eds-delta, storm (default all).
	Scenarios []string

	// full-push: FullPushProxies proxies (1000) on state-of-the-world CDS,
	// Services clusters (1000), Pushes pushes (3).
	FullPushProxies, Services, Pushes int
	// eds-delta: DeltaProxies (2000) on delta EDS, for each size in
	// EDSServices (1000, 10000); Changes endpoint changes (20). Service 0
	// has BigService endpoints (100), the others one.
	DeltaProxies, Changes, BigService int
	EDSServices                       []int
	// storm: proxies that connect at once and subscribe like an Envoy
	// sidecar (CDS, EDS by name, LDS, RDS). StormBatches are connected one
	// batch after the other in one server (default 1000, 1000: memory at
	// 1,000 and 2,000 proxies, and the per-proxy slope); StormAtOnce in a
	// fresh server (default 2000; negative skips it).
	StormBatches []int
	StormAtOnce  int
	// StormDelta makes the storm proxies speak delta xDS (same
	// subscriptions) instead of state of the world.
	StormDelta bool
	// BaselineMaxServices skips baseline eds-delta runs above this size
	// (default 1000): its per-node snapshots hash every resource per node
	// per change, which at 10,000 services takes minutes per change.
	BaselineMaxServices int
	// BaselineChanges limits the baseline's eds-delta changes (default 3),
	// and BaselineDeltaProxies its proxies (default 400): every change
	// makes it hash every resource of every node's snapshot, about 50 ms
	// of CPU per proxy per change at 1,000 services, so 2,000 proxies
	// take minutes per change (set 2000 to measure it anyway).
	BaselineChanges, BaselineDeltaProxies int
	// Timeout bounds each measured phase (default 120 s).
	Timeout time.Duration
	// Exe runs the server child (default: this executable, "child"
	// subcommand). InProcess runs it in this process instead (tests; CPU
	// and memory figures then include the driver).
	Exe       string
	InProcess bool
	// Log receives progress lines.
	Log io.Writer
}

func (o *Options) defaults() {
	if len(o.Impls) == 0 {
		o.Impls = []string{ImplMeshd, ImplBaseline}
	}
	if len(o.Scenarios) == 0 {
		o.Scenarios = []string{"full-push", "eds-delta", "storm"}
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.FullPushProxies, 1000)
	def(&o.Services, 1000)
	def(&o.Pushes, 3)
	def(&o.DeltaProxies, 2000)
	def(&o.Changes, 20)
	def(&o.BigService, 100)
	if o.StormAtOnce == 0 {
		o.StormAtOnce = 2000
	}
	def(&o.BaselineMaxServices, 1000)
	def(&o.BaselineChanges, 3)
	def(&o.BaselineDeltaProxies, 400)
	if len(o.EDSServices) == 0 {
		o.EDSServices = []int{1000, 10000}
	}
	if len(o.StormBatches) == 0 {
		o.StormBatches = []int{1000, 1000}
	}
	if o.Timeout <= 0 {
		o.Timeout = 120 * time.Second
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
}

// Result is one scenario's figures for one server implementation.
type Result struct {
	Scenario string `json:"scenario"`
	Impl     string `json:"impl"`
	Services int    `json:"services"`
	Proxies  int    `json:"proxies"`
	Protocol string `json:"protocol"`
	Ops      int    `json:"ops"` // pushes, changes or batches measured

	// Per op: wall from the trigger to the last proxy's ACK (median and
	// best), server CPU seconds (median), bytes the server wrote.
	WallSeconds     float64   `json:"wallSeconds"`
	WallBestSeconds float64   `json:"wallBestSeconds"`
	OpWallSeconds   []float64 `json:"opWallSeconds"` // every op, in order
	CPUSeconds      float64   `json:"cpuSeconds"`
	BytesSent       int64     `json:"bytesSent"`
	// Latency percentiles over every proxy and op (trigger to ACK).
	P50Millis float64 `json:"p50Millis"`
	P99Millis float64 `json:"p99Millis"`
	MaxMillis float64 `json:"maxMillis"`
	// Server memory after the run, after a forced GC.
	RSSBytes  int64  `json:"rssBytes"`
	HeapInuse uint64 `json:"heapInuse"`
	// For storm batches: memory at each cumulative proxy count.
	Memory []MemPoint `json:"memory,omitempty"`
	// DriverCPUSeconds is the simulated proxies' CPU over the measured ops.
	DriverCPUSeconds float64 `json:"driverCpuSeconds"`
	Error            string  `json:"error,omitempty"`
}

// MemPoint is server memory with Proxies connected.
type MemPoint struct {
	Proxies   int    `json:"proxies"`
	RSSBytes  int64  `json:"rssBytes"`
	HeapInuse uint64 `json:"heapInuse"`
}

// Run runs the scenarios, each in a fresh server process.
func Run(ctx context.Context, o Options) ([]Result, error) {
	o.defaults()
	var out []Result
	for _, sc := range o.Scenarios {
		for _, impl := range o.Impls {
			var rs []Result
			switch sc {
			case "full-push":
				rs = []Result{fullPush(ctx, o, impl)}
			case "eds-delta":
				for _, n := range o.EDSServices {
					if impl == ImplBaseline && n > o.BaselineMaxServices {
						rs = append(rs, Result{Scenario: sc, Impl: impl, Services: n, Proxies: o.DeltaProxies, Protocol: "delta",
							Error: fmt.Sprintf("skipped (baseline above %d services; raise -baseline-max-services)", o.BaselineMaxServices)})
						continue
					}
					rs = append(rs, edsDelta(ctx, o, impl, n))
				}
			case "storm":
				rs = storm(ctx, o, impl)
			default:
				return out, fmt.Errorf("unknown scenario %q", sc)
			}
			for _, r := range rs {
				fmt.Fprintf(o.Log, "%s\n", r.line())
			}
			out = append(out, rs...)
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
		}
	}
	return out, nil
}

func (r Result) line() string {
	if r.Error != "" && r.Ops == 0 {
		return fmt.Sprintf("%-9s %-8s svc=%-5d proxies=%-4d %s", r.Scenario, r.Impl, r.Services, r.Proxies, r.Error)
	}
	s := fmt.Sprintf("%-9s %-8s svc=%-5d proxies=%-4d wall=%.3fs (best %.3fs) cpu=%.3fs sent=%.1fMB p50=%.0fms p99=%.0fms rss=%.0fMB heap=%.0fMB driver-cpu=%.2fs",
		r.Scenario, r.Impl, r.Services, r.Proxies, r.WallSeconds, r.WallBestSeconds, r.CPUSeconds, float64(r.BytesSent)/1e6,
		r.P50Millis, r.P99Millis, float64(r.RSSBytes)/1e6, float64(r.HeapInuse)/1e6, r.DriverCPUSeconds)
	if r.Error != "" {
		s += " ERROR: " + r.Error
	}
	return s
}

// child is a running server process (or goroutine, InProcess).
type child struct {
	xds, ctl string
	cmd      *exec.Cmd
	cancel   context.CancelFunc
	done     chan struct{}
	hc       *http.Client
}

func startChild(ctx context.Context, o Options, co ChildOptions) (*child, error) {
	ctx, cancel := context.WithCancel(ctx)
	c := &child{cancel: cancel, done: make(chan struct{}), hc: &http.Client{Timeout: o.Timeout}}
	var out io.Reader
	if o.InProcess {
		pr, pw := io.Pipe()
		out = pr
		go func() {
			defer close(c.done)
			err := RunChild(ctx, co, pw)
			pw.CloseWithError(fmt.Errorf("child ended: %v", err))
		}()
	} else {
		exe := o.Exe
		if exe == "" {
			var err error
			if exe, err = os.Executable(); err != nil {
				cancel()
				return nil, err
			}
		}
		c.cmd = exec.CommandContext(ctx, exe, "child", "-impl", co.Impl, "-services", strconv.Itoa(co.Services), "-big", strconv.Itoa(co.Big))
		c.cmd.Stderr = os.Stderr
		pipe, err := c.cmd.StdoutPipe()
		if err != nil {
			cancel()
			return nil, err
		}
		if err := c.cmd.Start(); err != nil {
			cancel()
			return nil, err
		}
		out = pipe
		go func() { _ = c.cmd.Wait(); close(c.done) }()
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) != 3 || f[0] != "READY" {
		c.stop()
		return nil, fmt.Errorf("server child did not start: %q %v", line, err)
	}
	c.xds, c.ctl = f[1], f[2]
	return c, nil
}

func (c *child) stats(gc bool) (Stats, error) {
	url := "http://" + c.ctl + "/stats"
	if gc {
		url += "?gc=1"
	}
	var s Stats
	resp, err := c.hc.Get(url)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

func (c *child) push(kind string) error {
	resp, err := c.hc.Post("http://"+c.ctl+"/push?kind="+kind, "", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// profile starts or stops the child's CPU profile of the measured ops
// (a no-op unless MESHLOAD_OPSPROFILE is set).
func (c *child) profile(what string) {
	if resp, err := c.hc.Post("http://"+c.ctl+"/profile/"+what, "", nil); err == nil {
		resp.Body.Close()
	}
}

func (c *child) stop() {
	if c.ctl != "" {
		if resp, err := c.hc.Post("http://"+c.ctl+"/quit", "", nil); err == nil {
			resp.Body.Close()
		}
	}
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
	}
	c.cancel()
	<-c.done
}

// fleet is a set of simulated proxies.
type fleet struct {
	tr      tracker
	proxies []*proxy
	wg      sync.WaitGroup
	ctx     context.Context
	cancel  context.CancelFunc
	errMu   sync.Mutex
	errs    int
	lastErr error
	phaseID int32
}

func newFleet(ctx context.Context) *fleet {
	f := &fleet{}
	f.ctx, f.cancel = context.WithCancel(ctx)
	return f
}

// connect dials n more proxies at once and starts them, measuring the
// phase until every new one holds its full config.
func (f *fleet) connect(addr string, n int, p plan, timeout time.Duration) (*phase, error) {
	eds := make([]string, p.services)
	for i := range eds {
		eds[i] = ClusterName(i)
	}
	base := len(f.proxies)
	ph := f.newPhase(base+n, func(px *proxy, _ *liteResp) bool { return px.complete() })
	ps := make([]*proxy, n)
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	for i := range n {
		wg.Go(func() {
			px, err := dialProxy(f.ctx, addr, base+i, p, eds, &f.tr)
			if err == nil {
				err = px.start()
			}
			if err != nil {
				errMu.Lock()
				firstErr = cmpErr(firstErr, err)
				errMu.Unlock()
				return
			}
			ps[i] = px
			f.wg.Go(func() {
				if err := px.run(); err != nil && f.ctx.Err() == nil {
					f.errMu.Lock()
					f.errs++
					f.lastErr = err
					f.errMu.Unlock()
				}
			})
		})
	}
	wg.Wait()
	for _, px := range ps {
		if px != nil {
			f.proxies = append(f.proxies, px)
		}
	}
	if firstErr != nil {
		return ph, firstErr
	}
	return ph, f.wait(ph, n, timeout)
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func (f *fleet) newPhase(size int, pred func(*proxy, *liteResp) bool) *phase {
	f.phaseID++
	ph := &phase{id: f.phaseID, t0: time.Now(), pred: pred, lat: make([]time.Duration, size)}
	f.tr.cur.Store(ph)
	return ph
}

func (f *fleet) wait(ph *phase, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for ph.done.Load() < int64(n) {
		if time.Now().After(deadline) {
			f.errMu.Lock()
			defer f.errMu.Unlock()
			return fmt.Errorf("timeout: %d of %d proxies done after %v (%d stream errors, last %v)", ph.done.Load(), n, timeout, f.errs, f.lastErr)
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

func (f *fleet) close() {
	f.cancel()
	for _, p := range f.proxies {
		p.close()
	}
	f.wg.Wait()
}

// latencies returns the phase's per-proxy latencies that were recorded.
func (ph *phase) latencies() []time.Duration {
	out := make([]time.Duration, 0, len(ph.lat))
	for _, d := range ph.lat {
		if d > 0 {
			out = append(out, d)
		}
	}
	return out
}

func driverCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return tvSeconds(ru.Utime) + tvSeconds(ru.Stime)
}

// op is one measured trigger: wall, server CPU, bytes, driver CPU, latencies.
type op struct {
	wall, cpu, driver float64
	bytes             int64
	lat               []time.Duration
}

// measure triggers a push and waits until every proxy completed pred.
func measure(f *fleet, c *child, kind string, pred func(*proxy, *liteResp) bool, timeout time.Duration) (op, error) {
	s0, err := c.stats(false)
	if err != nil {
		return op{}, err
	}
	d0 := driverCPU()
	ph := f.newPhase(len(f.proxies), pred)
	if err := c.push(kind); err != nil {
		return op{}, err
	}
	err = f.wait(ph, len(f.proxies), timeout)
	lat := ph.latencies()
	wall := time.Since(ph.t0)
	if len(lat) > 0 {
		wall = slices.Max(lat)
	}
	time.Sleep(100 * time.Millisecond) // let the server read the last ACKs
	s1, serr := c.stats(false)
	return op{wall: wall.Seconds(), cpu: s1.CPUSeconds - s0.CPUSeconds, bytes: s1.BytesSent - s0.BytesSent,
		driver: driverCPU() - d0, lat: lat}, errors.Join(err, serr)
}

func summarize(r *Result, ops []op) {
	if len(ops) == 0 {
		return
	}
	r.Ops = len(ops)
	walls, cpus := make([]float64, len(ops)), make([]float64, len(ops))
	var lat []time.Duration
	var bytes int64
	for i, o := range ops {
		walls[i], cpus[i] = o.wall, o.cpu
		lat = append(lat, o.lat...)
		bytes += o.bytes
		r.DriverCPUSeconds += o.driver
	}
	r.WallSeconds, r.WallBestSeconds, r.CPUSeconds = median(walls), slices.Min(walls), median(cpus)
	r.OpWallSeconds = walls
	r.BytesSent = bytes / int64(len(ops))
	r.DriverCPUSeconds /= float64(len(ops))
	slices.Sort(lat)
	if len(lat) > 0 {
		pct := func(p float64) float64 {
			return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
		}
		r.P50Millis, r.P99Millis, r.MaxMillis = pct(.5), pct(.99), float64(lat[len(lat)-1].Microseconds())/1000
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func finish(r *Result, c *child) {
	time.Sleep(200 * time.Millisecond)
	if s, err := c.stats(true); err == nil {
		r.RSSBytes, r.HeapInuse = s.RSSBytes, s.HeapInuse
	}
}

func fail(r *Result, err error) {
	if err != nil && r.Error == "" {
		r.Error = err.Error()
	}
}

// fullPush: every cluster changes; every proxy on state-of-the-world CDS
// gets all of them.
func fullPush(ctx context.Context, o Options, impl string) (r Result) {
	r = Result{Scenario: "full-push", Impl: impl, Services: o.Services, Proxies: o.FullPushProxies, Protocol: "sotw CDS"}
	c, err := startChild(ctx, o, ChildOptions{Impl: impl, Services: o.Services, Big: 1})
	if err != nil {
		fail(&r, err)
		return r
	}
	defer c.stop()
	f := newFleet(ctx)
	defer f.close()
	fmt.Fprintf(o.Log, "full-push %s: connecting %d proxies\n", impl, o.FullPushProxies)
	if _, err := f.connect(c.xds, o.FullPushProxies, plan{services: o.Services}, o.Timeout); err != nil {
		fail(&r, fmt.Errorf("initial sync: %w", err))
		return r
	}
	time.Sleep(300 * time.Millisecond)
	n := o.Services
	var ops []op
	c.profile("start")
	defer c.profile("stop")
	for range o.Pushes {
		res, err := measure(f, c, "full", func(_ *proxy, lr *liteResp) bool {
			return lr.typeURL == api.ClusterType && lr.resources == n
		}, o.Timeout)
		if err != nil {
			fail(&r, err)
			break
		}
		ops = append(ops, res)
		time.Sleep(300 * time.Millisecond)
	}
	summarize(&r, ops)
	finish(&r, c)
	return r
}

// edsDelta: one endpoint of the 100-endpoint service changes; every proxy
// on delta EDS receives that one ClusterLoadAssignment.
func edsDelta(ctx context.Context, o Options, impl string, services int) (r Result) {
	if impl == ImplBaseline {
		o.DeltaProxies = o.BaselineDeltaProxies
	}
	r = Result{Scenario: "eds-delta", Impl: impl, Services: services, Proxies: o.DeltaProxies, Protocol: "delta EDS"}
	c, err := startChild(ctx, o, ChildOptions{Impl: impl, Services: services, Big: o.BigService})
	if err != nil {
		fail(&r, err)
		return r
	}
	defer c.stop()
	f := newFleet(ctx)
	defer f.close()
	fmt.Fprintf(o.Log, "eds-delta %s %d services: connecting %d proxies\n", impl, services, o.DeltaProxies)
	if _, err := f.connect(c.xds, o.DeltaProxies, plan{delta: true, services: services}, o.Timeout); err != nil {
		fail(&r, fmt.Errorf("initial sync: %w", err))
		return r
	}
	time.Sleep(500 * time.Millisecond)
	changes := o.Changes
	if impl == ImplBaseline {
		changes = min(changes, o.BaselineChanges)
	}
	var ops []op
	c.profile("start")
	defer c.profile("stop")
	for range changes {
		res, err := measure(f, c, "endpoint", func(_ *proxy, lr *liteResp) bool {
			return lr.typeURL == api.EndpointType && lr.resources > 0
		}, o.Timeout)
		if err != nil {
			fail(&r, err)
			break
		}
		ops = append(ops, res)
		time.Sleep(150 * time.Millisecond)
	}
	summarize(&r, ops)
	finish(&r, c)
	return r
}

// storm: proxies connect at once and subscribe like Envoy sidecars; time
// until all hold CDS, EDS, LDS and RDS. StormBatches in one server
// ("memory") give memory at each size; StormAtOnce in a fresh server
// ("storm") is the reconnect storm.
func storm(ctx context.Context, o Options, impl string) []Result {
	run := func(name string, batches []int) (r Result) {
		total := 0
		for _, b := range batches {
			total += b
		}
		r = Result{Scenario: name, Impl: impl, Services: o.Services, Proxies: total, Protocol: "sotw CDS+EDS+LDS+RDS"}
		if o.StormDelta {
			r.Protocol = "delta CDS+EDS+LDS+RDS"
		}
		c, err := startChild(ctx, o, ChildOptions{Impl: impl, Services: o.Services, Big: o.BigService})
		if err != nil {
			fail(&r, err)
			return r
		}
		defer c.stop()
		f := newFleet(ctx)
		defer f.close()
		var ops []op
		connected := 0
		for _, b := range batches {
			fmt.Fprintf(o.Log, "%s %s: %d proxies connecting at once (%d connected)\n", name, impl, b, connected)
			s0, _ := c.stats(false)
			d0 := driverCPU()
			ph, err := f.connect(c.xds, b, plan{envoy: true, delta: o.StormDelta, services: o.Services}, o.Timeout)
			lat := ph.latencies()
			wall := time.Since(ph.t0)
			if len(lat) > 0 {
				wall = slices.Max(lat)
			}
			time.Sleep(100 * time.Millisecond)
			s1, _ := c.stats(false)
			ops = append(ops, op{wall: wall.Seconds(), cpu: s1.CPUSeconds - s0.CPUSeconds, bytes: s1.BytesSent - s0.BytesSent, driver: driverCPU() - d0, lat: lat})
			if err != nil {
				fail(&r, err)
				break
			}
			connected += b
			time.Sleep(500 * time.Millisecond)
			if s, err := c.stats(true); err == nil {
				r.Memory = append(r.Memory, MemPoint{Proxies: connected, RSSBytes: s.RSSBytes, HeapInuse: s.HeapInuse})
			}
		}
		summarize(&r, ops)
		finish(&r, c)
		return r
	}
	var out []Result
	if len(o.StormBatches) > 0 {
		out = append(out, run("memory", o.StormBatches))
	}
	if o.StormAtOnce > 0 {
		out = append(out, run("storm", []int{o.StormAtOnce}))
	}
	return out
}
