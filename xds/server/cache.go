package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/xds/api"
)

// pushOrder is the order types are published in, Istio's: clusters before
// their endpoints, listeners before their routes, then secrets.
var pushOrder = []string{api.ClusterType, api.EndpointType, api.ListenerType, api.RouteType, api.SecretType}

// typeState is one registered resource type.
type typeState struct {
	url       string
	short     string
	gen       api.Generator
	order     int
	fullState bool // state-of-the-world responses carry every subscribed resource (LDS, CDS)
	depType   string
	refsOf    func(proto.Message) []string
	groups    map[string]*group

	// deltaReq is what delta responses of this type give as their request:
	// go-control-plane reads only its type URL, so every watch shares it.
	deltaReq *discovery.DeltaDiscoveryRequest
	// sendMetrics are the per-response metrics bound to this type's label,
	// made on the first response (so a type never sent has no series).
	sendMetrics atomic.Pointer[typeSendMetrics]
}

// typeSendMetrics are the metrics every response of a type updates, bound
// to the type's label once rather than looked up for each response.
type typeSendMetrics struct {
	pushes     prometheus.Counter
	configSize prometheus.Observer
	pushTime   prometheus.Observer
}

// sendMetricsFor returns ts's bound send metrics.
func (ts *typeState) sendMetricsFor(m *metrics) *typeSendMetrics {
	if sm := ts.sendMetrics.Load(); sm != nil {
		return sm
	}
	sm := &typeSendMetrics{
		pushes:     m.pushes.WithLabelValues(ts.short),
		configSize: m.configSize.WithLabelValues(ts.short),
		pushTime:   m.pushTime.WithLabelValues(ts.short),
	}
	ts.sendMetrics.Store(sm)
	return sm
}

// group is the proxies of one type that share a generator key, and the
// snapshot they share.
type group struct {
	ts       *typeState
	key      string
	snap     *snapshot
	rep      *api.Proxy // a member, handed to Generate
	members  map[*connType]struct{}
	watching map[*connType]struct{} // members with an open watch
	err      string                 // last generation or consistency error
	errAt    time.Time
}

// conn is one xDS stream (its proxy, what it watches, what it was sent).
type conn struct {
	id          string
	proxy       *api.Proxy
	node        *corev3.Node // canonical node pointer: every request of the stream carries it
	delta       bool
	addr        string
	connectedAt time.Time
	done        chan struct{}

	types map[string]*connType // guarded by xdsCache.mu

	// mu guards what its connTypes record about sending (sentSnap and the
	// subscription flags), so a stream writing its response does not wait
	// for the cache lock a push holds while it fans out. Lock order:
	// xdsCache.mu, then conn.mu.
	mu sync.Mutex

	// pending links the response go-control-plane is about to send to the
	// wrapper's Send; both run on the stream's goroutine.
	pending pendingSend

	smu    sync.Mutex
	status map[string]*typeStatus
	// lastURL and lastSt are the status last looked up (statusFor).
	lastURL string
	lastSt  *typeStatus
}

type pendingSend struct {
	sotwOut  *discovery.DiscoveryResponse
	sotw     *sotwResp
	deltaOut *discovery.DeltaDiscoveryResponse
	delta    *deltaResp
}

// connType is one stream's state for one type. The first fields are
// guarded by xdsCache.mu, the rest by conn.mu.
type connType struct {
	c     *conn
	ts    *typeState
	group *group
	epoch uint64 // cache epoch the key was computed in
	w     *watch // open watch, or nil

	sentSnap *snapshot // what the proxy has (for its subscription); set when a response is written
	everSent bool
	subHash  uint64
	subSet   *subSet
	subKnown bool
	forceAll bool                // sotw: the subscription changed; send everything subscribed
	force    map[string]struct{} // delta: newly subscribed names, sent whatever the proxy claims
	rescan   bool                // delta: compare every name, not just the changes
}

type watch struct {
	ct  *connType
	sub cache.Subscription
	// wild and names are the state-of-the-world subscription, resolved
	// from a shared set's token when it is one (subsets.go).
	wild  bool
	names map[string]struct{}
	req   *discovery.DiscoveryRequest
	ch    chan cache.Response
	dr    *discovery.DeltaDiscoveryRequest
	dch   chan cache.DeltaResponse
}

