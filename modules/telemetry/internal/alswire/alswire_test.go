package alswire

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// view is what a test compares: every field the decoder reads, as plain
// values, with presence made explicit.
type view struct {
	Identifier bool
	Node       string // the merged node, marshalled deterministically
	LogName    string
	Kind       Kind
	Entries    []entryView
}

type entryView struct {
	DownstreamRemote, DownstreamDirectRemote, UpstreamRemote string
	TLS, PeerCert                                            bool
	PeerURI, LocalURI                                        *string
	Start, Duration, ToLast                                  string
	UpstreamCluster                                          string
	Flags                                                    uint32
	Intermediate                                             bool
	Type                                                     int32

	Protocol, Method                      int32
	Authority, Path, UserAgent, RequestID string
	ReqBody, RespBody                     uint64
	Code                                  uint32
	HasCode                               bool
	GRPCStatus                            *string
	Received, Sent                        uint64
}

func ptr(b []byte) *string {
	if b == nil {
		return nil
	}
	s := string(b)
	return &s
}

func addr(a Address) string { return fmt.Sprintf("%s:%d", a.IP, a.Port) }

func dur(d Duration) string {
	if !d.Set {
		return "-"
	}
	return fmt.Sprintf("%d.%d", d.Seconds, d.Nanos)
}

func commonView(c *Common) entryView {
	return entryView{
		DownstreamRemote: addr(c.DownstreamRemote), DownstreamDirectRemote: addr(c.DownstreamDirectRemote),
		UpstreamRemote: addr(c.UpstreamRemote), TLS: c.TLS, PeerCert: c.PeerCert,
		PeerURI: ptr(c.PeerURI), LocalURI: ptr(c.LocalURI),
		Start: dur(c.StartTime), Duration: dur(c.Duration), ToLast: dur(c.ToLastDownstreamTx),
		UpstreamCluster: string(c.UpstreamCluster), Flags: c.ResponseFlags, Intermediate: c.Intermediate,
		Type: c.AccessLogType,
	}
}

// decode is the decoder under test.
func decode(b []byte) (view, error) {
	var m Message
	if err := m.Parse(b); err != nil {
		return view{}, err
	}
	v := view{Identifier: m.HasIdentifier, LogName: string(m.LogName), Kind: m.Kind}
	if len(m.Node) > 0 {
		var node corev3.Node
		for _, part := range m.Node {
			if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(part, &node); err != nil {
				return view{}, err
			}
		}
		v.Node = detString(&node)
	}
	var h HTTPEntry
	var t TCPEntry
	for {
		raw, ok, err := m.Next()
		if err != nil {
			return view{}, err
		}
		if !ok {
			break
		}
		switch m.Kind {
		case KindHTTP:
			if err := h.Decode(raw); err != nil {
				return view{}, err
			}
			ev := commonView(&h.Common)
			ev.Protocol, ev.Method = h.Protocol, h.Method
			ev.Authority, ev.Path, ev.UserAgent, ev.RequestID = string(h.Authority), string(h.Path), string(h.UserAgent), string(h.RequestID)
			ev.ReqBody, ev.RespBody, ev.Code, ev.HasCode = h.RequestBodyBytes, h.ResponseBodyBytes, h.ResponseCode, h.HasResponseCode
			ev.GRPCStatus = ptr(h.GRPCStatus)
			v.Entries = append(v.Entries, ev)
		case KindTCP:
			if err := t.Decode(raw); err != nil {
				return view{}, err
			}
			ev := commonView(&t.Common)
			ev.Received, ev.Sent = t.ReceivedBytes, t.SentBytes
			v.Entries = append(v.Entries, ev)
		}
	}
	return v, nil
}

