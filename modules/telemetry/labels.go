package telemetry

import (
	"bytes"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/meshd/meshd/modules/telemetry/internal/alswire"
	"github.com/meshd/meshd/modules/telemetry/internal/series"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// Label values meshd writes itself. They are Istio's.
const (
	unknown             = "unknown"
	reporterSource      = "source"
	reporterDestination = "destination"
	policyMutualTLS     = "mutual_tls"
	policyNone          = "none"
)

// transient returns b as a string without copying it. The string is valid
// only as long as b is: the receiver uses it for the labels of the entry
// at hand, and series.Family copies what it keeps.
func transient(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// codeNames are the label values of HTTP status codes, so that labelling an
// entry does not format a number.
var codeNames = func() (c [600]string) {
	for i := range c {
		c[i] = strconv.Itoa(i)
	}
	return c
}()

func codeLabel(code uint32) string {
	if code < uint32(len(codeNames)) {
		return codeNames[code]
	}
	return strconv.FormatUint(uint64(code), 10)
}

// grpcLabel is the grpc_response_status value: empty when the response
// carried no grpc-status (not a gRPC call), as with Istio.
func grpcLabel(v []byte) string {
	if len(v) > 0 && len(v) <= 2 {
		if n, err := strconv.Atoi(transient(v)); err == nil && n >= 0 && n < len(codeNames) {
			return codeNames[n]
		}
	}
	return transient(v)
}

// reporterOf returns the reporter a log name stands for, or "" for log
// names meshd did not generate (then each entry is judged by its cluster).
func reporterOf(logName string) string {
	switch logName {
	case logHTTPInbound, logTCPInbound:
		return reporterDestination
	case logHTTPOutbound, logTCPOutbound:
		return reporterSource
	}
	return ""
}

var inboundPrefix = []byte("inbound|")

// clusterHost returns the service host of an Istio-style cluster name,
// outbound|<port>|<subset>|<host> or inbound|<port>|<subset>|<host>, or
// nil for other names (PassthroughCluster, BlackHoleCluster, ...).
func clusterHost(name []byte) []byte {
	dir, rest, ok := bytes.Cut(name, []byte("|"))
	if !ok || (string(dir) != "outbound" && string(dir) != "inbound") {
		return nil
	}
	for range 2 {
		if _, rest, ok = bytes.Cut(rest, []byte("|")); !ok {
			return nil
		}
	}
	if bytes.IndexByte(rest, '|') >= 0 {
		return nil
	}
	return rest
}

// authorityHost strips the port from a request authority.
func authorityHost(a []byte) []byte {
	if len(a) > 0 && a[0] == '[' { // [v6]:port
		if i := bytes.IndexByte(a, ']'); i > 0 {
			return a[1:i]
		}
		return a
	}
	if i := bytes.LastIndexByte(a, ':'); i >= 0 && bytes.IndexByte(a[:i], ':') < 0 {
		return a[:i]
	}
	return a
}

// namespaceOf returns the namespace of an Istio SPIFFE ID
// (spiffe://<td>/ns/<ns>/sa/<sa>), or "" for anything else.
func namespaceOf(principal string) string {
	rest, ok := strings.CutPrefix(principal, "spiffe://")
	if !ok {
		return ""
	}
	_, rest, ok = strings.Cut(rest, "/ns/")
	if !ok {
		return ""
	}
	ns, _, ok := strings.Cut(rest, "/sa/")
	if !ok || ns == "" || strings.IndexByte(ns, '/') >= 0 {
		return ""
	}
	return ns
}

// hostNames expands the short host names requests carry into the service
// FQDNs that cluster names use (reviews -> reviews.<ns>.svc.<domain>), so
// that both reporters name a service alike. It belongs to one stream and
// remembers what it built, up to a bound.
type hostNames struct {
	namespace, domain string
	m                 map[string]string
}

const maxHostNames = 1024

func (h *hostNames) service(host []byte) string {
	if h.namespace == "" {
		return transient(host)
	}
	if s, ok := h.m[transient(host)]; ok {
		return s
	}
	var suffix string
	switch name, rest, _ := bytes.Cut(host, []byte(".")); {
	case len(name) == 0:
		return transient(host)
	case len(rest) == 0: // reviews
		if bytes.IndexByte(host, ':') >= 0 { // an IPv6 address
			return transient(host)
		}
		suffix = "." + h.namespace + ".svc." + h.domain
	case string(rest) == h.namespace: // reviews.<this namespace>
		suffix = ".svc." + h.domain
	case bytes.Count(rest, []byte(".")) == 1 && bytes.HasSuffix(rest, []byte(".svc")): // reviews.ns.svc
		suffix = "." + h.domain
	default:
		return transient(host)
	}
	s := string(host) + suffix
	if h.m == nil || len(h.m) >= maxHostNames {
		h.m = make(map[string]string)
	}
	h.m[string(host)] = s
	return s
}

// identity is who a stream's proxy is, from its node.
type identity struct {
	nodeID                         string
	workload, namespace, principal string
	// reporter is what the stream's log name says, or "" to judge each
	// entry by its cluster name.
	reporter string
	gateway  bool
}

var anonymous = identity{workload: unknown, namespace: unknown, principal: unknown}

func identityOf(p *xdsapi.Proxy, logName string) identity {
	id := identity{nodeID: p.ID, workload: workloadName(p), namespace: p.Namespace, principal: p.Identity,
		reporter: reporterOf(logName), gateway: p.Type == xdsapi.Gateway}
	if id.namespace == "" {
		id.namespace = unknown
	}
	if id.principal == "" {
		id.principal = unknown
	}
	if id.gateway {
		id.reporter = reporterSource
	}
	return id
}

// labels fills the labels of t that every entry kind has, from the stream's
// identity and the entry. Strings may be transient (see transient).
func (s *stream) labels(c *alswire.Common, authority []byte, t *series.Tuple) {
	reporter := s.id.reporter
	if reporter == "" {
		reporter = reporterSource
		if bytes.HasPrefix(c.UpstreamCluster, inboundPrefix) {
			reporter = reporterDestination
		}
	}
	t[series.Reporter] = reporter
	if reporter == reporterDestination {
		t[series.DestinationWorkload], t[series.DestinationNamespace] = s.id.workload, s.id.namespace
		principal := unknown
		if len(c.PeerURI) > 0 {
			principal = transient(c.PeerURI)
		}
		t[series.SourcePrincipal] = principal
		t[series.SourceWorkload], t[series.SourceNamespace] = unknown, unknown
		if ns := namespaceOf(principal); ns != "" {
			t[series.SourceNamespace] = ns
		}
		ip := c.DownstreamDirectRemote.IP
		if len(ip) == 0 {
			ip = c.DownstreamRemote.IP
		}
		// The address names the workload unless the certificate says it
		// is someone else.
		if p, ok := s.r.peers.lookup(ip); ok && (principal == unknown || principal == p.principal) {
			t[series.SourceWorkload], t[series.SourceNamespace] = p.workload, p.namespace
		}
		t[series.SecurityPolicy] = policyNone
		if c.PeerCert {
			t[series.SecurityPolicy] = policyMutualTLS
		}
	} else {
		t[series.SourceWorkload], t[series.SourceNamespace], t[series.SourcePrincipal] = s.id.workload, s.id.namespace, s.id.principal
		t[series.DestinationWorkload], t[series.DestinationNamespace] = unknown, unknown
		if p, ok := s.r.peers.lookup(c.UpstreamRemote.IP); ok {
			t[series.DestinationWorkload], t[series.DestinationNamespace] = p.workload, p.namespace
		}
		t[series.SecurityPolicy] = unknown
	}
	switch host := clusterHost(c.UpstreamCluster); {
	case len(host) > 0:
		t[series.DestinationService] = transient(host)
	case len(authority) > 0:
		t[series.DestinationService] = s.hosts.service(authorityHost(authority))
	default:
		t[series.DestinationService] = unknown
	}
}

// peerInfo is what an address tells about the workload behind it.
type peerInfo struct{ workload, namespace, principal string }

// peers maps proxy addresses to workloads, from the nodes of connected
// proxies: xDS streams (the xds module's connect events) and access-log
// streams. The receiver reads an immutable snapshot; changes rebuild it,
// coalesced by the module's run loop.
type peers struct {
	snap atomic.Pointer[map[string]peerInfo]

	mu    sync.Mutex
	seq   uint64
	conns map[string]peerConn
	dirty chan struct{} // 1-slot: a rebuild is due
}

type peerConn struct {
	seq  uint64
	ips  []string
	info peerInfo
}

func newPeers() *peers {
	p := &peers{conns: map[string]peerConn{}, dirty: make(chan struct{}, 1)}
	p.snap.Store(&map[string]peerInfo{})
	return p
}

func (p *peers) lookup(ip []byte) (peerInfo, bool) {
	if len(ip) == 0 {
		return peerInfo{}, false
	}
	info, ok := (*p.snap.Load())[transient(ip)]
	return info, ok
}

// add records the proxy of a connection (an xDS or access-log stream).
func (p *peers) add(conn string, px *xdsapi.Proxy) {
	if len(px.IPs) == 0 {
		return
	}
	c := peerConn{info: peerInfo{workload: workloadName(px), namespace: px.Namespace, principal: px.Identity}}
	if c.info.namespace == "" {
		c.info.namespace = unknown
	}
	if c.info.principal == "" {
		c.info.principal = unknown
	}
	for _, ip := range px.IPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			c.ips = append(c.ips, a.Unmap().String())
		}
	}
	p.mu.Lock()
	p.seq++
	c.seq = p.seq
	p.conns[conn] = c
	p.mu.Unlock()
	p.changed()
}

func (p *peers) remove(conn string) {
	p.mu.Lock()
	_, ok := p.conns[conn]
	delete(p.conns, conn)
	p.mu.Unlock()
	if ok {
		p.changed()
	}
}

// retain forgets connections keep says no to (after missed events).
func (p *peers) retain(keep func(conn string) bool) {
	p.mu.Lock()
	for conn := range p.conns {
		if !keep(conn) {
			delete(p.conns, conn)
		}
	}
	p.mu.Unlock()
	p.changed()
}

func (p *peers) changed() {
	select {
	case p.dirty <- struct{}{}:
	default:
	}
}

// rebuild publishes a new snapshot; of two proxies claiming one address,
// the one that connected last wins. It returns the number of addresses.
func (p *peers) rebuild() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := make(map[string]peerInfo, len(p.conns))
	seqs := make(map[string]uint64, len(p.conns))
	for _, c := range p.conns {
		for _, ip := range c.ips {
			if seqs[ip] < c.seq {
				m[ip], seqs[ip] = c.info, c.seq
			}
		}
	}
	p.snap.Store(&m)
	return len(m)
}