// xdsCache implements go-control-plane's cache.Cache.
type xdsCache struct {
	s     *Server
	genMu sync.Mutex // one generation at a time: pushes and first generation for new groups

	mu    sync.Mutex
	types map[string]*typeState
	conns map[*corev3.Node]*conn
	epoch uint64
	// rev is the highest config revision a push carried: what new
	// snapshots are built from (see snapshot.rev).
	rev uint64

	// names interns resource names: requests name the same few thousand
	// resources over and over, so the request decoder (codec.go) and the
	// subscription sets use the snapshots' own strings instead of
	// allocating their own.
	names atomic.Pointer[map[string]string]
}

var _ cache.Cache = (*xdsCache)(nil)

func newCache(s *Server) *xdsCache {
	x := &xdsCache{s: s, types: map[string]*typeState{}, conns: map[*corev3.Node]*conn{}}
	empty := map[string]string{}
	x.names.Store(&empty)
	return x
}

func (x *xdsCache) register(typeURL string, g api.Generator) error {
	if !strings.HasPrefix(typeURL, "type.googleapis.com/") {
		return fmt.Errorf("xds: RegisterGenerator: %q is not a type URL", typeURL)
	}
	if g == nil {
		return errors.New("xds: RegisterGenerator: nil generator")
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, dup := x.types[typeURL]; dup {
		return fmt.Errorf("xds: a generator for %s is already registered", typeURL)
	}
	ts := &typeState{url: typeURL, short: api.ShortType(typeURL), gen: g, groups: map[string]*group{},
		fullState: typeURL == api.ClusterType || typeURL == api.ListenerType,
		deltaReq:  &discovery.DeltaDiscoveryRequest{TypeUrl: typeURL}}
	ts.order = slices.Index(pushOrder, typeURL)
	if ts.order < 0 {
		ts.order = len(pushOrder) + len(x.types)
	}
	ts.depType, ts.refsOf = dependentType(typeURL)
	x.types[typeURL] = ts
	return nil
}

func (x *xdsCache) typeState(url string) *typeState {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.types[url]
}

// intern replaces names with the snapshots' own strings where it knows them.
func (x *xdsCache) intern(names []string) {
	m := *x.names.Load()
	for i, n := range names {
		if s, ok := m[n]; ok {
			names[i] = s
		}
	}
}

// addConn registers a stream's conn under its canonical node pointer.
func (x *xdsCache) addConn(c *conn) {
	x.mu.Lock()
	x.conns[c.node] = c
	x.mu.Unlock()
}

// removeConn forgets a closed stream and drops groups nobody uses.
func (x *xdsCache) removeConn(c *conn) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.conns, c.node)
	for _, ct := range c.types {
		x.leaveGroup(ct)
	}
	c.types = nil
}

// leaveGroup removes ct from its group. Caller holds mu.
func (x *xdsCache) leaveGroup(ct *connType) {
	g := ct.group
	if g == nil {
		return
	}
	delete(g.members, ct)
	delete(g.watching, ct)
	ct.group = nil
	if len(g.members) == 0 && g.ts.groups[g.key] == g {
		delete(g.ts.groups, g.key)
		x.s.m.groups.WithLabelValues(g.ts.short).Set(float64(len(g.ts.groups)))
	}
}

// joinGroup moves ct into the group for key, creating it. Caller holds mu.
func (x *xdsCache) joinGroup(ct *connType, key string) {
	if ct.group != nil && ct.group.key == key {
		return
	}
	watching := ct.group != nil && ct.w != nil
	x.leaveGroup(ct)
	ts := ct.ts
	g := ts.groups[key]
	if g == nil {
		g = &group{ts: ts, key: key, rep: ct.c.proxy, members: map[*connType]struct{}{}, watching: map[*connType]struct{}{}}
		ts.groups[key] = g
		x.s.m.groups.WithLabelValues(ts.short).Set(float64(len(ts.groups)))
	}
	g.members[ct] = struct{}{}
	if watching || ct.w != nil {
		g.watching[ct] = struct{}{}
	}
	ct.group = g
}

