package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/xds/api"
)

// Request limits. A request is already bounded in bytes by gRPC's receive
// limit (4 MiB); these keep what one stream can make the server hold small.
const (
	maxTypeURLLen      = 256
	maxNamesPerRequest = 100_000
)

// acquireStream counts a stream against MaxStreams.
func (s *Server) acquireStream() (func(), error) {
	if n := s.streams.Add(1); n > int64(s.opts.MaxStreams) {
		s.streams.Add(-1)
		s.m.streamsRejected.WithLabelValues("max_streams").Inc()
		return nil, status.Errorf(codes.ResourceExhausted, "xds: %d streams already open (modules.xds.maxStreams)", s.opts.MaxStreams)
	}
	return func() { s.streams.Add(-1) }, nil
}

// streamBase is what the state-of-the-world and delta wrappers share: the
// checks every request passes, and the stream's conn.
//
// The wrappers sit between gRPC and go-control-plane's server. Recv runs on
// go-control-plane's receive goroutine: it rate-limits, validates, learns
// the proxy from the first request's node, records ACKs and NACKs, and
// stamps every request with the stream's canonical node pointer, which is
// how the cache finds the stream again in CreateWatch. Send runs on the
// stream goroutine: it writes the cache's pre-encoded response.
type streamBase struct {
	s           *Server
	ctx         context.Context
	defaultType string
	delta       bool
	addr        string
	verified    string // SPIFFE ID of a verified client certificate
	c           *conn
	err         error // why we end the stream; returned by the handler
	types       map[string]struct{}
	bucket      tokenBucket
	held        heldSets

	// mu orders the receive goroutine's work against close: go-control-
	// plane returns from a stream without waiting for its receive
	// goroutine, which may be in the middle of a request.
	mu     sync.Mutex
	closed bool
}

// begin rate-limits the next request and locks the stream for it; end
// unlocks. A stream closed meanwhile reports io.EOF.
func (b *streamBase) begin() error {
	throttled, err := b.bucket.wait(b.ctx)
	if err != nil {
		return err
	}
	if throttled {
		b.s.m.throttled.Inc()
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return io.EOF
	}
	return nil
}

func (b *streamBase) end() { b.mu.Unlock() }

func (b *streamBase) init(s *Server, ctx context.Context, defaultType string, delta bool) {
	b.s, b.ctx, b.defaultType, b.delta = s, ctx, defaultType, delta
	b.types, b.held = map[string]struct{}{}, heldSets{}
	b.bucket = tokenBucket{rate: s.opts.RequestRate, burst: float64(s.opts.RequestBurst), tokens: float64(s.opts.RequestBurst), last: time.Now()}
	if p, ok := peer.FromContext(ctx); ok {
		b.addr = p.Addr.String()
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 && len(ti.State.VerifiedChains[0]) > 0 {
			b.verified = spiffeURI(ti.State.VerifiedChains[0][0])
		}
	}
}

func spiffeURI(cert *x509.Certificate) string {
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" {
			return u.String()
		}
	}
	return ""
}

// admit checks one request and returns the type URL it is for.
func (b *streamBase) admit(node *corev3.Node, typeURL string, names int) (string, error) {
	if b.c == nil {
		if err := b.connect(node); err != nil {
			return "", err
		}
	}
	if typeURL == "" {
		if b.defaultType == resource.AnyType {
			return "", b.fail("bad_request", codes.InvalidArgument, "type URL is required for ADS")
		}
		typeURL = b.defaultType
	}
	if _, seen := b.types[typeURL]; !seen {
		if len(typeURL) > maxTypeURLLen || !strings.HasPrefix(typeURL, "type.googleapis.com/") || strings.ContainsAny(typeURL, " \t\r\n") {
			return "", b.fail("bad_type_url", codes.InvalidArgument, fmt.Sprintf("%.64q is not a type URL", typeURL))
		}
		if len(b.types) >= b.s.opts.MaxTypesPerStream {
			return "", b.fail("too_many_types", codes.ResourceExhausted, fmt.Sprintf("a stream may watch at most %d types", b.s.opts.MaxTypesPerStream))
		}
		b.types[typeURL] = struct{}{}
	}
	if names > maxNamesPerRequest {
		return "", b.fail("bad_request", codes.InvalidArgument, fmt.Sprintf("%d resource names in one request; the limit is %d", names, maxNamesPerRequest))
	}
	return typeURL, nil
}

