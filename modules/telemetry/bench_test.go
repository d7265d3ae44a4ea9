package telemetry

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/xds/server"
	"github.com/meshd/meshd/xds/xdstest"
)

// entriesPerMessage is what one Envoy worker sends per message with the
// default 16 KiB buffer and entries of about 450 bytes.
const entriesPerMessage = 32

func sock(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

// realisticEntry is an inbound entry with the fields Envoy fills for an
// mTLS request: addresses, TLS properties with both certificates, the
// timings, headers sizes and the like. i varies the caller and the
// response, so a message spans a handful of series as a busy sidecar's do.
func realisticEntry(i int) *datav3.HTTPAccessLogEntry {
	caller := i % 8
	code := []uint32{200, 200, 200, 200, 201, 404, 503, 200}[i%8]
	d := func(ms int) *durationpb.Duration { return durationpb.New(time.Duration(ms) * time.Millisecond) }
	san := func(uri string) *datav3.TLSProperties_CertificateProperties {
		return &datav3.TLSProperties_CertificateProperties{Subject: "",
			SubjectAltName: []*datav3.TLSProperties_CertificateProperties_SubjectAltName{
				{San: &datav3.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: uri}}}}
	}
	e := &datav3.HTTPAccessLogEntry{
		ProtocolVersion: datav3.HTTPAccessLogEntry_HTTP11,
		CommonProperties: &datav3.AccessLogCommon{
			SampleRate:                    1,
			DownstreamRemoteAddress:       sock(fmt.Sprintf("10.0.1.%d", caller), uint32(40000+i)),
			DownstreamLocalAddress:        sock("10.0.0.2", 9080),
			DownstreamDirectRemoteAddress: sock(fmt.Sprintf("10.0.1.%d", caller), uint32(40000+i)),
			TlsProperties: &datav3.TLSProperties{
				TlsVersion: datav3.TLSProperties_TLSv1_3, TlsCipherSuite: wrapperspb.UInt32(0x1301),
				TlsSniHostname:             "outbound_.9080_._.reviews.default.svc.cluster.local",
				LocalCertificateProperties: san("spiffe://cluster.local/ns/default/sa/bookinfo-reviews"),
				PeerCertificateProperties:  san(fmt.Sprintf("spiffe://cluster.local/ns/default/sa/caller-%d", caller)),
			},
			StartTime:                   timestamppb.New(time.Unix(1_700_000_000, int64(i))),
			TimeToLastRxByte:            d(0),
			TimeToFirstUpstreamTxByte:   d(1),
			TimeToLastUpstreamTxByte:    d(1),
			TimeToFirstUpstreamRxByte:   d(3 + i%20),
			TimeToLastUpstreamRxByte:    d(4 + i%20),
			TimeToFirstDownstreamTxByte: d(3 + i%20),
			TimeToLastDownstreamTxByte:  d(4 + i%20),
			UpstreamRemoteAddress:       sock("10.0.0.2", 9080),
			UpstreamLocalAddress:        sock("127.0.0.6", uint32(50000+i)),
			UpstreamCluster:             "inbound|9080||",
			ResponseFlags:               &datav3.ResponseFlags{},
			RouteName:                   "default",
			Duration:                    d(4 + i%20),
			UpstreamRequestAttemptCount: 1,
			StreamId:                    "e7a4c5d2-0b1f-4d5e-9c3a-2f6b8d1e4a70",
			AccessLogType:               datav3.AccessLogType_DownstreamEnd,
		},
		Request: &datav3.HTTPRequestProperties{
			RequestMethod: corev3.RequestMethod_GET, Scheme: "http", Authority: "reviews:9080",
			Path: fmt.Sprintf("/reviews/%d", i%100), UserAgent: "Mozilla/5.0 (X11; Linux x86_64) productpage/1.0",
			RequestId: "2f1a9c64-7b0e-4b8f-a0c1-9d2e3f4a5b6c", RequestHeadersBytes: 612, RequestBodyBytes: uint64(i % 3 * 100),
		},
		Response: &datav3.HTTPResponseProperties{
			ResponseCode: wrapperspb.UInt32(code), ResponseHeadersBytes: 180, ResponseBodyBytes: uint64(300 + i%7*50),
			ResponseCodeDetails: "via_upstream",
		},
	}
	return e
}