// watchFor finds the stream and its state for typeURL, keyed and with a
// generated snapshot if the generator can make one, and returns with mu
// held (unless it returns nil: unknown type, closed stream, or an error).
// It may generate, which happens outside mu.
func (x *xdsCache) watchFor(node *corev3.Node, typeURL string) (*connType, error) {
	x.mu.Lock()
	c, ts := x.conns[node], x.types[typeURL]
	if c == nil {
		x.mu.Unlock()
		return nil, status.Error(codes.Internal, "xds: stream not registered")
	}
	if ts == nil { // nobody generates this type: a watch that never answers
		x.mu.Unlock()
		return nil, nil
	}
	ct := x.keyed(c, ts)
	if ct != nil && ct.group.snap == nil {
		x.mu.Unlock()
		x.generateFor(x.s.ctx, c, ts)
		x.mu.Lock()
		ct = x.keyed(c, ts)
	}
	if ct == nil {
		x.mu.Unlock()
		return nil, nil
	}
	return ct, nil
}

// keyed returns c's connType for ts with a current key, computing the key
// if needed. Caller holds mu; Key is called with it held, which the
// Generator contract allows (Key must be cheap and not call back).
func (x *xdsCache) keyed(c *conn, ts *typeState) *connType {
	if c.types == nil { // closed
		return nil
	}
	ct := c.types[ts.url]
	if ct == nil {
		ct = &connType{c: c, ts: ts}
		c.types[ts.url] = ct
	}
	if ct.group == nil || ct.epoch != x.epoch {
		x.joinGroup(ct, ts.gen.Key(c.proxy))
		ct.epoch = x.epoch
	}
	return ct
}

// generateFor generates the groups c needs that have no snapshot yet: the
// type asked for and the type its resources refer to, so the pair can be
// checked for consistency before anything is published.
func (x *xdsCache) generateFor(ctx context.Context, c *conn, ts *typeState) {
	x.genMu.Lock()
	defer x.genMu.Unlock()
	x.mu.Lock()
	var todo []*group
	cts := []*connType{x.keyed(c, ts)}
	if dep := x.types[ts.depType]; dep != nil {
		cts = append(cts, x.keyed(c, dep))
	}
	for _, ct := range cts {
		// A group whose generator just failed is not retried for every
		// proxy that connects; the next push retries it.
		if ct != nil && ct.group.snap == nil && time.Since(ct.group.errAt) > time.Second {
			todo = append(todo, ct.group)
		}
	}
	rev := x.rev
	x.mu.Unlock()
	if len(todo) == 0 {
		return
	}
	x.generate(ctx, todo, nil, "connect", time.Now(), rev)
}

// generation is one group's new snapshot, before publication.
type generation struct {
	g    *group
	snap *snapshot
	err  string
}

// generate runs the generators for groups (full sets when names is nil),
// checks the results for consistency, and publishes them as built from
// config revision rev. Caller holds genMu, not mu.
func (x *xdsCache) generate(ctx context.Context, groups []*group, names map[string][]string, reason string, trigger time.Time, rev uint64) {
	gens := make([]*generation, 0, len(groups))
	byGroup := map[*group]*generation{}
	for _, g := range groups {
		x.mu.Lock()
		old, rep, key := g.snap, g.rep, g.key
		x.mu.Unlock()
		var req []string
		if names != nil {
			req = names[g.ts.url]
		}
		gen := &generation{g: g}
		start := time.Now()
		res, err := g.ts.gen.Generate(ctx, api.GenerateRequest{Key: key, Proxy: rep, Names: req, Reason: reason})
		x.s.m.generateTime.WithLabelValues(g.ts.short).Observe(time.Since(start).Seconds())
		if err == nil {
			gen.snap, err = build(g.ts.url, old, res, req, g.ts.refsOf)
		}
		if err != nil {
			gen.err = fmt.Sprintf("generate %s for key %q: %v", g.ts.short, key, err)
			x.s.m.generateErrors.WithLabelValues(g.ts.short).Inc()
			x.s.log.Error("xds generator failed; proxies keep their last good resources", "type", g.ts.short, "key", key, "err", err)
		} else if gen.snap == old {
			gen.snap = nil // unchanged
		}
		gens = append(gens, gen)
		byGroup[g] = gen
	}

	x.mu.Lock()
	defer x.mu.Unlock()
	x.checkConsistency(gens, byGroup)
	slices.SortStableFunc(gens, func(a, b *generation) int { return a.g.ts.order - b.g.ts.order })
	for _, gen := range gens {
		gen.g.err = gen.err
		if gen.err != "" {
			gen.g.errAt = time.Now()
		}
		if gen.snap != nil {
			gen.snap.trigger = trigger
			gen.snap.rev.Store(rev)
			x.publish(gen.g, gen.snap)
		}
	}
	x.reintern(gens)
}

