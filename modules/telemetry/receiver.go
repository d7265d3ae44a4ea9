package telemetry

import (
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/meshd/meshd/modules/telemetry/api"
	"github.com/meshd/meshd/modules/telemetry/internal/alswire"
	"github.com/meshd/meshd/modules/telemetry/internal/series"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// Per-stream cache sizes: how many label tuples a stream keeps resolved.
// A stream is one proxy worker's, so it sees few distinct tuples; beyond
// this it just asks the family again.
const streamCacheSize = 256

// receiver is the access-log service: envoy.service.accesslog.v3.
// AccessLogService/StreamAccessLogs on the xDS ports.
//
// Each message is received as raw bytes (the service's messages are
// decoded by package alswire, not by protobuf-go), checked against the
// limits, and its entries turned into request metrics on the receiving
// goroutine; records for the sinks are built only when a sink is
// registered.
type receiver struct {
	alsv3.UnimplementedAccessLogServiceServer

	// counters first, for alignment; /debug/telemetryz shows them
	nStreams                         atomic.Int64
	nHTTP, nTCP                      atomic.Uint64
	msgTooLarge, msgMalformed        atomic.Uint64
	entriesTooMany, entriesMalformed atomic.Uint64
	connSeq                          atomic.Uint64

	cfg         *ReceiverConfig
	trustDomain string
	domain      string // cluster domain, for expanding short host names
	m           *metrics
	http, tcp   *series.Family
	peers       *peers
	sinks       *sinks
	stop        chan struct{} // closed on shutdown: every stream ends
	stopOnce    sync.Once

	mu      sync.Mutex
	open    int
	perConn map[string]int
}

// StreamAccessLogs implements alsv3.AccessLogServiceServer. The receive
// loop runs on its own goroutine so that shutdown can end the stream
// without waiting for the proxy to send or close.
func (r *receiver) StreamAccessLogs(st alsv3.AccessLogService_StreamAccessLogsServer) error {
	ctx := st.Context()
	addr, verified := peerOf(ctx)
	release, err := r.acquire(addr)
	if err != nil {
		return err
	}
	s := &stream{r: r, id: anonymous, conn: "als/" + strconv.FormatUint(r.connSeq.Add(1), 10), verified: verified,
		httpCache: series.NewCache(streamCacheSize), tcpCache: series.NewCache(streamCacheSize),
		hosts: hostNames{domain: r.domain}}
	done := make(chan error, 1)
	go func() {
		defer release()
		defer r.peers.remove(s.conn)
		done <- s.serve(st)
	}()
	select {
	case err := <-done:
		return err
	case <-r.stop:
		return status.Error(codes.Unavailable, "meshd is shutting down")
	}
}

func peerOf(ctx context.Context) (addr, verified string) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", ""
	}
	if p.Addr != nil {
		addr = p.Addr.String()
	}
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 && len(ti.State.VerifiedChains[0]) > 0 {
		for _, u := range ti.State.VerifiedChains[0][0].URIs {
			if u.Scheme == "spiffe" {
				return addr, u.String()
			}
		}
	}
	return addr, ""
}

// acquire counts a stream against the limits.
func (r *receiver) acquire(addr string) (func(), error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var reason string
	switch {
	case r.open >= r.cfg.MaxStreams:
		reason = reasonMaxStreams
	case r.perConn[addr] >= r.cfg.MaxStreamsPerConnection:
		reason = reasonMaxStreamsPerConn
	}
	if reason != "" {
		r.m.streamsRejected.WithLabelValues(reason).Inc()
		return nil, status.Errorf(codes.ResourceExhausted, "telemetry: access-log stream limit reached (%s)", reason)
	}
	r.open++
	r.perConn[addr]++
	r.nStreams.Add(1)
	r.m.streams.Inc()
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.open--
		if r.perConn[addr]--; r.perConn[addr] == 0 {
			delete(r.perConn, addr)
		}
		r.nStreams.Add(-1)
		r.m.streams.Dec()
	}, nil
}

// shutdown ends every stream.
func (r *receiver) shutdown() { r.stopOnce.Do(func() { close(r.stop) }) }

// stream is one access-log stream: one proxy worker's log of one kind.
type stream struct {
	r        *receiver
	id       identity
	conn     string // key in peers
	verified string // SPIFFE ID of a verified client certificate

	msg       alswire.Message
	http      alswire.HTTPEntry
	tcp       alswire.TCPEntry
	tuple     series.Tuple
	httpCache *series.Cache
	tcpCache  *series.Cache
	hosts     hostNames
	records   []api.Record
}

func (s *stream) serve(st alsv3.AccessLogService_StreamAccessLogsServer) error {
	raw := new(emptypb.Empty) // keeps the whole message as unknown fields
	for {
		if err := st.RecvMsg(raw); err != nil {
			if errors.Is(err, io.EOF) {
				return st.SendAndClose(&alsv3.StreamAccessLogsResponse{})
			}
			return err
		}
		if err := s.handle(raw.ProtoReflect().GetUnknown(), time.Now()); err != nil {
			return err
		}
	}
}