func (b *streamBase) fail(reason string, code codes.Code, msg string) error {
	b.s.m.streamsRejected.WithLabelValues(reason).Inc()
	b.err = status.Error(code, "xds: "+msg)
	if b.c != nil {
		b.s.log.Warn("xds stream closed", "proxy", b.c.proxy.ID, "conn", b.c.id, "reason", msg)
	} else {
		b.s.log.Warn("xds stream closed", "peer", b.addr, "reason", msg)
	}
	return b.err
}

// connect registers the stream's proxy from its first request's node.
func (b *streamBase) connect(node *corev3.Node) error {
	p, err := api.ParseNode(node, b.s.opts.TrustDomain)
	if err != nil {
		return b.fail("bad_node", codes.InvalidArgument, err.Error())
	}
	if b.verified != "" {
		if p, err = p.WithVerifiedIdentity(b.verified); err != nil {
			b.s.m.streamsRejected.WithLabelValues("identity").Inc()
			b.err = status.Error(codes.PermissionDenied, "xds: "+err.Error())
			b.s.log.Warn("xds stream refused", "proxy", node.GetId(), "peer", b.addr, "err", err)
			return b.err
		}
	}
	c := &conn{
		id:          p.ID + "-" + strconv.FormatUint(b.s.connSeq.Add(1), 10),
		proxy:       p,
		node:        node,
		delta:       b.delta,
		addr:        b.addr,
		connectedAt: time.Now(),
		done:        make(chan struct{}),
		types:       map[string]*connType{},
		status:      map[string]*typeStatus{},
	}
	b.c = c
	b.s.cache.addConn(c)
	b.s.m.connected.WithLabelValues(string(p.Type)).Inc()
	b.s.opts.Publish(api.ProxyConnected{ConnID: c.id, Proxy: p})
	b.s.log.Debug("xds proxy connected", "proxy", p.ID, "conn", c.id, "type", p.Type, "delta", b.delta, "peer", b.addr)
	return nil
}

// close forgets the stream's proxy.
func (b *streamBase) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	b.held.releaseAll(b.s.subs)
	c := b.c
	if c == nil {
		return
	}
	close(c.done)
	b.s.cache.removeConn(c)
	b.s.m.connected.WithLabelValues(string(c.proxy.Type)).Dec()
	b.s.opts.Publish(api.ProxyDisconnected{ConnID: c.id, Proxy: c.proxy})
	b.s.log.Debug("xds proxy disconnected", "proxy", c.proxy.ID, "conn", c.id)
}

// afterSend records metrics for a response written (or not) to the stream.
func (b *streamBase) afterSend(typeURL string, bytes int, created time.Time, err error) {
	short := api.ShortType(typeURL)
	if err != nil {
		b.s.m.sendErrors.WithLabelValues(short).Inc()
		return
	}
	b.s.m.pushes.WithLabelValues(short).Inc()
	b.s.m.configSize.WithLabelValues(short).Observe(float64(bytes))
	if !created.IsZero() {
		b.s.m.pushTime.WithLabelValues(short).Observe(time.Since(created).Seconds())
	}
}

// afterSendOf is afterSend for a response of the cache's, whose type's
// metrics are already bound to its label.
func (b *streamBase) afterSendOf(ts *typeState, bytes int, created time.Time, err error) {
	if err != nil {
		b.s.m.sendErrors.WithLabelValues(ts.short).Inc()
		return
	}
	sm := ts.sendMetricsFor(b.s.m)
	sm.pushes.Inc()
	sm.configSize.Observe(float64(bytes))
	if !created.IsZero() {
		sm.pushTime.Observe(time.Since(created).Seconds())
	}
}