// checkConsistency withholds new snapshots that refer to resources the
// matching dependent snapshot lacks: for every stream, its cluster set must
// find each EDS name in its endpoint set, and its listener set each RDS name
// in its route set. Both sides of a failing pair keep their last good
// snapshot. Caller holds mu.
func (x *xdsCache) checkConsistency(gens []*generation, byGroup map[*group]*generation) {
	type pair struct{ ref, dep *group }
	pairs := map[pair]struct{}{}
	for _, gen := range gens {
		if gen.snap == nil {
			continue
		}
		for ct := range gen.g.members {
			c := ct.c
			if dt := x.types[ct.ts.depType]; dt != nil {
				if d := c.types[dt.url]; d != nil && d.group != nil {
					pairs[pair{ct.group, d.group}] = struct{}{}
				}
			}
			for _, other := range c.types {
				if other.ts.depType == ct.ts.url && other.group != nil {
					pairs[pair{other.group, ct.group}] = struct{}{}
				}
			}
		}
	}
	current := func(g *group) *snapshot {
		if gen := byGroup[g]; gen != nil && gen.snap != nil {
			return gen.snap
		}
		return g.snap
	}
	for p := range pairs {
		ref, dep := current(p.ref), current(p.dep)
		if ref == nil {
			continue
		}
		missing := missingRefs(ref, dep, 5)
		if len(missing) == 0 {
			continue
		}
		msg := fmt.Sprintf("inconsistent push withheld: %s key %q refers to %s %q that %s key %q does not have",
			p.ref.ts.short, p.ref.key, p.dep.ts.short, missing, p.dep.ts.short, p.dep.key)
		for _, g := range []*group{p.ref, p.dep} {
			if gen := byGroup[g]; gen != nil && gen.snap != nil {
				gen.snap, gen.err = nil, msg
				x.s.m.inconsistent.WithLabelValues(g.ts.short).Inc()
			}
		}
		x.s.log.Error("xds push is inconsistent; proxies keep their last good resources", "detail", msg)
	}
}

// reintern rebuilds the name table when a generation added or removed
// names. Caller holds mu.
func (x *xdsCache) reintern(gens []*generation) {
	if !slices.ContainsFunc(gens, func(g *generation) bool { return g.snap != nil && (g.snap.newNames || g.snap.parent == nil) }) {
		return
	}
	m := map[string]string{}
	for _, ts := range x.types {
		for _, g := range ts.groups {
			if g.snap != nil {
				for name, e := range g.snap.entries {
					m[name] = e.name
				}
			}
		}
	}
	x.names.Store(&m)
}

// publish makes snap the group's snapshot and answers its open watches.
// Caller holds mu.
func (x *xdsCache) publish(g *group, snap *snapshot) {
	snap.cutChain()
	g.snap = snap
	for ct := range g.watching {
		w := ct.w
		if w == nil {
			delete(g.watching, ct)
			continue
		}
		if x.respond(ct, w, true) {
			ct.w = nil
			delete(g.watching, ct)
		}
	}
}

// respond sends w its response if one is due. Caller holds mu.
func (x *xdsCache) respond(ct *connType, w *watch, pushed bool) bool {
	ct.c.mu.Lock()
	defer ct.c.mu.Unlock()
	if w.ch != nil {
		r := x.sotwResponse(ct, w)
		if r == nil {
			return false
		}
		r.pushed = pushed
		deliver(ct.c, w.ch, cache.Response(r))
		return true
	}
	r := x.deltaResponse(ct, w)
	if r == nil {
		return false
	}
	r.pushed = pushed
	deliver(ct.c, w.dch, cache.DeltaResponse(r))
	return true
}

// deliver hands a response to the stream. Each watch answers at most once
// and go-control-plane sizes the channels for one response per type, so the
// send does not block; the goroutine is a guard for a stream watching more
// types than that.
func deliver[T any](c *conn, ch chan T, v T) {
	select {
	case ch <- v:
	default:
		go func() {
			select {
			case ch <- v:
			case <-c.done:
			}
		}()
	}
}

