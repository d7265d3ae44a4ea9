package telemetry_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/modules/telemetry/api"
	xdsapi "github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/xdstest"
)

const (
	productpageIP = "10.0.0.1"
	reviewsIP     = "10.0.0.2"
	grpcClientIP  = "10.0.0.7"
	ppPrincipal   = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
	reviewsSvc    = "reviews.default.svc.cluster.local"
)

// bookinfo streams the access logs of productpage calling reviews, as the
// two sidecars would report them, plus a proxyless gRPC client known only
// from its xDS stream, and a TCP connection. It returns when everything
// has been ingested.
func bookinfo(t *testing.T, e *env) {
	t.Helper()
	cc := xdstest.Dial(t, e.xdsAddr)

	// A proxyless client on xDS: telemetry learns its address from the
	// xds module's connect event.
	client := xdstest.NewSotw(t, cc, node(t, "sidecar", grpcClientIP, "ratings-client-1", "ratings-client", "default", "ratings"))
	client.Subscribe(xdsapi.ClusterType)

	pp := openALS(t, cc, node(t, "sidecar", productpageIP, "productpage-v1-7f9c", "productpage-v1", "default", "bookinfo-productpage"), "meshd/http/outbound")
	rv := openALS(t, cc, node(t, "sidecar", reviewsIP, "reviews-v1-545d", "reviews-v1", "default", "bookinfo-reviews"), "meshd/http/inbound")
	rvTCP := openALS(t, cc, node(t, "sidecar", reviewsIP, "reviews-v1-545d", "reviews-v1", "default", "bookinfo-reviews"), "meshd/tcp/inbound")
	eventually(t, "three proxies' addresses", func() bool { return e.status(t).Peers == 3 })

	// The server side: three mTLS requests from productpage (one a 503),
	// one plaintext gRPC call from the proxyless client that failed with
	// UNAVAILABLE, one request from an address nobody claims.
	rv.http(
		req{downstream: productpageIP + ":40000", peer: ppPrincipal, cluster: "inbound|9080||", authority: "reviews:9080", code: 200, ms: 3, in: 100, out: 2000}.entry(),
		req{downstream: productpageIP + ":40001", peer: ppPrincipal, cluster: "inbound|9080||", authority: "reviews:9080", code: 200, ms: 12, in: 100, out: 3000}.entry(),
		req{downstream: productpageIP + ":40002", peer: ppPrincipal, cluster: "inbound|9080||", authority: "reviews:9080", code: 503, ms: 700, in: 100, out: 19}.entry(),
		req{downstream: grpcClientIP + ":5000", cluster: "inbound|9080||", authority: "reviews.default:9080", code: 200, ms: 1, grpcStatus: "14"}.entry(),
		req{downstream: "10.9.9.9:1", cluster: "inbound|9080||", authority: "reviews", code: 404, ms: 1}.entry(),
	)
	// The client side: two requests to reviews.
	pp.http(
		req{upstream: reviewsIP + ":9080", cluster: "outbound|9080||" + reviewsSvc, authority: "reviews:9080", code: 200, ms: 4}.entry(),
		req{upstream: reviewsIP + ":9080", cluster: "outbound|9080|v1|" + reviewsSvc, authority: "reviews:9080", code: 200, ms: 14}.entry(),
	)
	// A TCP connection to reviews from productpage: opened, then closed.
	tcpCommon := func(typ datav3.AccessLogType) *datav3.AccessLogCommon {
		return &datav3.AccessLogCommon{DownstreamRemoteAddress: addr(productpageIP + ":41000"), TlsProperties: peerCert(ppPrincipal),
			UpstreamCluster: "inbound|3306||" + reviewsSvc, AccessLogType: typ}
	}
	rvTCP.tcp(
		&datav3.TCPAccessLogEntry{CommonProperties: tcpCommon(datav3.AccessLogType_TcpConnectionStart)},
		&datav3.TCPAccessLogEntry{CommonProperties: tcpCommon(datav3.AccessLogType_TcpConnectionEnd),
			ConnectionProperties: &datav3.ConnectionProperties{ReceivedBytes: 512, SentBytes: 4096}},
	)
	for _, s := range []*alsStream{pp, rv, rvTCP} {
		must(t, s.close())
	}
	client.Close()
}