// serveSotw serves one state-of-the-world stream.
func (s *Server) serveSotw(st sotwGRPC, defaultType string) error {
	release, err := s.acquireStream()
	if err != nil {
		return err
	}
	defer release()
	w := &sotwStream{ServerStream: st, raw: st}
	w.init(s, st.Context(), defaultType, false)
	defer w.close()
	err = s.gcp.StreamHandler(w, defaultType)
	if w.err != nil {
		return w.err
	}
	return err
}

type sotwStream struct {
	grpc.ServerStream
	raw sotwGRPC
	streamBase
}

func (w *sotwStream) Recv() (*discovery.DiscoveryRequest, error) {
	req, err := w.raw.Recv()
	if err != nil {
		return nil, err
	}
	if err := w.begin(); err != nil {
		return nil, err
	}
	defer w.end()
	typeURL, err := w.admit(req.GetNode(), req.GetTypeUrl(), len(req.GetResourceNames()))
	if err != nil {
		return nil, err
	}
	req.Node = w.c.node
	if names := req.GetResourceNames(); len(names) > 0 && !slices.Contains(names, "*") {
		set := w.s.subs.acquire(names, w.s.cache.intern)
		w.held.hold(w.s.subs, typeURL, set)
		req.ResourceNames = set.token
	}
	w.c.request(w.s, typeURL, req.GetResponseNonce(), req.GetErrorDetail())
	return req, nil
}

func (w *sotwStream) Send(out *discovery.DiscoveryResponse) error {
	p := w.c.pending
	w.c.pending = pendingSend{}
	if p.sotwOut != out || p.sotw == nil { // not ours: encode it the ordinary way
		w.c.sent(out.GetTypeUrl(), out.GetNonce(), out.GetVersionInfo(), len(out.GetResources()), 0, nil, time.Time{})
		err := w.raw.Send(out)
		w.afterSend(out.GetTypeUrl(), 0, time.Time{}, err)
		return err
	}
	r := p.sotw
	msg, n := encodeSotw(r, out.GetNonce())
	var trigger time.Time
	if r.pushed {
		trigger = r.snap.trigger
	}
	w.c.sent(out.GetTypeUrl(), out.GetNonce(), out.GetVersionInfo(), r.count(), n, r.snap, trigger)
	err := w.raw.SendMsg(msg)
	w.afterSend(out.GetTypeUrl(), n, r.created, err)
	return err
}

// serveDelta serves one delta stream.
func (s *Server) serveDelta(st deltaGRPC, defaultType string) error {
	release, err := s.acquireStream()
	if err != nil {
		return err
	}
	defer release()
	w := &deltaStream{ServerStream: st, raw: st}
	w.init(s, st.Context(), defaultType, true)
	defer w.close()
	err = s.gcp.DeltaStreamHandler(w, defaultType)
	if w.err != nil {
		return w.err
	}
	return err
}

type deltaStream struct {
	grpc.ServerStream
	raw deltaGRPC
	streamBase
}

func (w *deltaStream) Recv() (*discovery.DeltaDiscoveryRequest, error) {
	req, err := w.raw.Recv()
	if err != nil {
		return nil, err
	}
	if err := w.begin(); err != nil {
		return nil, err
	}
	defer w.end()
	names := len(req.GetResourceNamesSubscribe()) + len(req.GetResourceNamesUnsubscribe()) + len(req.GetInitialResourceVersions())
	typeURL, err := w.admit(req.GetNode(), req.GetTypeUrl(), names)
	if err != nil {
		return nil, err
	}
	req.Node = w.c.node
	w.swapDeltaNames(typeURL, req)
	w.c.request(w.s, typeURL, req.GetResponseNonce(), req.GetErrorDetail())
	return req, nil
}