// CreateWatch implements cache.ConfigWatcher for state-of-the-world streams.
func (x *xdsCache) CreateWatch(req *cache.Request, sub cache.Subscription, ch chan cache.Response) (func(), error) {
	w := &watch{sub: sub, req: slimRequest(req), ch: ch, wild: sub.IsWildcard(), names: sub.SubscribedResources()}
	var set *subSet
	var h uint64
	if !w.wild {
		if s, ok := x.s.subs.lookup(w.names); ok {
			set, w.names = s, s.names
		} else {
			h = subHash(w.names)
		}
	}
	ct, err := x.watchFor(req.GetNode(), req.GetTypeUrl())
	if ct == nil {
		return func() {}, err
	}
	defer x.mu.Unlock()
	w.ct = ct
	ct.c.mu.Lock()
	if !ct.subKnown || set != ct.subSet || h != ct.subHash {
		ct.subHash, ct.subSet, ct.subKnown, ct.forceAll = h, set, true, true
	}
	ct.c.mu.Unlock()
	return x.open(ct, w), nil
}

// CreateDeltaWatch implements cache.ConfigWatcher for delta streams.
func (x *xdsCache) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	w := &watch{sub: sub, dch: ch, wild: sub.IsWildcard(), names: sub.SubscribedResources()}
	set, shared := x.s.subs.lookup(w.names)
	if shared {
		w.names = set.names
	}
	ct, err := x.watchFor(req.GetNode(), req.GetTypeUrl())
	if ct == nil {
		return func() {}, err
	}
	defer x.mu.Unlock()
	w.ct, w.dr = ct, ct.ts.deltaReq
	ct.c.mu.Lock()
	if slices.Contains(req.GetResourceNamesSubscribe(), "*") {
		ct.rescan = true
	}
	// Newly subscribed names are sent whatever the proxy was sent before
	// (until something was sent, nothing needs forcing).
	force := ct.forceName
	switch {
	case !shared:
		for _, n := range req.GetResourceNamesSubscribe() {
			if n != "*" {
				force(n)
			}
		}
	case set != ct.subSet:
		for n := range set.names {
			if ct.subSet == nil {
				force(n)
			} else if _, had := ct.subSet.names[n]; !had {
				force(n)
			}
		}
	}
	if shared || len(w.names) == 0 {
		ct.subSet = set
	}
	ct.c.mu.Unlock()
	return x.open(ct, w), nil
}

// forceName marks n to be sent whatever the proxy was sent before, once
// something was sent. Caller holds ct.c.mu.
func (ct *connType) forceName(n string) {
	if !ct.everSent {
		return
	}
	if ct.force == nil {
		ct.force = map[string]struct{}{}
	}
	ct.force[n] = struct{}{}
}

// open answers w at once if a response is due, otherwise parks it on its
// group until a publish. Caller holds mu.
func (x *xdsCache) open(ct *connType, w *watch) func() {
	if x.respond(ct, w, false) {
		return func() {}
	}
	ct.w = w
	if ct.group != nil {
		ct.group.watching[ct] = struct{}{}
	}
	return func() {
		x.mu.Lock()
		defer x.mu.Unlock()
		if ct.w == w {
			ct.w = nil
			if ct.group != nil {
				delete(ct.group.watching, ct)
			}
		}
	}
}

// slimRequest keeps what a response needs of its request: the type URL.
// go-control-plane only reads that, and a request can carry thousands of
// names a parked watch would otherwise pin.
func slimRequest(req *discovery.DiscoveryRequest) *discovery.DiscoveryRequest {
	return &discovery.DiscoveryRequest{TypeUrl: req.GetTypeUrl(), VersionInfo: req.GetVersionInfo()}
}

// subHash fingerprints a state-of-the-world subscription that is not a
// shared set, so a changed one can be told from a repeated one (every ACK
// repeats the names). Wildcard is 0.
func subHash(names map[string]struct{}) uint64 {
	h := uint64(len(names))<<1 | 1
	for n := range names {
		h ^= xxhash.Sum64String(n) * 0x9E3779B97F4A7C15
	}
	return h
}

// markSent records that the response for snap is being written. It runs on
// the stream's goroutine right before the write, so a response go-control-
// plane drops (a newer request came first) never counts as sent.
func (x *xdsCache) markSent(ct *connType, snap *snapshot) {
	ct.c.mu.Lock()
	ct.sentSnap = snap
	ct.everSent = true
	ct.forceAll, ct.force, ct.rescan = false, nil, false
	ct.c.mu.Unlock()
}