// TestAccessLogsBecomeRequestMetrics streams real access-log messages over
// gRPC to the xds module's port and checks the series and values in the
// admin /metrics.
func TestAccessLogsBecomeRequestMetrics(t *testing.T) {
	e := start(t, nil)
	bookinfo(t, e)
	mfs := e.scrape(t)

	dst := map[string]string{
		"reporter": "destination", "source_workload": "productpage-v1", "source_workload_namespace": "default",
		"source_principal": ppPrincipal, "destination_service": reviewsSvc, "destination_workload": "reviews-v1",
		"destination_workload_namespace": "default", "grpc_response_status": "", "connection_security_policy": "mutual_tls",
	}
	with := func(base map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range base {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	if got := counter(series(t, mfs, "istio_requests_total", with(dst, "response_code", "200"))); got != 2 {
		t.Errorf("destination 200s = %v, want 2", got)
	}
	if got := counter(series(t, mfs, "istio_requests_total", with(dst, "response_code", "503"))); got != 1 {
		t.Errorf("destination 503s = %v, want 1", got)
	}

	// Durations 3 and 12 ms land in Envoy's buckets le=5 and le=25.
	d := series(t, mfs, "istio_request_duration_milliseconds", with(dst, "response_code", "200"))
	if h := d.GetHistogram(); h.GetSampleCount() != 2 || h.GetSampleSum() != 15 {
		t.Errorf("duration count %d sum %v, want 2 and 15", h.GetSampleCount(), h.GetSampleSum())
	}
	if bucket(t, d, 1) != 0 || bucket(t, d, 5) != 1 || bucket(t, d, 10) != 1 || bucket(t, d, 25) != 2 || bucket(t, d, 3600000) != 2 {
		t.Errorf("duration buckets wrong:\n%v", d.GetHistogram())
	}
	if n := len(d.GetHistogram().GetBucket()); n != 20 {
		t.Errorf("%d buckets, want Envoy's 19 and +Inf", n)
	}
	if got := series(t, mfs, "istio_request_bytes", with(dst, "response_code", "200")).GetHistogram().GetSampleSum(); got != 200 {
		t.Errorf("request bytes sum %v, want 200", got)
	}
	if got := series(t, mfs, "istio_response_bytes", with(dst, "response_code", "200")).GetHistogram().GetSampleSum(); got != 5000 {
		t.Errorf("response bytes sum %v, want 5000", got)
	}

	// The proxyless client: named from its xDS node, plaintext, gRPC status.
	grpcCall := series(t, mfs, "istio_requests_total", map[string]string{"reporter": "destination", "source_workload": "ratings-client"})
	for k, want := range map[string]string{"source_workload_namespace": "default", "source_principal": "unknown",
		"connection_security_policy": "none", "grpc_response_status": "14", "destination_service": reviewsSvc} {
		if got := label(grpcCall, k); got != want {
			t.Errorf("gRPC call: %s=%q, want %q", k, got, want)
		}
	}
	// An unknown caller, with a short Host header expanded to the FQDN.
	stranger := series(t, mfs, "istio_requests_total", map[string]string{"reporter": "destination", "response_code": "404"})
	if label(stranger, "source_workload") != "unknown" || label(stranger, "source_workload_namespace") != "unknown" ||
		label(stranger, "destination_service") != reviewsSvc {
		t.Errorf("unknown caller labelled %v", stranger.GetLabel())
	}

	// The client side: reporter source, named from the stream's node and
	// the upstream address; subsets are one service.
	src := series(t, mfs, "istio_requests_total", map[string]string{"reporter": "source", "response_code": "200"})
	if counter(src) != 2 {
		t.Errorf("source 200s = %v, want 2", counter(src))
	}
	for k, want := range map[string]string{"source_workload": "productpage-v1", "source_workload_namespace": "default",
		"source_principal": ppPrincipal, "destination_service": reviewsSvc, "destination_workload": "reviews-v1",
		"destination_workload_namespace": "default", "connection_security_policy": "unknown"} {
		if got := label(src, k); got != want {
			t.Errorf("source reporter: %s=%q, want %q", k, got, want)
		}
	}

	// TCP.
	tcp := map[string]string{"reporter": "destination", "source_workload": "productpage-v1", "destination_workload": "reviews-v1",
		"destination_service": reviewsSvc, "connection_security_policy": "mutual_tls"}
	for name, want := range map[string]float64{"istio_tcp_connections_opened_total": 1, "istio_tcp_connections_closed_total": 1,
		"istio_tcp_received_bytes_total": 512, "istio_tcp_sent_bytes_total": 4096} {
		if got := counter(series(t, mfs, name, tcp)); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if ls := series(t, mfs, "istio_tcp_connections_opened_total", tcp).GetLabel(); len(ls) != 8 {
		t.Errorf("TCP metrics have %d labels, want 8 (no response code or gRPC status)", len(ls))
	}

	// Telemetry's own accounting.
	if got := counter(series(t, mfs, "meshd_telemetry_als_entries_total", map[string]string{"kind": "http"})); got != 7 {
		t.Errorf("http entries %v, want 7", got)
	}
	if got := counter(series(t, mfs, "meshd_telemetry_als_entries_total", map[string]string{"kind": "tcp"})); got != 2 {
		t.Errorf("tcp entries %v, want 2", got)
	}
	st := e.status(t)
	if st.Entries["http"] != 7 || st.Entries["tcp"] != 2 || st.Streams.Open != 0 {
		t.Errorf("telemetryz %+v", st)
	}
	for _, m := range st.Metrics {
		if m.Metric == "istio_requests_total" && (m.Series != 5 || m.Limit != 2000 || m.Folded != 0) {
			t.Errorf("telemetryz istio_requests_total %+v, want 5 series of 2000, none folded", m)
		}
	}
}

// TestCardinalityFlood sends entries with endless distinct destination
// services: each metric keeps its limit of series, and the rest is counted
// in the overflow series and meshd_telemetry_series_overflow_total.
func TestCardinalityFlood(t *testing.T) {
	const limit, n, perMsg = 100, 20000, 500
	e := start(t, map[string]any{"metrics": map[string]any{"maxSeries": limit, "seriesLimits": map[string]any{"istio_request_duration_milliseconds": 10}}})
	cc := xdstest.Dial(t, e.xdsAddr)
	s := openALS(t, cc, node(t, "sidecar", reviewsIP, "reviews-v1-545d", "reviews-v1", "default", "bookinfo-reviews"), "meshd/http/inbound")
	for i := 0; i < n; i += perMsg {
		var batch []*datav3.HTTPAccessLogEntry
		for j := i; j < i+perMsg; j++ {
			batch = append(batch, req{downstream: "10.1.0.1:1", cluster: "inbound|80||", authority: fmt.Sprintf("svc-%d.example.com", j), code: 200, ms: 1}.entry())
		}
		s.http(batch...)
	}
	must(t, s.close())

	mfs := e.scrape(t)
	reqs := mfs["istio_requests_total"].GetMetric()
	if len(reqs) != limit+1 {
		t.Errorf("istio_requests_total has %d series, want %d and the overflow series", len(reqs), limit)
	}
	ov := series(t, mfs, "istio_requests_total", map[string]string{"reporter": "destination", "destination_service": "__overflow__"})
	if counter(ov) != n-limit {
		t.Errorf("overflow series = %v, want %d", counter(ov), n-limit)
	}
	for _, l := range ov.GetLabel() {
		if l.GetName() != "reporter" && l.GetValue() != "__overflow__" {
			t.Errorf("overflow series label %s=%q", l.GetName(), l.GetValue())
		}
	}
	if got := len(mfs["istio_request_duration_milliseconds"].GetMetric()); got != 11 {
		t.Errorf("duration has %d series, want its own limit 10 and the overflow series", got)
	}
	if got := counter(series(t, mfs, "meshd_telemetry_series_overflow_total", map[string]string{"metric": "istio_requests_total"})); got != n-limit {
		t.Errorf("overflow_total{istio_requests_total} = %v, want %d", got, n-limit)
	}
	if got := counter(series(t, mfs, "meshd_telemetry_series_overflow_total", map[string]string{"metric": "istio_request_duration_milliseconds"})); got != n-10 {
		t.Errorf("overflow_total{duration} = %v, want %d", got, n-10)
	}
	if got := series(t, mfs, "meshd_telemetry_series", map[string]string{"metric": "istio_requests_total"}).GetGauge().GetValue(); got != limit {
		t.Errorf("meshd_telemetry_series = %v, want %d", got, limit)
	}
	var total float64
	for _, m := range reqs {
		total += counter(m)
	}
	if total != n {
		t.Errorf("requests add up to %v, want %d: folding must not lose any", total, n)
	}
}

// TestReceiverLimits: oversized messages and entries beyond the
// per-message limit are dropped and counted, and streams beyond the
// per-connection limit are refused.
func TestReceiverLimits(t *testing.T) {
	e := start(t, map[string]any{"receiver": map[string]any{"maxMessageBytes": 4096, "maxEntriesPerMessage": 10, "maxStreamsPerConnection": 2}})
	cc := xdstest.Dial(t, e.xdsAddr)
	n := node(t, "sidecar", reviewsIP, "reviews-v1-545d", "reviews-v1", "default", "bookinfo-reviews")
	s := openALS(t, cc, n, "meshd/http/inbound")
	big := req{cluster: "inbound|80||", authority: strings.Repeat("a", 5000), code: 200}.entry()
	s.http(big)
	var batch []*datav3.HTTPAccessLogEntry
	for range 25 {
		batch = append(batch, req{cluster: "inbound|80||", authority: "reviews", code: 200}.entry())
	}
	s.http(batch...)

	// Two streams are open on this connection (s and s2): a third is refused.
	s2 := openALS(t, cc, n, "meshd/tcp/inbound")
	eventually(t, "two open streams", func() bool { return e.status(t).Streams.Open == 2 })
	s3 := openALS(t, cc, n, "meshd/http/outbound")
	if err := s3.close(); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("third stream on one connection: %v, want RESOURCE_EXHAUSTED", err)
	}
	must(t, s.close())
	must(t, s2.close())

	st := e.status(t)
	if st.Dropped.Messages["too_large"] != 1 {
		t.Errorf("dropped messages %v, want one too_large", st.Dropped.Messages)
	}
	if st.Dropped.Entries["too_many_entries"] != 15 || st.Entries["http"] != 10 {
		t.Errorf("entries %v dropped %v, want 10 read and 15 dropped", st.Entries, st.Dropped.Entries)
	}
	mfs := e.scrape(t)
	if got := counter(series(t, mfs, "meshd_telemetry_als_streams_rejected_total", map[string]string{"reason": "max_streams_per_connection"})); got != 1 {
		t.Errorf("rejected streams %v, want 1", got)
	}
	if got := counter(series(t, mfs, "meshd_telemetry_als_entries_dropped_total", map[string]string{"reason": "too_many_entries"})); got != 15 {
		t.Errorf("dropped entries metric %v, want 15", got)
	}
}

// TestBadNodeEndsStream: a node meshd cannot parse ends the stream
// instead of feeding metrics.
func TestBadNodeEndsStream(t *testing.T) {
	e := start(t, nil)
	cc := xdstest.Dial(t, e.xdsAddr)
	n := node(t, "sidecar", reviewsIP, "x", "x", "default", "x")
	n.Id = "sidecar~not-an-ip~x.default~default.svc.cluster.local"
	s := openALS(t, cc, n, "meshd/http/inbound")
	if err := s.close(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad node: %v, want INVALID_ARGUMENT", err)
	}
}

// TestFileSink writes the access logs of bookinfo to a JSON-lines file.
func TestFileSink(t *testing.T) {
	path := filepath.Join(t.TempDir(), "logs", "access.jsonl")
	e := start(t, map[string]any{"fileSink": map[string]any{"path": path}})
	bookinfo(t, e)
	var recs []api.Record
	eventually(t, "records in the file", func() bool {
		recs = readRecords(t, path)
		return len(recs) == 8 // 7 HTTP, 1 TCP (the end of the connection)
	})
	st, err := os.Stat(path)
	must(t, err)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", st.Mode().Perm())
	}
	var found bool
	for _, r := range recs {
		if r.Kind == api.KindHTTP && r.ResponseCode == 503 {
			found = true
			want := api.Record{Kind: "http", Reporter: "destination", SourceWorkload: "productpage-v1", SourceNamespace: "default",
				SourcePrincipal: ppPrincipal, DestinationService: reviewsSvc, DestinationWorkload: "reviews-v1",
				DestinationNamespace: "default", ConnectionSecurityPolicy: "mutual_tls", Protocol: "HTTP/2", Method: "GET",
				Authority: "reviews:9080", Path: "/reviews/1", RequestID: "req-1", ResponseCode: 503,
				Duration: 700 * time.Millisecond, BytesReceived: 100, BytesSent: 19, UpstreamCluster: "inbound|9080||",
				DownstreamPeer: productpageIP + ":40002", Start: time.Unix(1_700_000_000, 0).UTC(),
				Proxy: "sidecar~10.0.0.2~reviews-v1-545d.default~default.svc.cluster.local"}
			if r != want {
				t.Errorf("record\n got %+v\nwant %+v", r, want)
			}
		}
		if r.Kind == api.KindTCP && (r.BytesReceived != 512 || r.BytesSent != 4096) {
			t.Errorf("tcp record %+v", r)
		}
	}
	if !found {
		t.Error("no record of the 503")
	}
	sinks := e.status(t).Sinks
	if len(sinks) != 1 || sinks[0].Name != "file" || sinks[0].Exported != 8 || sinks[0].Dropped != 0 {
		t.Errorf("telemetryz sinks %+v", sinks)
	}
}

func readRecords(t *testing.T, path string) []api.Record {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	must(t, err)
	defer f.Close()
	var out []api.Record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r api.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

// TestShutdownWithOpenStreams: Envoy keeps its access-log streams open for
// good; stopping meshd ends them at once instead of waiting out the xDS
// server's graceful stop.
func TestShutdownWithOpenStreams(t *testing.T) {
	e := start(t, nil)
	cc := xdstest.Dial(t, e.xdsAddr)
	n := node(t, "sidecar", reviewsIP, "reviews-v1-545d", "reviews-v1", "default", "bookinfo-reviews")
	var streams []*alsStream
	for _, name := range []string{"meshd/http/inbound", "meshd/http/outbound", "meshd/tcp/inbound"} {
		streams = append(streams, openALS(t, cc, n, name))
	}
	eventually(t, "open streams", func() bool { return e.status(t).Streams.Open == 3 })
	begin := time.Now()
	e.stop()
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("stopping took %v with access-log streams open", d)
	}
	for _, s := range streams {
		if err := s.close(); status.Code(err) != codes.Unavailable {
			t.Errorf("stream after shutdown: %v, want UNAVAILABLE", err)
		}
	}
}