func detString(m proto.Message) string {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// reference reads the same view from protobuf-go's generated messages.
func reference(b []byte) (view, error) {
	var msg alsv3.StreamAccessLogsMessage
	if err := proto.Unmarshal(b, &msg); err != nil {
		return view{}, err
	}
	v := view{}
	if id := msg.GetIdentifier(); id != nil {
		v.Identifier = true
		v.LogName = id.GetLogName()
		if id.GetNode() != nil {
			v.Node = detString(id.GetNode())
		}
	}
	switch l := msg.GetLogEntries().(type) {
	case *alsv3.StreamAccessLogsMessage_HttpLogs:
		v.Kind = KindHTTP
		for _, e := range l.HttpLogs.GetLogEntry() {
			ev := refCommon(e.GetCommonProperties())
			ev.Protocol = int32(e.GetProtocolVersion())
			r := e.GetRequest()
			ev.Method = int32(r.GetRequestMethod())
			ev.Authority, ev.Path, ev.UserAgent, ev.RequestID = r.GetAuthority(), r.GetPath(), r.GetUserAgent(), r.GetRequestId()
			ev.ReqBody = r.GetRequestBodyBytes()
			resp := e.GetResponse()
			ev.RespBody = resp.GetResponseBodyBytes()
			if resp.GetResponseCode() != nil {
				ev.HasCode, ev.Code = true, resp.GetResponseCode().GetValue()
			}
			if s, ok := resp.GetResponseTrailers()["grpc-status"]; ok {
				ev.GRPCStatus = &s
			} else if s, ok := resp.GetResponseHeaders()["grpc-status"]; ok {
				ev.GRPCStatus = &s
			}
			v.Entries = append(v.Entries, ev)
		}
	case *alsv3.StreamAccessLogsMessage_TcpLogs:
		v.Kind = KindTCP
		for _, e := range l.TcpLogs.GetLogEntry() {
			ev := refCommon(e.GetCommonProperties())
			ev.Received = e.GetConnectionProperties().GetReceivedBytes()
			ev.Sent = e.GetConnectionProperties().GetSentBytes()
			v.Entries = append(v.Entries, ev)
		}
	}
	return v, nil
}

func refAddr(a *corev3.Address) string {
	s := a.GetSocketAddress()
	return fmt.Sprintf("%s:%d", s.GetAddress(), s.GetPortValue())
}

func refDur(seconds int64, nanos int32, set bool) string {
	if !set {
		return "-"
	}
	return fmt.Sprintf("%d.%d", seconds, nanos)
}

func refURI(p *datav3.TLSProperties_CertificateProperties) *string {
	for _, san := range p.GetSubjectAltName() {
		if u, ok := san.GetSan().(*datav3.TLSProperties_CertificateProperties_SubjectAltName_Uri); ok {
			s := u.Uri
			return &s
		}
	}
	return nil
}

func refCommon(c *datav3.AccessLogCommon) entryView {
	ev := entryView{
		DownstreamRemote: refAddr(c.GetDownstreamRemoteAddress()), DownstreamDirectRemote: refAddr(c.GetDownstreamDirectRemoteAddress()),
		UpstreamRemote: refAddr(c.GetUpstreamRemoteAddress()),
		TLS:            c.GetTlsProperties() != nil, PeerCert: c.GetTlsProperties().GetPeerCertificateProperties() != nil,
		PeerURI:  refURI(c.GetTlsProperties().GetPeerCertificateProperties()),
		LocalURI: refURI(c.GetTlsProperties().GetLocalCertificateProperties()),
		Start:    refDur(c.GetStartTime().GetSeconds(), c.GetStartTime().GetNanos(), c.GetStartTime() != nil),
		Duration: refDur(c.GetDuration().GetSeconds(), c.GetDuration().GetNanos(), c.GetDuration() != nil),
		ToLast: refDur(c.GetTimeToLastDownstreamTxByte().GetSeconds(), c.GetTimeToLastDownstreamTxByte().GetNanos(),
			c.GetTimeToLastDownstreamTxByte() != nil),
		UpstreamCluster: c.GetUpstreamCluster(), Intermediate: c.GetIntermediateLogEntry(), Type: int32(c.GetAccessLogType()),
	}
	if f := c.GetResponseFlags(); f != nil {
		r := f.ProtoReflect()
		fields := r.Descriptor().Fields()
		for i := range fields.Len() {
			fd := fields.Get(i)
			if fd.Number() != 13 && r.Get(fd).Bool() {
				ev.Flags |= 1 << (fd.Number() - 1)
			}
		}
	}
	return ev
}

// gen builds random messages from go-control-plane's types.
type gen struct{ r *rand.Rand }

func (g gen) str(choices ...string) string { return choices[g.r.IntN(len(choices))] }
func (g gen) maybe() bool                  { return g.r.IntN(2) == 0 }

func (g gen) address() *corev3.Address {
	switch g.r.IntN(4) {
	case 0:
		return nil
	case 1:
		return &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/tmp/p"}}}
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: g.str("10.0.0.1", "10.0.0.2", "fd00::1", ""), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(g.r.IntN(70000))},
	}}}
}