// skipTo records that snap holds nothing new for ct's proxy: it has snap's
// content already (for its subscription) once it takes its last response,
// so that response's status now stands for snap and its revision. Caller
// holds mu and ct.c.mu.
func (x *xdsCache) skipTo(ct *connType, snap *snapshot) {
	ct.sentSnap = snap
	c := ct.c
	c.smu.Lock()
	if st := c.status[ct.ts.url]; st != nil && st.eff != nil {
		st.eff = snap
	}
	c.smu.Unlock()
}

// sotwResp is a state-of-the-world response, encoded only if it is sent.
type sotwResp struct {
	x       *xdsCache
	ct      *connType // nil for Fetch
	req     *discovery.DiscoveryRequest
	snap    *snapshot
	sel     []*entry
	all     bool
	pushed  bool
	created time.Time
}

var _ cache.Response = (*sotwResp)(nil)

func (r *sotwResp) GetDiscoveryResponse() (*discovery.DiscoveryResponse, error) {
	out := &discovery.DiscoveryResponse{VersionInfo: r.snap.version, TypeUrl: r.snap.typeURL}
	if r.all {
		out.Resources = r.snap.allAnys()
	} else {
		out.Resources = make([]*anypb.Any, len(r.sel))
		for i, e := range r.sel {
			out.Resources[i] = e.any
		}
	}
	if r.ct != nil {
		r.x.markSent(r.ct, r.snap)
		r.ct.c.pending = pendingSend{sotwOut: out, sotw: r}
	}
	return out, nil
}
func (r *sotwResp) GetRequest() *discovery.DiscoveryRequest { return r.req }
func (r *sotwResp) GetVersion() (string, error)             { return r.snap.version, nil }
func (r *sotwResp) GetResponseVersion() string              { return r.snap.version }
func (r *sotwResp) GetReturnedResources() map[string]string { return nil }
func (r *sotwResp) GetContext() context.Context             { return context.Background() }
func (r *sotwResp) count() int {
	if r.all {
		return len(r.snap.sorted)
	}
	return len(r.sel)
}

// sotwResponse decides what a state-of-the-world watch is owed. Caller
// holds mu and ct.c.mu.
//
// LDS and CDS responses carry every subscribed resource (the protocol says
// a missing one is deleted), and are skipped when none of those changed.
// Other types carry only what changed since the proxy's last response, so
// one endpoint change sends one ClusterLoadAssignment.
func (x *xdsCache) sotwResponse(ct *connType, w *watch) *sotwResp {
	snap := ct.group.snap
	if snap == nil {
		return nil
	}
	if !ct.forceAll && ct.sentSnap == snap {
		return nil
	}
	wild, names := w.wild, w.names
	r := &sotwResp{x: x, ct: ct, req: w.req, snap: snap, created: time.Now()}
	selectAll := func() {
		if wild {
			r.all = true
			return
		}
		r.sel = pick(snap, names)
		r.all = len(r.sel) == len(snap.sorted)
	}
	switch {
	case ct.forceAll || ct.sentSnap == nil:
		selectAll()
	case ct.ts.fullState:
		changes, ok := snap.changesSince(ct.sentSnap)
		if !ok {
			changes = differing(ct.sentSnap, snap, wild, names)
		}
		relevant := false
		for _, n := range changes {
			if _, sub := names[n]; wild || sub {
				relevant = true
				break
			}
		}
		if !relevant {
			x.skipTo(ct, snap) // same content for this proxy
			return nil
		}
		selectAll()
	default:
		changes, ok := snap.changesSince(ct.sentSnap)
		if !ok {
			changes = differing(ct.sentSnap, snap, wild, names)
		}
		for _, n := range changes {
			if _, sub := names[n]; wild || sub {
				if e := snap.entries[n]; e != nil {
					r.sel = append(r.sel, e)
				}
			}
		}
		if len(r.sel) == 0 {
			x.skipTo(ct, snap)
			return nil
		}
		r.all = len(r.sel) == len(snap.sorted)
	}
	if r.all {
		r.sel = nil
	}
	return r
}