// handle ingests one message. It returns an error only for a stream that
// must end (an identity its certificate contradicts).
func (s *stream) handle(b []byte, now time.Time) error {
	r := s.r
	if len(b) > r.cfg.MaxMessageBytes {
		r.dropMessage(&r.msgTooLarge, reasonTooLarge)
		return nil
	}
	if err := s.msg.Parse(b); err != nil {
		r.dropMessage(&r.msgMalformed, reasonMalformed)
		return nil
	}
	if s.msg.HasIdentifier {
		if err := s.identify(); err != nil {
			r.m.streamsRejected.WithLabelValues(reasonIdentity).Inc()
			return err
		}
	}
	sec := now.Unix()
	withRecords := r.sinks.active()
	if withRecords {
		s.records = nil // the batch goes to the sinks; start a new one
	}
	n, skipped := 0, 0
	for {
		raw, ok, err := s.msg.Next()
		if err != nil {
			r.dropEntries(&r.entriesMalformed, 1, reasonMalformed)
			break
		}
		if !ok {
			break
		}
		if n == r.cfg.MaxEntriesPerMessage {
			r.dropEntries(&r.entriesTooMany, 1+s.msg.Remaining(), reasonTooManyEntries)
			break
		}
		n++
		if err := s.ingest(raw, sec, withRecords); err != nil {
			r.dropEntries(&r.entriesMalformed, 1, reasonMalformed)
			skipped++
		}
	}
	if n -= skipped; n > 0 {
		kind := "http"
		if s.msg.Kind == alswire.KindTCP {
			kind = "tcp"
			r.nTCP.Add(uint64(n))
		} else {
			r.nHTTP.Add(uint64(n))
		}
		r.m.entries.WithLabelValues(kind).Add(float64(n))
	}
	if withRecords && len(s.records) > 0 {
		r.sinks.publish(s.records)
	}
	return nil
}

func (r *receiver) dropMessage(count *atomic.Uint64, reason string) {
	count.Add(1)
	r.m.msgDropped.WithLabelValues(reason).Inc()
}

func (r *receiver) dropEntries(count *atomic.Uint64, n int, reason string) {
	count.Add(uint64(n))
	r.m.entriesDropped.WithLabelValues(reason).Add(float64(n))
}

// identify learns the stream's proxy from the message's identifier. Envoy
// sends it on a stream's first message only.
func (s *stream) identify() error {
	logName := string(s.msg.LogName)
	if len(s.msg.Node) == 0 {
		s.id.reporter = reporterOf(logName)
		if s.id.gateway {
			s.id.reporter = reporterSource
		}
		return nil
	}
	var node corev3.Node
	for _, part := range s.msg.Node {
		if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(part, &node); err != nil {
			return status.Errorf(codes.InvalidArgument, "telemetry: identifier node: %v", err)
		}
	}
	p, err := xdsapi.ParseNode(&node, s.r.trustDomain)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "telemetry: %v", err)
	}
	if s.verified != "" {
		if p, err = p.WithVerifiedIdentity(s.verified); err != nil {
			return status.Errorf(codes.PermissionDenied, "telemetry: %v", err)
		}
	}
	s.id = identityOf(p, logName)
	s.hosts = hostNames{namespace: p.Namespace, domain: s.r.domain}
	s.r.peers.add(s.conn, p)
	return nil
}

// Access-log types that end a request or connection, and the one that
// opens a TCP connection.
const (
	typeNotSet   = int32(datav3.AccessLogType_NotSet)
	typeHTTPEnd  = int32(datav3.AccessLogType_DownstreamEnd)
	typeTCPStart = int32(datav3.AccessLogType_TcpConnectionStart)
	typeTCPEnd   = int32(datav3.AccessLogType_TcpConnectionEnd)
)

func (s *stream) ingest(raw []byte, now int64, withRecords bool) error {
	t := &s.tuple
	if s.msg.Kind == alswire.KindTCP {
		e := &s.tcp
		if err := e.Decode(raw); err != nil {
			return err
		}
		start, end := false, false
		switch e.AccessLogType {
		case typeTCPStart:
			start = true
		case typeTCPEnd:
			end = true
		case typeNotSet: // a proxy that logs only at the end
			start, end = true, true
		}
		if !start && !end {
			return nil
		}
		s.labels(&e.Common, nil, t)
		t[series.ResponseCode], t[series.GRPCStatus] = "", ""
		ser := s.tcpCache.Get(s.r.tcp, t, now)
		if start {
			ser.Observe(iOpened, 1)
		}
		if end {
			ser.Observe(iClosed, 1)
			ser.Observe(iReceived, float64(e.ReceivedBytes))
			ser.Observe(iSent, float64(e.SentBytes))
			if withRecords {
				s.records = append(s.records, s.record(api.KindTCP, &e.Common, t))
				rec := &s.records[len(s.records)-1]
				rec.BytesReceived, rec.BytesSent = e.ReceivedBytes, e.SentBytes
			}
		}
		return nil
	}

	e := &s.http
	if err := e.Decode(raw); err != nil {
		return err
	}
	if e.Intermediate || (e.AccessLogType != typeNotSet && e.AccessLogType != typeHTTPEnd) {
		return nil // start, periodic and upstream entries: the end one counts
	}
	s.labels(&e.Common, e.Authority, t)
	t[series.ResponseCode] = codeLabel(e.ResponseCode) // 0 when there was no response
	t[series.GRPCStatus] = grpcLabel(e.GRPCStatus)
	ser := s.httpCache.Get(s.r.http, t, now)
	ser.Observe(iRequests, 1)
	if ms, ok := millis(&e.Common); ok {
		ser.Observe(iDuration, ms)
	}
	ser.Observe(iRequestBytes, float64(e.RequestBodyBytes))
	ser.Observe(iResponseBytes, float64(e.ResponseBodyBytes))
	if withRecords {
		s.records = append(s.records, s.httpRecord(e, t))
	}
	return nil
}