func (g gen) certProps() *datav3.TLSProperties_CertificateProperties {
	if g.maybe() {
		return nil
	}
	p := &datav3.TLSProperties_CertificateProperties{Subject: "CN=x"}
	for range g.r.IntN(3) {
		if g.maybe() {
			p.SubjectAltName = append(p.SubjectAltName, &datav3.TLSProperties_CertificateProperties_SubjectAltName{
				San: &datav3.TLSProperties_CertificateProperties_SubjectAltName_Dns{Dns: "a.example"}})
		} else {
			p.SubjectAltName = append(p.SubjectAltName, &datav3.TLSProperties_CertificateProperties_SubjectAltName{
				San: &datav3.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: g.str("spiffe://cluster.local/ns/a/sa/b", "", "spiffe://x/ns/c/sa/d")}})
		}
	}
	return p
}

func (g gen) dur() *durationpb.Duration {
	if g.maybe() {
		return nil
	}
	return &durationpb.Duration{Seconds: int64(g.r.IntN(5)) - 1, Nanos: int32(g.r.IntN(1e9))}
}

func (g gen) common() *datav3.AccessLogCommon {
	if g.r.IntN(8) == 0 {
		return nil
	}
	c := &datav3.AccessLogCommon{
		SampleRate:                    1,
		DownstreamRemoteAddress:       g.address(),
		DownstreamDirectRemoteAddress: g.address(),
		DownstreamLocalAddress:        g.address(),
		UpstreamRemoteAddress:         g.address(),
		TimeToLastDownstreamTxByte:    g.dur(),
		TimeToFirstUpstreamRxByte:     g.dur(),
		Duration:                      g.dur(),
		UpstreamCluster:               g.str("", "outbound|9080||reviews.default.svc.cluster.local", "inbound|80||"),
		RouteName:                     "default",
		IntermediateLogEntry:          g.r.IntN(4) == 0,
		AccessLogType:                 datav3.AccessLogType(g.r.IntN(15)),
		CustomTags:                    map[string]string{"a": "b"},
	}
	if g.maybe() {
		c.StartTime = &timestamppb.Timestamp{Seconds: 1_700_000_000 + g.r.Int64N(1e6), Nanos: g.r.Int32N(1e9)}
	}
	if g.maybe() {
		c.TlsProperties = &datav3.TLSProperties{
			TlsVersion: datav3.TLSProperties_TLSv1_3, TlsSniHostname: "sni",
			PeerCertificateProperties: g.certProps(), LocalCertificateProperties: g.certProps(),
		}
	}
	if g.maybe() {
		c.ResponseFlags = &datav3.ResponseFlags{
			NoHealthyUpstream: g.maybe(), UpstreamRemoteReset: g.maybe(), NoRouteFound: g.maybe(),
			DownstreamRemoteReset: g.maybe(), UnauthorizedDetails: &datav3.ResponseFlags_Unauthorized{Reason: 1},
		}
	}
	return c
}

func (g gen) httpEntry() *datav3.HTTPAccessLogEntry {
	e := &datav3.HTTPAccessLogEntry{
		CommonProperties: g.common(),
		ProtocolVersion:  datav3.HTTPAccessLogEntry_HTTPVersion(g.r.IntN(5)),
	}
	if g.r.IntN(8) != 0 {
		e.Request = &datav3.HTTPRequestProperties{
			RequestMethod: corev3.RequestMethod(g.r.IntN(10)), Scheme: "http",
			Authority: g.str("reviews:9080", "", "ratings.default.svc.cluster.local"), Path: g.str("/", "/api/v1?x=1"),
			UserAgent: "curl/8", RequestId: "id-1", RequestBodyBytes: g.r.Uint64N(1 << 20),
			RequestHeaders: map[string]string{"x": "y"}, Port: wrapperspb.UInt32(80),
		}
	}
	if g.r.IntN(8) != 0 {
		e.Response = &datav3.HTTPResponseProperties{ResponseBodyBytes: g.r.Uint64N(1 << 20), ResponseCodeDetails: "via_upstream"}
		if g.r.IntN(6) != 0 {
			e.Response.ResponseCode = wrapperspb.UInt32(uint32(g.str("200", "404", "503", "0")[0]-'0') * 100)
		}
		if g.maybe() {
			e.Response.ResponseHeaders = map[string]string{"grpc-status": g.str("0", "14"), "content-type": "application/grpc"}
		}
		if g.maybe() {
			e.Response.ResponseTrailers = map[string]string{"grpc-status": g.str("2", "")}
		}
	}
	return e
}