// pick returns the entries of snap named in names, in name order.
func pick(snap *snapshot, names map[string]struct{}) []*entry {
	var out []*entry
	if len(names) < len(snap.sorted)/4 {
		for n := range names {
			if e := snap.entries[n]; e != nil {
				out = append(out, e)
			}
		}
		slices.SortFunc(out, func(a, b *entry) int { return strings.Compare(a.name, b.name) })
		return out
	}
	for _, e := range snap.sorted {
		if _, ok := names[e.name]; ok {
			out = append(out, e)
		}
	}
	return out
}

// differing returns the names (of the subscription, or all when wild)
// whose entries differ between old and cur, comparing entry identity: an
// unchanged resource keeps its entry across snapshots.
func differing(old, cur *snapshot, wild bool, names map[string]struct{}) []string {
	var out []string
	if !wild {
		for n := range names {
			if old.entries[n] != cur.entries[n] {
				out = append(out, n)
			}
		}
		slices.Sort(out)
		return out
	}
	for _, e := range cur.sorted {
		if old.entries[e.name] != e {
			out = append(out, e.name)
		}
	}
	for _, e := range old.sorted {
		if cur.entries[e.name] == nil {
			out = append(out, e.name)
		}
	}
	slices.Sort(out)
	return out
}

// deltaResp is a delta response, encoded only if it is sent.
type deltaResp struct {
	x       *xdsCache
	ct      *connType
	req     *discovery.DeltaDiscoveryRequest
	snap    *snapshot
	send    []*entry
	removed []string
	all     bool
	pushed  bool
	created time.Time

	// out is the response handed to go-control-plane, and send1 the
	// backing of send for the usual single change: one allocation per
	// response instead of three.
	out   discovery.DeltaDiscoveryResponse
	send1 [1]*entry
}

var _ cache.DeltaResponse = (*deltaResp)(nil)

func (r *deltaResp) GetDeltaDiscoveryResponse() (*discovery.DeltaDiscoveryResponse, error) {
	out := &r.out
	out.SystemVersionInfo, out.TypeUrl, out.RemovedResources = r.snap.version, r.snap.typeURL, r.removed
	list := r.send
	if r.all {
		list = r.snap.sorted
	}
	out.Resources = make([]*discovery.Resource, len(list))
	for i, e := range list {
		out.Resources[i] = e.deltaResource()
	}
	r.x.markSent(r.ct, r.snap)
	r.ct.c.pending = pendingSend{deltaOut: out, delta: r}
	return out, nil
}
func (r *deltaResp) GetDeltaRequest() *discovery.DeltaDiscoveryRequest { return r.req }
func (r *deltaResp) GetSystemVersion() (string, error)                 { return r.snap.version, nil }
func (r *deltaResp) GetResponseVersion() string                        { return r.snap.version }

// GetNextVersionMap returns what go-control-plane should remember the
// proxy has. meshd keeps that itself (the proxy has sentSnap's version of
// every name it subscribes to), so the map only carries exceptions and
// starts empty after each response: no per-proxy map of every resource.
func (r *deltaResp) GetNextVersionMap() map[string]string    { return map[string]string{} }
func (r *deltaResp) GetReturnedResources() map[string]string { return map[string]string{} }
func (r *deltaResp) GetContext() context.Context             { return context.Background() }
func (r *deltaResp) count() int {
	if r.all {
		return len(r.snap.sorted)
	}
	return len(r.send)
}

