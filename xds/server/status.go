package server

import (
	"encoding/json"
	"slices"
	"strings"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/xds/api"
)

// sentRec is one response written to a stream.
type sentRec struct {
	nonce, version string
	at, trigger    time.Time
	snap           *snapshot // the set the response brought the stream to
}

// typeStatus is one stream's ACK/NACK record for one type. Guarded by conn.smu.
type typeStatus struct {
	last      sentRec
	lastSnap  *snapshot // of last, to name the resources a NACK mentions
	older     [3]sentRec
	resources int
	bytes     int
	responses uint64

	versionAcked, nonceAcked string
	ackedSnap                *snapshot // the set the proxy acknowledged holding
	ackedAt                  time.Time
	timeToAck                time.Duration
	lastNack                 *api.Nack

	// eff is the set the proxy holds once it takes the last response:
	// lastSnap, or a later set that changed nothing it subscribes to
	// (xdsCache.skipTo). Its revision is the one the proxy runs when that
	// response is acknowledged.
	eff *snapshot
}

// revisions returns the config revision of what was last sent and of what
// the proxy last acknowledged (see api.TypeStatus). Caller holds conn.smu.
func (st *typeStatus) revisions() (sent, acked uint64) {
	if st.eff != nil {
		sent = st.eff.rev.Load()
	}
	switch {
	case st.last.nonce != "" && st.nonceAcked == st.last.nonce:
		acked = sent
	case st.ackedSnap != nil:
		acked = st.ackedSnap.rev.Load()
	}
	return sent, acked
}

func (st *typeStatus) find(nonce string) (*sentRec, bool) {
	if st.last.nonce == nonce {
		return &st.last, true
	}
	for i := range st.older {
		if st.older[i].nonce == nonce {
			return &st.older[i], true
		}
	}
	return nil, false
}

func (st *typeStatus) state() api.SyncState {
	switch {
	case st.last.nonce == "":
		return api.NotSent
	case st.lastNack != nil && st.lastNack.Nonce == st.last.nonce:
		return api.Nacked
	case st.nonceAcked == st.last.nonce:
		return api.Synced
	}
	return api.Stale
}

func (c *conn) statusFor(typeURL string) *typeStatus {
	// Entries are never removed, so the last one found stays valid: a
	// stream's requests and responses are mostly of one type.
	if c.lastSt != nil && c.lastURL == typeURL {
		return c.lastSt
	}
	st := c.status[typeURL]
	if st == nil {
		st = &typeStatus{}
		c.status[typeURL] = st
	}
	c.lastURL, c.lastSt = typeURL, st
	return st
}

// sent records a response about to be written.
func (c *conn) sent(typeURL, nonce, version string, resources, bytes int, snap *snapshot, trigger time.Time) {
	c.smu.Lock()
	defer c.smu.Unlock()
	st := c.statusFor(typeURL)
	copy(st.older[1:], st.older[:len(st.older)-1])
	st.older[0] = st.last
	st.last = sentRec{nonce: nonce, version: version, at: time.Now(), trigger: trigger, snap: snap}
	st.lastSnap, st.eff = snap, snap
	st.resources, st.bytes = resources, bytes
	st.responses++
}

// maxNackMessage bounds the error detail kept per stream and type.
const maxNackMessage = 4096