func benchNode() *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{"NAMESPACE": "default", "SERVICE_ACCOUNT": "bookinfo-reviews",
		"WORKLOAD_NAME": "reviews-v1", "INSTANCE_IPS": "10.0.0.2"})
	return &corev3.Node{Id: "sidecar~10.0.0.2~reviews-v1-545d.default~default.svc.cluster.local", Metadata: md}
}

// benchMessages returns a stream's first message (identifier only) and a
// batch of HTTP entries.
func benchMessages(tb testing.TB, logName string) (first, batch []byte) {
	tb.Helper()
	first = marshal(tb, &alsv3.StreamAccessLogsMessage{Identifier: &alsv3.StreamAccessLogsMessage_Identifier{Node: benchNode(), LogName: logName}})
	entries := make([]*datav3.HTTPAccessLogEntry, entriesPerMessage)
	for i := range entries {
		entries[i] = realisticEntry(i)
	}
	return first, marshal(tb, httpMessage(entries...))
}

// cpuClock measures the CPU time a benchmark uses, with b's timer.
type cpuClock struct{ start time.Duration }

func startCPU(b *testing.B) *cpuClock {
	b.ResetTimer()
	return &cpuClock{start: cpuTime()}
}

// report gives throughput in two ways: per wall-clock second over all
// cores (entries/s, and divided by GOMAXPROCS) and per CPU-second
// (entries/cpu-s, which is what one core sustains, and cpu-ns/entry). The
// CPU figures hold on a machine shared with other work; the wall-clock
// ones only on an idle one.
func (c *cpuClock) report(b *testing.B, entries int) {
	cpu := cpuTime() - c.start
	wall := b.Elapsed().Seconds()
	b.ReportMetric(float64(entries)/wall, "entries/s")
	b.ReportMetric(float64(entries)/wall/float64(runtime.GOMAXPROCS(0)), "entries/s/core")
	if cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(entries), "cpu-ns/entry")
		b.ReportMetric(float64(entries)/cpu.Seconds(), "entries/cpu-s")
	}
}

// ingestBench runs messages through streams on every core, as
// concurrent access-log streams do: decode, labels, series lookup,
// observations (and records, with a sink).
func ingestBench(b *testing.B, m *Module, logName string, batch func(i int) []byte, perMsg int) {
	first, _ := benchMessages(b, logName)
	b.ReportAllocs()
	clock := startCPU(b)
	b.RunParallel(func(pb *testing.PB) {
		s := newStream(m)
		if err := s.handle(first, time.Now()); err != nil {
			b.Error(err)
			return
		}
		now := time.Now()
		for i := 0; pb.Next(); i++ {
			if err := s.handle(batch(i), now); err != nil {
				b.Error(err)
				return
			}
		}
	})
	clock.report(b, b.N*perMsg)
}

// BenchmarkIngestHTTP is the headline: realistic inbound HTTP entries on
// all cores, no sink.
func BenchmarkIngestHTTP(b *testing.B) {
	m, _ := newModule(b, Default())
	_, msg := benchMessages(b, logHTTPInbound)
	ingestBench(b, m, logHTTPInbound, func(int) []byte { return msg }, entriesPerMessage)
}

// BenchmarkIngestHTTPOutbound: the source reporter (upstream address
// lookup, service from the cluster name).
func BenchmarkIngestHTTPOutbound(b *testing.B) {
	m, _ := newModule(b, Default())
	entries := make([]*datav3.HTTPAccessLogEntry, entriesPerMessage)
	for i := range entries {
		e := realisticEntry(i)
		e.CommonProperties.UpstreamCluster = fmt.Sprintf("outbound|9080|v%d|reviews.default.svc.cluster.local", i%3)
		e.CommonProperties.UpstreamRemoteAddress = sock(fmt.Sprintf("10.0.2.%d", i%3), 9080)
		e.CommonProperties.TlsProperties = nil
		entries[i] = e
	}
	msg := marshal(b, httpMessage(entries...))
	ingestBench(b, m, logHTTPOutbound, func(int) []byte { return msg }, entriesPerMessage)
}

