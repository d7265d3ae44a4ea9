package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/bus"
	"github.com/meshd/meshd/modules/telemetry/api"
	"github.com/meshd/meshd/modules/telemetry/internal/series"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// newModule provisions a module without a host.
func newModule(t testing.TB, cfg *Config) (*Module, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	m := new(Module)
	if err := m.setup(deps{cfg: cfg, log: slog.New(slog.DiscardHandler), reg: reg, trustDomain: "cluster.local", clusterDomain: "cluster.local"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Cleanup() })
	return m, reg
}

func newStream(m *Module) *stream {
	return &stream{r: m.recv, id: anonymous, conn: "test", httpCache: series.NewCache(streamCacheSize),
		tcpCache: series.NewCache(streamCacheSize), hosts: hostNames{domain: "cluster.local"}}
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func httpMessage(entries ...*datav3.HTTPAccessLogEntry) *alsv3.StreamAccessLogsMessage {
	return &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries}}}
}

func simpleEntry(code uint32) *datav3.HTTPAccessLogEntry {
	return &datav3.HTTPAccessLogEntry{
		CommonProperties: &datav3.AccessLogCommon{UpstreamCluster: "inbound|80||"},
		Request:          &datav3.HTTPRequestProperties{Authority: "reviews"},
		Response:         &datav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(code)},
	}
}

func TestMalformedMessages(t *testing.T) {
	m, _ := newModule(t, Default())
	s := newStream(m)
	good := marshal(t, httpMessage(simpleEntry(200), simpleEntry(200)))

	// A truncated message is dropped whole.
	if err := s.handle(good[:len(good)-3], time.Now()); err != nil {
		t.Fatal(err)
	}
	// A broken entry is dropped; the others count.
	bad := marshal(t, httpMessage(simpleEntry(200)))
	bad = append(bad, 0x12, 0x04, 0x0a, 0x02, 0x0a, 0x7f) // an entry whose common_properties overruns
	if err := s.handle(bad, time.Now()); err != nil {
		t.Fatal(err)
	}
	st := m.Status()
	if st.Dropped.Messages[reasonMalformed] != 1 || st.Dropped.Entries[reasonMalformed] != 1 || st.Entries["http"] != 1 {
		t.Errorf("status %+v", st)
	}
}

func TestUnknownLogNameJudgesByCluster(t *testing.T) {
	m, reg := newModule(t, Default())
	s := newStream(m)
	md, _ := structpb.NewStruct(map[string]any{"NAMESPACE": "default", "WORKLOAD_NAME": "reviews-v1"})
	first := httpMessage(simpleEntry(200))
	first.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{LogName: "hand-written", Node: &corev3.Node{
		Id: "sidecar~10.0.0.2~reviews-v1-x.default~default.svc.cluster.local", Metadata: md}}
	out := simpleEntry(201)
	out.CommonProperties.UpstreamCluster = "outbound|80||ratings.default.svc.cluster.local"
	first.GetHttpLogs().LogEntry = append(first.GetHttpLogs().LogEntry, out)
	if err := s.handle(marshal(t, first), time.Now()); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP istio_requests_total Requests proxies logged to meshd's access-log service, by source, destination and response.
# TYPE istio_requests_total counter
istio_requests_total{connection_security_policy="none",destination_service="reviews.default.svc.cluster.local",destination_workload="reviews-v1",destination_workload_namespace="default",grpc_response_status="",reporter="destination",response_code="200",source_principal="unknown",source_workload="unknown",source_workload_namespace="unknown"} 1
istio_requests_total{connection_security_policy="unknown",destination_service="ratings.default.svc.cluster.local",destination_workload="unknown",destination_workload_namespace="unknown",grpc_response_status="",reporter="source",response_code="201",source_principal="unknown",source_workload="reviews-v1",source_workload_namespace="default"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "istio_requests_total"); err != nil {
		t.Error(err)
	}
}