// swapDeltaNames replaces the names a delta request subscribes and
// unsubscribes with tokens of shared sets (subsets.go): go-control-plane
// then keeps one token per stream instead of a map of every name, and the
// cache reads the set. The new set is the stream's current one plus the
// names subscribed minus those unsubscribed; "*" is passed through.
func (w *deltaStream) swapDeltaNames(typeURL string, req *discovery.DeltaDiscoveryRequest) {
	sub, subStar := splitStar(req.GetResourceNamesSubscribe())
	unsub, unsubStar := splitStar(req.GetResourceNamesUnsubscribe())
	if len(sub) == 0 && len(unsub) == 0 {
		return
	}
	var cur *subSet
	if p := w.held[typeURL]; p != nil {
		cur = p[0]
	}
	if cur == nil && len(unsub) == 0 { // the common first subscription
		set := w.s.subs.acquire(sub, w.s.cache.intern)
		w.held.hold(w.s.subs, typeURL, set)
		req.ResourceNamesSubscribe, req.ResourceNamesUnsubscribe = append(subStar, set.token[0]), unsubStar
		return
	}
	names := make(map[string]struct{}, len(sub))
	if cur != nil {
		for n := range cur.names {
			names[n] = struct{}{}
		}
	}
	for _, n := range sub {
		names[n] = struct{}{}
	}
	for _, n := range unsub {
		delete(names, n)
	}
	var set *subSet
	if len(names) > 0 {
		list := make([]string, 0, len(names))
		for n := range names {
			list = append(list, n)
		}
		set = w.s.subs.acquire(list, w.s.cache.intern)
	}
	w.held.hold(w.s.subs, typeURL, set)
	req.ResourceNamesSubscribe, req.ResourceNamesUnsubscribe = subStar, unsubStar
	if set != cur {
		if set != nil {
			req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, set.token[0])
		}
		if cur != nil {
			req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, cur.token[0])
		}
	}
}

// splitStar returns names without "*", and a list holding "*" if it was there.
func splitStar(names []string) (plain, star []string) {
	for _, n := range names {
		if n == "*" {
			star = []string{"*"}
		} else {
			plain = append(plain, n)
		}
	}
	return plain, star
}

func (w *deltaStream) Send(out *discovery.DeltaDiscoveryResponse) error {
	p := w.c.pending
	w.c.pending = pendingSend{}
	if p.deltaOut != out || p.delta == nil {
		w.c.sent(out.GetTypeUrl(), out.GetNonce(), out.GetSystemVersionInfo(), len(out.GetResources()), 0, nil, time.Time{})
		err := w.raw.Send(out)
		w.afterSend(out.GetTypeUrl(), 0, time.Time{}, err)
		return err
	}
	r := p.delta
	msg, n := encodeDelta(r, out.GetNonce())
	var trigger time.Time
	if r.pushed {
		trigger = r.snap.trigger
	}
	w.c.sent(out.GetTypeUrl(), out.GetNonce(), out.GetSystemVersionInfo(), r.count(), n, r.snap, trigger)
	err := w.raw.SendMsg(msg)
	w.afterSendOf(r.ct.ts, n, r.created, err)
	return err
}

// tokenBucket limits one stream's request rate. Only its stream's receive
// goroutine uses it. Waiting instead of failing means a flooding client
// just stops being read, and HTTP/2 flow control pushes back on it.
type tokenBucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func (t *tokenBucket) wait(ctx context.Context) (throttled bool, err error) {
	now := time.Now()
	t.tokens = min(t.burst, t.tokens+now.Sub(t.last).Seconds()*t.rate)
	t.last = now
	if t.tokens >= 1 {
		t.tokens--
		return false, nil
	}
	d := time.Duration((1 - t.tokens) / t.rate * float64(time.Second))
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return true, ctx.Err()
	case <-timer.C:
	}
	t.tokens, t.last = 0, time.Now()
	return true, nil
}