func (g gen) tcpEntry() *datav3.TCPAccessLogEntry {
	e := &datav3.TCPAccessLogEntry{CommonProperties: g.common()}
	if g.maybe() {
		e.ConnectionProperties = &datav3.ConnectionProperties{ReceivedBytes: g.r.Uint64(), SentBytes: g.r.Uint64N(100)}
	}
	return e
}

func (g gen) message() *alsv3.StreamAccessLogsMessage {
	m := &alsv3.StreamAccessLogsMessage{}
	if g.maybe() {
		m.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{LogName: g.str("meshd/inbound", "x")}
		if g.maybe() {
			m.Identifier.Node = &corev3.Node{Id: "sidecar~10.0.0.1~a.b~b.svc.cluster.local", Cluster: "c"}
		}
	}
	switch g.r.IntN(3) {
	case 0:
		l := &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{}
		for range g.r.IntN(5) {
			l.LogEntry = append(l.LogEntry, g.httpEntry())
		}
		m.LogEntries = &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: l}
	case 1:
		l := &alsv3.StreamAccessLogsMessage_TCPAccessLogEntries{}
		for range g.r.IntN(5) {
			l.LogEntry = append(l.LogEntry, g.tcpEntry())
		}
		m.LogEntries = &alsv3.StreamAccessLogsMessage_TcpLogs{TcpLogs: l}
	}
	return m
}

func mustMarshal(t testing.TB, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mergedEntries builds an HTTP entries container whose one log_entry is the
// concatenation (that is, the protobuf merge) of several entries.
func mergedEntries(t testing.TB, entries ...*datav3.HTTPAccessLogEntry) []byte {
	var raw []byte
	for _, e := range entries {
		raw = append(raw, mustMarshal(t, e)...)
	}
	var list []byte
	list = protowire.AppendTag(list, 1, protowire.BytesType)
	list = protowire.AppendBytes(list, raw)
	var msg []byte
	msg = protowire.AppendTag(msg, 2, protowire.BytesType)
	return protowire.AppendBytes(msg, list)
}

func compare(t *testing.T, b []byte) {
	t.Helper()
	want, werr := reference(b)
	got, gerr := decode(b)
	if werr != nil {
		return // protobuf-go rejects it; the decoder may salvage what it can
	}
	if gerr != nil {
		t.Fatalf("decoder fails where protobuf-go succeeds: %v", gerr)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decoder and protobuf-go differ\n got: %+v\nwant: %+v", got, want)
	}
}

// TestDifferential holds the decoder to protobuf-go on random messages,
// on concatenations of messages (protobuf's merge: a later singular field
// wins, repeated fields add up, a later oneof member replaces the earlier),
// and on entries that are merges of several entries.
func TestDifferential(t *testing.T) {
	g := gen{rand.New(rand.NewPCG(1, 2))}
	for i := range 3000 {
		a := mustMarshal(t, g.message())
		b := mustMarshal(t, g.message())
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			compare(t, a)
			compare(t, append(append([]byte(nil), a...), b...))
			compare(t, mergedEntries(t, g.httpEntry(), g.httpEntry(), g.httpEntry()))
		})
	}
}