// request records what a request says about earlier responses: an ACK
// (a nonce and no error) or a NACK (a nonce and an error detail). A NACK is
// reported once per rejected response: logged, counted, published.
func (c *conn) request(s *Server, typeURL, nonce string, detail *rpcstatus.Status) {
	c.smu.Lock()
	st := c.statusFor(typeURL)
	if nonce == "" {
		c.smu.Unlock()
		return
	}
	rec, ok := st.find(nonce)
	if !ok { // older than we remember, or from before a reconnect
		c.smu.Unlock()
		return
	}
	now := time.Now()
	if detail != nil {
		if st.lastNack != nil && st.lastNack.Nonce == nonce {
			c.smu.Unlock()
			return
		}
		msg := detail.GetMessage()
		if len(msg) > maxNackMessage {
			msg = msg[:maxNackMessage] + "..."
		}
		n := api.Nack{Version: rec.version, Nonce: nonce, At: now, Code: detail.GetCode(), Message: msg}
		if rec == &st.last && st.lastSnap != nil {
			n.Resources = mentioned(st.lastSnap, msg)
		}
		st.lastNack = &n
		c.smu.Unlock()
		short := api.ShortType(typeURL)
		s.m.rejects.WithLabelValues(short).Inc()
		s.log.Warn("xds proxy rejected config; it keeps its last good version, which is not sent again until the config changes",
			"proxy", c.proxy.ID, "conn", c.id, "type", short, "version", n.Version, "resources", n.Resources, "error", msg)
		s.opts.Publish(api.ProxyNacked{ConnID: c.id, ProxyID: c.proxy.ID, TypeURL: typeURL, Nack: n})
		return
	}
	if st.nonceAcked == nonce {
		c.smu.Unlock()
		return
	}
	st.versionAcked, st.nonceAcked, st.ackedAt = rec.version, nonce, now
	st.ackedSnap = rec.snap
	st.timeToAck = now.Sub(rec.at)
	trigger := rec.trigger
	rec.trigger = time.Time{}
	c.smu.Unlock()
	if !trigger.IsZero() {
		s.m.convergence.Observe(now.Sub(trigger).Seconds())
	}
}

// mentioned returns the names of snap's resources that msg mentions: Envoy
// and grpc-go name the resource they reject in the error detail.
func mentioned(snap *snapshot, msg string) []string {
	var out []string
	for _, e := range snap.sorted {
		if strings.Contains(msg, e.name) {
			out = append(out, e.name)
			if len(out) == 20 {
				break
			}
		}
	}
	return out
}

func typeOrder(url string) int {
	if i := slices.Index(pushOrder, url); i >= 0 {
		return i
	}
	return len(pushOrder)
}

func compareTypes(a, b string) int {
	if oa, ob := typeOrder(a), typeOrder(b); oa != ob {
		return oa - ob
	}
	return strings.Compare(a, b)
}

// statuses returns every stream's status, sorted by proxy ID then stream.
func (x *xdsCache) statuses() []api.ProxyStatus {
	x.mu.Lock()
	conns := make([]*conn, 0, len(x.conns))
	for _, c := range x.conns {
		conns = append(conns, c)
	}
	x.mu.Unlock()
	out := make([]api.ProxyStatus, 0, len(conns))
	for _, c := range conns {
		p := c.proxy
		ps := api.ProxyStatus{ID: p.ID, ConnID: c.id, Type: p.Type, Namespace: p.Namespace, ServiceAccount: p.ServiceAccount,
			Identity: p.Identity, IdentityVerified: p.IdentityVerified, ClusterID: p.ClusterID,
			Address: c.addr, Delta: c.delta, ConnectedAt: c.connectedAt}
		c.smu.Lock()
		for url, st := range c.status {
			ts := api.TypeStatus{TypeURL: url, State: st.state(),
				VersionSent: st.last.version, NonceSent: st.last.nonce, SentAt: st.last.at,
				ResourcesSent: st.resources, BytesSent: st.bytes, Responses: st.responses,
				VersionAcked: st.versionAcked, NonceAcked: st.nonceAcked, AckedAt: st.ackedAt,
				TimeToAckMillis: float64(st.timeToAck.Microseconds()) / 1000}
			ts.RevisionSent, ts.RevisionAcked = st.revisions()
			if st.lastNack != nil {
				n := *st.lastNack
				ts.LastNack = &n
			}
			ps.Types = append(ps.Types, ts)
		}
		c.smu.Unlock()
		slices.SortFunc(ps.Types, func(a, b api.TypeStatus) int { return compareTypes(a.TypeURL, b.TypeURL) })
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b api.ProxyStatus) int {
		if c := strings.Compare(a.ID, b.ID); c != 0 {
			return c
		}
		return strings.Compare(a.ConnID, b.ConnID)
	})
	return out
}