// deltaResponse decides what a delta watch is owed: the resources whose
// version differs from what the proxy has, and removals. What the proxy has
// is, per name, the version go-control-plane's map says (initial versions
// after a reconnect, "" after an unsubscribe) or else sentSnap's. After the
// first response only the names changed since sentSnap are looked at, so
// an endpoint change costs the same per proxy whatever the mesh size.
// Caller holds mu and ct.c.mu.
func (x *xdsCache) deltaResponse(ct *connType, w *watch) *deltaResp {
	snap := ct.group.snap
	if snap == nil {
		return nil
	}
	have := w.sub.ReturnedResources()
	if ct.everSent && ct.sentSnap == snap && len(ct.force) == 0 && len(have) == 0 && !ct.rescan {
		return nil
	}
	wild, names := w.wild, w.names
	relevant := func(n string) bool {
		if wild {
			return true
		}
		_, ok := names[n]
		return ok
	}
	r := &deltaResp{x: x, ct: ct, req: w.dr, snap: snap, created: time.Now()}
	r.send = r.send1[:0]
	consider := func(n string) {
		if !relevant(n) {
			return
		}
		_, forced := ct.force[n]
		e := snap.entries[n]
		k, ok := have[n]
		if !ok && ct.sentSnap != nil {
			if old := ct.sentSnap.entries[n]; old != nil {
				k = old.version
			}
		}
		switch {
		case e != nil && (forced || k != e.version):
			r.send = append(r.send, e)
		case e == nil && (k != "" || forced || (!ct.everSent && !wild)):
			// Gone, or subscribed and never existed: say so, so the proxy
			// does not wait for it.
			r.removed = append(r.removed, n)
		}
	}

	full := ct.sentSnap == nil || ct.rescan
	var changes []string
	if !full {
		var ok bool
		changes, ok = snap.changesSince(ct.sentSnap)
		full = !ok
	}
	var covered func(string) bool
	sortSend := false
	switch {
	case !full:
		for _, n := range changes {
			consider(n)
		}
		covered = func(n string) bool { _, found := slices.BinarySearch(changes, n); return found }
	case wild:
		for _, e := range snap.sorted {
			consider(e.name)
		}
		if ct.sentSnap != nil {
			for _, e := range ct.sentSnap.sorted {
				if snap.entries[e.name] == nil {
					consider(e.name)
				}
			}
		}
		covered = func(n string) bool {
			return snap.entries[n] != nil || (ct.sentSnap != nil && ct.sentSnap.entries[n] != nil)
		}
	case len(names) >= len(snap.sorted)/4:
		for _, e := range snap.sorted {
			consider(e.name)
		}
		for n := range names {
			if snap.entries[n] == nil {
				consider(n)
			}
		}
		covered = relevant
	default:
		for n := range names {
			consider(n)
		}
		sortSend = true
		covered = relevant
	}
	// Names the proxy's map or a new subscription bring that the pass above
	// did not cover.
	var extra map[string]struct{}
	addExtra := func(n string) {
		if strings.HasPrefix(n, subTokenPrefix) || covered(n) {
			return
		}
		if extra == nil {
			extra = map[string]struct{}{}
		}
		extra[n] = struct{}{}
	}
	for n := range have {
		addExtra(n)
	}
	for n := range ct.force {
		addExtra(n)
	}
	for n := range extra {
		consider(n)
	}
	if sortSend || len(extra) > 0 {
		slices.SortFunc(r.send, func(a, b *entry) int { return strings.Compare(a.name, b.name) })
	}
	slices.Sort(r.removed)

	if len(r.send) == 0 && len(r.removed) == 0 && ct.everSent {
		x.skipTo(ct, snap)
		ct.rescan = false
		return nil
	}
	if len(r.removed) == 0 && len(r.send) == len(snap.sorted) && len(snap.sorted) > 0 {
		r.all, r.send = true, nil // every resource: the shared encoding
	}
	return r
}

// Fetch implements cache.ConfigFetcher (REST and unary Fetch*): the set of
// the node's group, filtered by the requested names.
func (x *xdsCache) Fetch(ctx context.Context, req *cache.Request) (cache.Response, error) {
	ts := x.typeState(req.GetTypeUrl())
	if ts == nil {
		return nil, status.Errorf(codes.NotFound, "no generator for %s", req.GetTypeUrl())
	}
	p, err := api.ParseNode(req.GetNode(), x.s.opts.TrustDomain)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	key := ts.gen.Key(p)
	x.mu.Lock()
	g := ts.groups[key]
	var snap *snapshot
	if g != nil {
		snap = g.snap
	}
	x.mu.Unlock()
	if snap == nil {
		x.genMu.Lock()
		res, err := ts.gen.Generate(ctx, api.GenerateRequest{Key: key, Proxy: p, Reason: "fetch"})
		if err == nil {
			snap, err = build(ts.url, nil, res, nil, nil)
		}
		x.genMu.Unlock()
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "generate %s: %v", ts.short, err)
		}
	}
	r := &sotwResp{x: x, req: req, snap: snap}
	if names := req.GetResourceNames(); len(names) > 0 {
		set := make(map[string]struct{}, len(names))
		for _, n := range names {
			set[n] = struct{}{}
		}
		r.sel = pick(snap, set)
	} else {
		r.all = true
	}
	return r, nil
}