// millis is the request duration in milliseconds: common.duration, or
// time_to_last_downstream_tx_byte from proxies that do not send it.
func millis(c *alswire.Common) (float64, bool) {
	d := c.Duration
	if !d.Set {
		d = c.ToLastDownstreamTx
	}
	if !d.Set {
		return 0, false
	}
	ms := float64(d.Seconds)*1e3 + float64(d.Nanos)/1e6
	return max(ms, 0), true
}

// durationOf is the request duration, as millis reads it.
func durationOf(c *alswire.Common) time.Duration {
	d := c.Duration
	if !d.Set {
		d = c.ToLastDownstreamTx
	}
	return max(time.Duration(d.Seconds)*time.Second+time.Duration(d.Nanos), 0)
}

// record builds the common part of a sink record. It copies every string:
// the tuple and the entry point into the message buffer.
func (s *stream) record(kind string, c *alswire.Common, t *series.Tuple) api.Record {
	r := api.Record{
		Kind:                     kind,
		Reporter:                 strings.Clone(t[series.Reporter]),
		Proxy:                    s.id.nodeID,
		SourceWorkload:           strings.Clone(t[series.SourceWorkload]),
		SourceNamespace:          strings.Clone(t[series.SourceNamespace]),
		SourcePrincipal:          strings.Clone(t[series.SourcePrincipal]),
		DestinationService:       strings.Clone(t[series.DestinationService]),
		DestinationWorkload:      strings.Clone(t[series.DestinationWorkload]),
		DestinationNamespace:     strings.Clone(t[series.DestinationNamespace]),
		ConnectionSecurityPolicy: t[series.SecurityPolicy],
		ResponseFlags:            responseFlags(c.ResponseFlags),
		Duration:                 durationOf(c),
		UpstreamCluster:          string(c.UpstreamCluster),
		UpstreamHost:             hostPort(c.UpstreamRemote),
		DownstreamPeer:           hostPort(c.DownstreamRemote),
	}
	if c.StartTime.Set {
		r.Start = time.Unix(c.StartTime.Seconds, int64(c.StartTime.Nanos)).UTC()
	}
	return r
}

func (s *stream) httpRecord(e *alswire.HTTPEntry, t *series.Tuple) api.Record {
	r := s.record(api.KindHTTP, &e.Common, t)
	r.Protocol = protocols[min(max(e.Protocol, 0), int32(len(protocols)-1))]
	if e.Method > 0 {
		r.Method = corev3.RequestMethod_name[e.Method]
	}
	r.Authority, r.Path, r.UserAgent, r.RequestID = string(e.Authority), string(e.Path), string(e.UserAgent), string(e.RequestID)
	r.ResponseCode, r.GRPCStatus = e.ResponseCode, string(e.GRPCStatus)
	r.BytesReceived, r.BytesSent = e.RequestBodyBytes, e.ResponseBodyBytes
	return r
}

var protocols = []string{"", "HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/3", ""}

func hostPort(a alswire.Address) string {
	if len(a.IP) == 0 {
		return ""
	}
	ip := string(a.IP)
	if strings.IndexByte(ip, ':') >= 0 {
		ip = "[" + ip + "]"
	}
	return ip + ":" + strconv.FormatUint(uint64(a.Port), 10)
}

// flagNames are Envoy's short response flags by field number of
// envoy.data.accesslog.v3.ResponseFlags (13, unauthorized_details, is a
// message and not among the bits).
var flagNames = [29]string{1: "LH", 2: "UH", 3: "UT", 4: "LR", 5: "UR", 6: "UF", 7: "UC", 8: "UO", 9: "NR",
	10: "DI", 11: "FI", 12: "RL", 14: "RLSE", 15: "DC", 16: "URX", 17: "SI", 18: "IH", 19: "DPE",
	20: "UMSDR", 21: "RFCF", 22: "NFCF", 23: "DT", 24: "UPE", 25: "NC", 26: "OM", 27: "DF", 28: "DR"}

func responseFlags(bits uint32) string {
	if bits == 0 {
		return ""
	}
	var b strings.Builder
	for n := 1; n < len(flagNames); n++ {
		if bits&(1<<(n-1)) != 0 && flagNames[n] != "" {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(flagNames[n])
		}
	}
	return b.String()
}