// BenchmarkIngestFlood: every entry a new label combination, all beyond
// the series limit (the overflow path a misbehaving proxy drives).
func BenchmarkIngestFlood(b *testing.B) {
	cfg := Default()
	cfg.Metrics.MaxSeries = 100
	m, _ := newModule(b, cfg)
	const msgs = 64
	batches := make([][]byte, msgs)
	for j := range batches {
		entries := make([]*datav3.HTTPAccessLogEntry, entriesPerMessage)
		for i := range entries {
			e := realisticEntry(i)
			e.Request.Authority = fmt.Sprintf("svc-%d-%d.example.com", j, i)
			entries[i] = e
		}
		batches[j] = marshal(b, httpMessage(entries...))
	}
	ingestBench(b, m, logHTTPInbound, func(i int) []byte { return batches[i%msgs] }, entriesPerMessage)
}

// BenchmarkIngestWithFileSink: records built for a sink and written as
// JSON lines by the file sink (rotating at 64 MiB).
func BenchmarkIngestWithFileSink(b *testing.B) {
	cfg := Default()
	cfg.SinkQueue = 1 << 16 // measure the work, not drops
	cfg.FileSink = FileSinkConfig{Path: filepath.Join(b.TempDir(), "access.jsonl"), MaxBytes: 64 << 20, MaxBackups: 1}
	m, _ := newModule(b, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { m.sinks.run(ctx) })
	_, msg := benchMessages(b, logHTTPInbound)
	ingestBench(b, m, logHTTPInbound, func(int) []byte { return msg }, entriesPerMessage)
	// Wait for the sink to drain, so its work counts.
	for m.sinks.status()[0].Queued > 0 {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	cancel()
	wg.Wait()
	if st := m.sinks.status()[0]; st.Dropped > 0 || st.Errors > 0 {
		b.Fatalf("sink %+v", st)
	}
}

// BenchmarkIngestGRPC: end to end over loopback through the xds module's
// gRPC server (its codec, limits and keepalive): one client stream per
// core sends pre-encoded messages, the receiver ingests them. Client and
// server share the cores, so this understates what the server alone does.
func BenchmarkIngestGRPC(b *testing.B) {
	m, _ := newModule(b, Default())
	srv := server.New(server.Options{TrustDomain: "cluster.local", Logger: m.log})
	if err := srv.RegisterService(m.registerALS, false); err != nil {
		b.Fatal(err)
	}
	g := srv.NewGRPCServer(nil)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Serve(lis) })
	defer func() { srv.Stop(); g.Stop(); wg.Wait() }()
	cc := xdstest.Dial(b, lis.Addr().String())

	first, msg := benchMessages(b, logHTTPInbound)
	b.ReportAllocs()
	clock := startCPU(b)
	b.RunParallel(func(pb *testing.PB) {
		st, err := alsv3.NewAccessLogServiceClient(cc).StreamAccessLogs(context.Background())
		if err != nil {
			b.Error(err)
			return
		}
		if err := st.SendMsg(raw(first)); err != nil {
			b.Error(err)
			return
		}
		m := raw(msg)
		for pb.Next() {
			if err := st.SendMsg(m); err != nil {
				b.Error(err)
				return
			}
		}
		if _, err := st.CloseAndRecv(); err != nil { // everything sent is ingested
			b.Error(err)
		}
	})
	clock.report(b, b.N*entriesPerMessage)
	if got := m.recv.nHTTP.Load(); got != uint64(b.N*entriesPerMessage) {
		b.Fatalf("ingested %d entries, sent %d", got, b.N*entriesPerMessage)
	}
}

// raw is a message already in wire form: an Empty whose unknown fields
// are the bytes, which marshals to exactly them.
func raw(b []byte) *emptypb.Empty {
	e := &emptypb.Empty{}
	e.ProtoReflect().SetUnknown(b)
	return e
}