func TestDecodeFields(t *testing.T) {
	e := &datav3.HTTPAccessLogEntry{
		CommonProperties: &datav3.AccessLogCommon{
			DownstreamRemoteAddress: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "10.1.2.3", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 4242}}}},
			TlsProperties: &datav3.TLSProperties{PeerCertificateProperties: &datav3.TLSProperties_CertificateProperties{
				SubjectAltName: []*datav3.TLSProperties_CertificateProperties_SubjectAltName{
					{San: &datav3.TLSProperties_CertificateProperties_SubjectAltName_Dns{Dns: "x"}},
					{San: &datav3.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: "spiffe://td/ns/a/sa/b"}},
				}}},
			Duration:        durationpb.New(1500_000_000),
			UpstreamCluster: "inbound|9080||",
			ResponseFlags:   &datav3.ResponseFlags{NoHealthyUpstream: true, DownstreamRemoteReset: true},
		},
		Request:  &datav3.HTTPRequestProperties{Authority: "reviews:9080", RequestBodyBytes: 10},
		Response: &datav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(503), ResponseBodyBytes: 20},
	}
	var h HTTPEntry
	if err := h.Decode(mustMarshal(t, e)); err != nil {
		t.Fatal(err)
	}
	switch {
	case string(h.DownstreamRemote.IP) != "10.1.2.3" || h.DownstreamRemote.Port != 4242:
		t.Errorf("downstream %s:%d", h.DownstreamRemote.IP, h.DownstreamRemote.Port)
	case !h.PeerCert || string(h.PeerURI) != "spiffe://td/ns/a/sa/b":
		t.Errorf("peer %v %q", h.PeerCert, h.PeerURI)
	case h.Duration.Seconds != 1 || h.Duration.Nanos != 500_000_000:
		t.Errorf("duration %+v", h.Duration)
	case !h.HasResponseCode || h.ResponseCode != 503 || h.RequestBodyBytes != 10 || h.ResponseBodyBytes != 20:
		t.Errorf("response %+v", h)
	case h.ResponseFlags != 1<<1|1<<27:
		t.Errorf("flags %b", h.ResponseFlags)
	case h.GRPCStatus != nil:
		t.Errorf("grpc status %q on a non-gRPC response", h.GRPCStatus)
	}
}

func TestMalformed(t *testing.T) {
	good := mustMarshal(t, &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: []*datav3.HTTPAccessLogEntry{{}, {}}}}})
	var m Message
	if err := m.Parse(good[:len(good)-1]); err == nil {
		t.Error("truncated message parsed")
	}
	// A broken entry container after two good entries: both come out,
	// then the error.
	bad := append(append([]byte(nil), good...), 0x12, 0x03, 0x0a, 0x05, 0x00)
	if err := m.Parse(bad); err != nil {
		t.Fatal(err)
	}
	if n := m.Remaining(); n != 2 {
		t.Errorf("Remaining = %d, want 2", n)
	}
	for i := range 2 {
		if _, ok, err := m.Next(); !ok || err != nil {
			t.Fatalf("entry %d: %v %v", i, ok, err)
		}
	}
	if _, ok, err := m.Next(); ok || err == nil {
		t.Fatalf("after the good entries: ok=%v err=%v, want an error", ok, err)
	}
	if _, ok, err := m.Next(); ok || err != nil {
		t.Fatalf("after the error: ok=%v err=%v, want the end", ok, err)
	}
}

func TestDecodeAllocates(t *testing.T) {
	g := gen{rand.New(rand.NewPCG(3, 4))}
	l := &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{}
	for range 50 {
		l.LogEntry = append(l.LogEntry, g.httpEntry())
	}
	b := mustMarshal(t, &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: l}})
	var m Message
	var h HTTPEntry
	allocs := testing.AllocsPerRun(100, func() {
		if err := m.Parse(b); err != nil {
			t.Fatal(err)
		}
		for {
			raw, ok, err := m.Next()
			if err != nil || !ok {
				break
			}
			if err := h.Decode(raw); err != nil {
				t.Fatal(err)
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per message, want 0", allocs)
	}
}

func FuzzDecode(f *testing.F) {
	g := gen{rand.New(rand.NewPCG(5, 6))}
	for range 20 {
		f.Add(mustMarshal(f, g.message()))
	}
	f.Add(mergedEntries(f, g.httpEntry(), g.httpEntry()))
	f.Fuzz(func(t *testing.T, b []byte) {
		compare(t, b)
	})
}