// proxiesBehind counts the proxies (node IDs) with a type, on any of their
// streams, whose acknowledged config revision is below the latest one a
// push carried: still on older config, waiting for an ACK, or NACKed. Types
// never sent anything do not count. It runs at scrape time, so pushes and
// ACKs pay nothing for it.
func (x *xdsCache) proxiesBehind() float64 {
	x.mu.Lock()
	rev := x.rev
	conns := make([]*conn, 0, len(x.conns))
	for _, c := range x.conns {
		conns = append(conns, c)
	}
	x.mu.Unlock()
	if rev == 0 {
		return 0
	}
	behind := map[string]struct{}{}
	for _, c := range conns {
		c.smu.Lock()
		for _, st := range c.status {
			if st.last.nonce == "" {
				continue
			}
			if _, acked := st.revisions(); acked < rev {
				behind[c.proxy.ID] = struct{}{}
				break
			}
		}
		c.smu.Unlock()
	}
	return float64(len(behind))
}

// ackedVersions returns, for every stream subscribed to typeURL, the
// generator version (api.Resource.Version) of resource name in the set it
// last acknowledged, or "" when it acknowledged nothing yet, that set lacks
// the name, or the generator gave no version.
func (x *xdsCache) ackedVersions(typeURL, name string) []string {
	x.mu.Lock()
	conns := make([]*conn, 0, len(x.conns))
	for _, c := range x.conns {
		conns = append(conns, c)
	}
	x.mu.Unlock()
	var out []string
	for _, c := range conns {
		c.smu.Lock()
		if st := c.status[typeURL]; st != nil {
			v := ""
			if st.nonceAcked != "" && st.ackedSnap != nil {
				if e := st.ackedSnap.entries[name]; e != nil {
					v = e.srcVer
				}
			}
			out = append(out, v)
		}
		c.smu.Unlock()
	}
	return out
}

// ConfigDump returns, as JSON, what each stream of proxy id (a node ID or a
// conn ID) was last sent, resources rendered with protojson. found is false
// when no stream matches.
func (s *Server) ConfigDump(id string) (out []byte, found bool, err error) {
	x := s.cache
	type typeDump struct {
		TypeURL   string            `json:"typeUrl"`
		Version   string            `json:"version"`
		Resources []json.RawMessage `json:"resources"`
	}
	type connDump struct {
		ID     string     `json:"id"`
		ConnID string     `json:"connId"`
		Types  []typeDump `json:"types"`
	}
	var dumps []connDump
	x.mu.Lock()
	var raw []*discovery.DiscoveryResponse
	var owners []int
	for _, c := range x.conns {
		if c.proxy.ID != id && c.id != id {
			continue
		}
		dumps = append(dumps, connDump{ID: c.proxy.ID, ConnID: c.id})
		urls := make([]string, 0, len(c.types))
		for url := range c.types {
			urls = append(urls, url)
		}
		slices.SortFunc(urls, compareTypes)
		for _, url := range urls {
			ct := c.types[url]
			c.mu.Lock()
			snap := ct.sentSnap
			c.mu.Unlock()
			if snap == nil {
				continue
			}
			var anys []*anypb.Any
			if w := ct.w; w != nil && !w.wild {
				for _, e := range pick(snap, w.names) {
					anys = append(anys, e.any)
				}
			} else {
				anys = snap.allAnys()
			}
			raw = append(raw, &discovery.DiscoveryResponse{TypeUrl: url, VersionInfo: snap.version, Resources: anys})
			owners = append(owners, len(dumps)-1)
		}
	}
	x.mu.Unlock()
	if len(dumps) == 0 {
		return nil, false, nil
	}
	for i, r := range raw {
		td := typeDump{TypeURL: r.TypeUrl, Version: r.VersionInfo}
		for _, a := range r.Resources {
			b, err := protojson.Marshal(a)
			if err != nil {
				b, _ = json.Marshal(map[string]string{"@type": a.GetTypeUrl(), "error": err.Error()})
			}
			td.Resources = append(td.Resources, b)
		}
		d := &dumps[owners[i]]
		d.Types = append(d.Types, td)
	}
	slices.SortFunc(dumps, func(a, b connDump) int { return strings.Compare(a.ConnID, b.ConnID) })
	out, err = json.MarshalIndent(struct {
		Proxy       string     `json:"proxy"`
		Connections []connDump `json:"connections"`
	}{id, dumps}, "", "  ")
	return out, true, err
}