func TestSkipsNonFinalEntries(t *testing.T) {
	m, _ := newModule(t, Default())
	s := newStream(m)
	start := simpleEntry(200)
	start.CommonProperties.AccessLogType = datav3.AccessLogType_DownstreamStart
	inter := simpleEntry(200)
	inter.CommonProperties.IntermediateLogEntry = true
	end := simpleEntry(200)
	end.CommonProperties.AccessLogType = datav3.AccessLogType_DownstreamEnd
	if err := s.handle(marshal(t, httpMessage(start, inter, end)), time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, ms := range m.Status().Metrics {
		if ms.Metric == mRequests && ms.Series != 1 {
			t.Errorf("%d series", ms.Series)
		}
	}
	if got := testutil.ToFloat64(m.recv.m.entries.WithLabelValues("http")); got != 3 {
		t.Errorf("entries received %v, want 3", got)
	}
}

// TestSeriesExpiry: idle series are deleted by the run loop.
func TestSeriesExpiry(t *testing.T) {
	cfg := Default()
	cfg.Metrics.SeriesIdleTimeout = time.Second
	m, reg := newModule(t, cfg)
	s := newStream(m)
	if err := s.handle(marshal(t, httpMessage(simpleEntry(200))), time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n, _ := testutil.GatherAndCount(reg, mRequests); n != 1 {
		t.Fatalf("%d series before expiry", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if n, _ := testutil.GatherAndCount(reg, mRequests); n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("idle series not expired")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := testutil.ToFloat64(m.m.expired); got != 1 {
		t.Errorf("expired %v, want 1", got)
	}
}

// blockingSink holds every Export until released.
type blockingSink struct {
	entered chan struct{} // receives once per Export call
	release chan struct{}
	mu      sync.Mutex
	got     int
}

func (b *blockingSink) Export(ctx context.Context, recs []api.Record) error {
	select {
	case b.entered <- struct{}{}:
	default:
	}
	select {
	case <-b.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	b.mu.Lock()
	b.got += len(recs)
	b.mu.Unlock()
	return nil
}

type failingSink struct{}

func (failingSink) Export(context.Context, []api.Record) error { return errors.New("backend down") }

// TestSlowSinkDropsNotBlocks: a sink that does not keep up loses batches
// (counted) and never slows the receiver; a failing sink is counted too.
func TestSlowSinkDropsNotBlocks(t *testing.T) {
	cfg := Default()
	cfg.SinkQueue = 2
	m, _ := newModule(t, cfg)
	slow := &blockingSink{entered: make(chan struct{}, 1), release: make(chan struct{})}
	if err := m.AddSink("slow", slow); err != nil {
		t.Fatal(err)
	}
	if err := m.AddSink("slow", slow); err == nil {
		t.Error("duplicate sink name accepted")
	}
	if err := m.AddSink("failing", failingSink{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()

	s := newStream(m)
	msg := marshal(t, httpMessage(simpleEntry(200), simpleEntry(200)))
	if err := s.handle(msg, time.Now()); err != nil {
		t.Fatal(err)
	}
	<-slow.entered // the first batch is stuck in Export
	begin := time.Now()
	for range 9 {
		if err := s.handle(msg, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if time.Since(begin) > time.Second {
		t.Error("a blocked sink slowed the receiver")
	}
	// The slow sink holds one batch in Export and two in its queue: the
	// other 7 batches (14 records) are dropped. The failing sink loses
	// every record, to errors or to its full queue.
	deadline := time.Now().Add(5 * time.Second)
	var st []SinkStatus
	for {
		st = m.sinks.status()
		if st[0].Dropped == 14 && st[1].Dropped == 20 && st[1].Queued == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink status %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st[1].LastError != "backend down" || st[1].Errors == 0 || st[1].Exported != 0 {
		t.Errorf("failing sink %+v", st[1])
	}
	close(slow.release)
	deadline = time.Now().Add(5 * time.Second)
	for m.sinks.status()[0].Exported != 6 {
		if time.Now().After(deadline) {
			t.Fatalf("slow sink %+v", m.sinks.status()[0])
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := testutil.ToFloat64(m.m.sinkDropped.WithLabelValues("slow")); got != 14 {
		t.Errorf("dropped metric %v", got)
	}
}

func TestLabelHelpers(t *testing.T) {
	for in, want := range map[string]string{
		"outbound|9080||reviews.default.svc.cluster.local":   "reviews.default.svc.cluster.local",
		"outbound|9080|v1|reviews.default.svc.cluster.local": "reviews.default.svc.cluster.local",
		"inbound|9080||":                     "",
		"inbound|9080||reviews.default.svc":  "reviews.default.svc",
		"PassthroughCluster":                 "",
		"outbound|9080|reviews":              "",
		"outbound|1|2|3|4":                   "",
		"sideways|9080||reviews.default.svc": "",
	} {
		if got := string(clusterHost([]byte(in))); got != want {
			t.Errorf("clusterHost(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{"reviews:9080": "reviews", "reviews": "reviews", "[fd00::1]:80": "fd00::1", "fd00::1": "fd00::1"} {
		if got := string(authorityHost([]byte(in))); got != want {
			t.Errorf("authorityHost(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{"spiffe://td/ns/a/sa/b": "a", "spiffe://td/ns//sa/b": "", "spiffe://td/x": "", "unknown": ""} {
		if got := namespaceOf(in); got != want {
			t.Errorf("namespaceOf(%q) = %q, want %q", in, got, want)
		}
	}
	h := hostNames{namespace: "default", domain: "cluster.local"}
	for in, want := range map[string]string{
		"reviews":                           "reviews.default.svc.cluster.local",
		"reviews.default":                   "reviews.default.svc.cluster.local",
		"reviews.other":                     "reviews.other",
		"reviews.other.svc":                 "reviews.other.svc.cluster.local",
		"example.com":                       "example.com",
		"www.example.com":                   "www.example.com",
		"10.0.0.1":                          "10.0.0.1",
		"fd00::1":                           "fd00::1",
		"reviews.default.svc.cluster.local": "reviews.default.svc.cluster.local",
	} {
		if got := h.service([]byte(in)); got != want {
			t.Errorf("service(%q) = %q, want %q", in, got, want)
		}
	}
	if got := responseFlags(1<<1 | 1<<15 | 1<<27); got != "UH,URX,DR" {
		t.Errorf("flags %q", got)
	}
	if grpcLabel([]byte("14")) != "14" || grpcLabel(nil) != "" || codeLabel(503) != "503" || codeLabel(1000) != "1000" {
		t.Error("code labels")
	}
}

type fakeStatus []string // live xDS connection IDs

func (f fakeStatus) Statuses() []xdsapi.ProxyStatus {
	var out []xdsapi.ProxyStatus
	for _, id := range f {
		out = append(out, xdsapi.ProxyStatus{ConnID: id})
	}
	return out
}

func proxyAt(t *testing.T, ip, workload string) *xdsapi.Proxy {
	t.Helper()
	p, err := xdsapi.ParseNode(&corev3.Node{Id: "sidecar~" + ip + "~" + workload + "-1.default~default.svc.cluster.local"}, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAddressBookFromBus: the xds module's connect and disconnect events
// keep the address book; after lost events, connections the xds module no
// longer lists are forgotten, access-log streams' entries kept.
func TestAddressBookFromBus(t *testing.T) {
	b := bus.New(bus.Options{BufferSize: 2})
	defer b.Close()
	m := new(Module)
	if err := m.setup(deps{cfg: Default(), log: slog.New(slog.DiscardHandler), reg: prometheus.NewRegistry(),
		trustDomain: "cluster.local", bus: b, status: fakeStatus{"c1"}}); err != nil {
		t.Fatal(err)
	}
	defer m.Cleanup()
	m.peers.add("xds/c1", proxyAt(t, "10.0.0.1", "a"))
	m.peers.add("xds/c2", proxyAt(t, "10.0.0.2", "b"))
	m.peers.add("als/1", proxyAt(t, "10.0.0.3", "c"))
	for i := range 3 { // overflow the queue: the module gets a resync
		b.Publish(xdsapi.ProxyConnected{ConnID: fmt.Sprint("lost", i), Proxy: proxyAt(t, "10.0.1.1", "lost")})
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()

	known := func(ip string) string {
		p, ok := m.peers.lookup([]byte(ip))
		if !ok {
			return ""
		}
		return p.workload
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out: %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("resync applied", func() bool {
		return known("10.0.0.1") == "a-1" && known("10.0.0.2") == "" && known("10.0.0.3") == "c-1"
	})
	b.Publish(xdsapi.ProxyConnected{ConnID: "c5", Proxy: proxyAt(t, "10.0.0.5", "e")})
	waitFor("connect event", func() bool { return known("10.0.0.5") == "e-1" })
	b.Publish(xdsapi.ProxyDisconnected{ConnID: "c5", Proxy: proxyAt(t, "10.0.0.5", "e")})
	waitFor("disconnect event", func() bool { return known("10.0.0.5") == "" })
	if got := testutil.ToFloat64(m.m.peers); got != 2 {
		t.Errorf("peer address gauge %v, want 2", got)
	}
}

// TestVerifiedIdentity: on the TLS port the client certificate names the
// proxy; a node that claims another namespace ends its stream.
func TestVerifiedIdentity(t *testing.T) {
	m, _ := newModule(t, Default())
	md, _ := structpb.NewStruct(map[string]any{"NAMESPACE": "default", "SERVICE_ACCOUNT": "reviews"})
	first := marshal(t, &alsv3.StreamAccessLogsMessage{Identifier: &alsv3.StreamAccessLogsMessage_Identifier{
		LogName: logHTTPOutbound, Node: &corev3.Node{Id: "sidecar~10.0.0.2~reviews-1.default~default.svc.cluster.local", Metadata: md}}})

	s := newStream(m)
	s.verified = "spiffe://cluster.local/ns/default/sa/reviews"
	if err := s.handle(first, time.Now()); err != nil {
		t.Fatal(err)
	}
	if s.id.principal != s.verified || s.id.reporter != reporterSource {
		t.Errorf("identity %+v", s.id)
	}

	s = newStream(m)
	s.verified = "spiffe://cluster.local/ns/other/sa/reviews"
	if err := s.handle(first, time.Now()); status.Code(err) != codes.PermissionDenied {
		t.Errorf("node contradicting its certificate: %v, want PERMISSION_DENIED", err)
	}
	if got := testutil.ToFloat64(m.m.streamsRejected.WithLabelValues(reasonIdentity)); got != 1 {
		t.Errorf("identity rejections %v", got)
	}
}

// TestConfigDecoding decodes a modules.telemetry section as the host does:
// strictly, durations and nested tags included.
func TestConfigDecoding(t *testing.T) {
	reg := core.NewRegistry()
	if err := reg.Add(new(Module)); err != nil {
		t.Fatal(err)
	}
	_, cfgs, err := core.ResolveModules(reg, map[string]map[string]any{"telemetry": {
		"tracing": map[string]any{"otelAddress": "collector:4317", "samplingPercent": "2.5",
			"customTags": map[string]any{"cluster": map[string]any{"literal": "east"}}},
		"metrics":  map[string]any{"seriesIdleTimeout": "30m", "seriesLimits": map[string]any{"istio_requests_total": 10}},
		"fileSink": map[string]any{"path": "/tmp/x.jsonl"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	c := cfgs[ID].(*Config)
	if c.Tracing.SamplingPercent != 2.5 || c.Tracing.CustomTags["cluster"].Literal != "east" ||
		c.Metrics.SeriesIdleTimeout != 30*time.Minute || c.Metrics.limit(mRequests) != 10 || c.Metrics.limit(mRequestBytes) != 2000 ||
		c.FileSink.MaxBytes != 100<<20 || c.AccessLog.Cluster != "xds-grpc" {
		t.Errorf("decoded %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
	_, _, err = core.ResolveModules(reg, map[string]map[string]any{"telemetry": {
		"tracing": map[string]any{"customTags": map[string]any{"cluster": map[string]any{"literl": "east"}}}}})
	if err == nil || !strings.Contains(err.Error(), "modules.telemetry.tracing.customTags.cluster.literl") {
		t.Errorf("misspelt tag key: %v", err)
	}
}
