package telemetry_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/telemetry"
	"github.com/meshd/meshd/xds"
	xdsapi "github.com/meshd/meshd/xds/api"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// probe is a module that requires xds and telemetry, to hand the test
// their instances (the xDS port, telemetry's status).
type probe struct{}

var probed struct {
	xds *xds.Module
	tel *telemetry.Module
}

func (probe) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{ID: "telemetryprobe", New: func() core.Module { return probe{} }, Requires: []core.ModuleID{"xds", telemetry.ID}}
}

func (probe) Provision(ctx *core.Context) (err error) {
	if probed.xds, err = core.Dep[*xds.Module](ctx, "xds"); err != nil {
		return err
	}
	if probed.tel, err = core.Dep[*telemetry.Module](ctx, telemetry.ID); err != nil {
		return err
	}
	return probed.xds.RegisterGenerator(xdsapi.ClusterType, clusterGen{})
}

// clusterGen serves one cluster, so that a test's xDS client sees pushes
// (and the xds module's metrics have something to count).
type clusterGen struct{}

func (clusterGen) Key(*xdsapi.Proxy) string { return "" }

func (clusterGen) Generate(context.Context, xdsapi.GenerateRequest) ([]xdsapi.Resource, error) {
	c := &clusterv3.Cluster{Name: "outbound|9080||reviews.default.svc.cluster.local",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}}
	return []xdsapi.Resource{{Name: c.Name, Message: c, Version: "1"}}, nil
}

// env is a running host with the xds and telemetry modules.
type env struct {
	xdsAddr string
	admin   string // admin base URL
	tel     *telemetry.Module
	stop    func() // stops the host; idempotent
}

// start runs a host; telemetry's section is cfg. It stops when the test ends.
func start(t *testing.T, cfg map[string]any) *env {
	t.Helper()
	reg := core.NewRegistry()
	for _, m := range []core.Module{new(xds.Module), new(telemetry.Module), probe{}} {
		if err := reg.Add(m); err != nil {
			t.Fatal(err)
		}
	}
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := core.DefaultConfig()
	c.DataDir = t.TempDir()
	c.Modules = map[string]map[string]any{"xds": {"address": "127.0.0.1:0"}, "telemetry": cfg}
	host, err := core.NewHost(core.HostOptions{Config: c, Registry: reg, Store: st, Version: "test",
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := host.Provision(); err != nil {
		t.Fatal(err)
	}
	e := &env{xdsAddr: probed.xds.Addr().String(), tel: probed.tel}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- host.Run(ctx) }()
	admin := httptest.NewServer(host.AdminHandler())
	e.admin = admin.URL
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("host run: %v", err)
			}
			if err := host.Cleanup(); err != nil {
				t.Errorf("host cleanup: %v", err)
			}
			st.Close()
		})
	}
	t.Cleanup(func() {
		admin.Close()
		e.stop()
	})
	eventually(t, "host ready", func() bool {
		code, _ := e.get(t, "/healthz/ready")
		return code == http.StatusOK
	})
	return e
}

func (e *env) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(e.admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// scrape reads the admin /metrics and parses it as Prometheus does.
func (e *env) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := e.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mfs
}

func (e *env) status(t *testing.T) telemetry.Status {
	t.Helper()
	code, body := e.get(t, "/debug/telemetryz")
	if code != http.StatusOK {
		t.Fatalf("/debug/telemetryz: %d %s", code, body)
	}
	var st telemetry.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/debug/telemetryz: %v\n%s", err, body)
	}
	return st
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// series finds the one metric of family name whose labels include want.
// It fails when none or several match.
func series(t *testing.T, mfs map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	t.Helper()
	var found []*dto.Metric
	for _, m := range mfs[name].GetMetric() {
		labels := map[string]string{}
		for _, lp := range m.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		match := true
		for k, v := range want {
			if got, ok := labels[k]; !ok || got != v {
				match = false
				break
			}
		}
		if match {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s%v: %d series match, want 1; have:\n%s", name, want, len(found), dump(mfs[name]))
	}
	return found[0]
}

func dump(mf *dto.MetricFamily) string {
	var lines []string
	for _, m := range mf.GetMetric() {
		var parts []string
		for _, lp := range m.GetLabel() {
			parts = append(parts, lp.GetName()+"="+lp.GetValue())
		}
		lines = append(lines, strings.Join(parts, ","))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// node is an Envoy sidecar's node as Istio's bootstrap writes it.
func node(t *testing.T, kind, ip, pod, workload, ns, sa string) *corev3.Node {
	t.Helper()
	md, err := structpb.NewStruct(map[string]any{
		"NAMESPACE": ns, "SERVICE_ACCOUNT": sa, "WORKLOAD_NAME": workload, "INSTANCE_IPS": ip,
		"LABELS": map[string]any{"app": strings.Split(workload, "-")[0]},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.Node{Id: kind + "~" + ip + "~" + pod + "." + ns + "~" + ns + ".svc.cluster.local", Metadata: md}
}

// alsStream is one access-log stream, as an Envoy worker opens it.
type alsStream struct {
	t  *testing.T
	st alsv3.AccessLogService_StreamAccessLogsClient
}

// openALS opens a stream and sends the identifier, as Envoy does with its
// first message.
func openALS(t *testing.T, cc *grpc.ClientConn, n *corev3.Node, logName string) *alsStream {
	t.Helper()
	st, err := alsv3.NewAccessLogServiceClient(cc).StreamAccessLogs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s := &alsStream{t: t, st: st}
	s.send(&alsv3.StreamAccessLogsMessage{Identifier: &alsv3.StreamAccessLogsMessage_Identifier{Node: n, LogName: logName}})
	return s
}

func (s *alsStream) send(m *alsv3.StreamAccessLogsMessage) {
	s.t.Helper()
	if err := s.st.Send(m); err != nil {
		s.t.Fatalf("send: %v", err)
	}
}

func (s *alsStream) http(entries ...*datav3.HTTPAccessLogEntry) {
	s.t.Helper()
	s.send(&alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries}}})
}

func (s *alsStream) tcp(entries ...*datav3.TCPAccessLogEntry) {
	s.t.Helper()
	s.send(&alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_TcpLogs{
		TcpLogs: &alsv3.StreamAccessLogsMessage_TCPAccessLogEntries{LogEntry: entries}}})
}

// close half-closes the stream and waits for the server's answer, so that
// everything sent has been ingested.
func (s *alsStream) close() error {
	_, err := s.st.CloseAndRecv()
	return err
}

func addr(hostport string) *corev3.Address {
	host, port, _ := strings.Cut(hostport, ":")
	var p uint32
	fmt.Sscan(port, &p)
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: p}}}}
}

func peerCert(uri string) *datav3.TLSProperties {
	return &datav3.TLSProperties{TlsVersion: datav3.TLSProperties_TLSv1_3,
		PeerCertificateProperties: &datav3.TLSProperties_CertificateProperties{
			SubjectAltName: []*datav3.TLSProperties_CertificateProperties_SubjectAltName{
				{San: &datav3.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: uri}}}}}
}

// req describes one HTTP access-log entry.
type req struct {
	downstream, upstream string // ip:port
	peer                 string // peer certificate URI SAN
	cluster, authority   string
	code                 uint32
	ms                   int64
	in, out              uint64 // body bytes
	grpcStatus           string // response trailer
}

func (r req) entry() *datav3.HTTPAccessLogEntry {
	e := &datav3.HTTPAccessLogEntry{
		ProtocolVersion: datav3.HTTPAccessLogEntry_HTTP2,
		CommonProperties: &datav3.AccessLogCommon{
			StartTime:       timestamppb.New(time.Unix(1_700_000_000, 0)),
			Duration:        durationpb.New(time.Duration(r.ms) * time.Millisecond),
			UpstreamCluster: r.cluster,
			AccessLogType:   datav3.AccessLogType_DownstreamEnd,
		},
		Request: &datav3.HTTPRequestProperties{RequestMethod: corev3.RequestMethod_GET, Authority: r.authority,
			Path: "/reviews/1", RequestId: "req-1", RequestBodyBytes: r.in},
		Response: &datav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(r.code), ResponseBodyBytes: r.out},
	}
	c := e.CommonProperties
	if r.downstream != "" {
		c.DownstreamRemoteAddress = addr(r.downstream)
	}
	if r.upstream != "" {
		c.UpstreamRemoteAddress = addr(r.upstream)
	}
	if r.peer != "" {
		c.TlsProperties = peerCert(r.peer)
	}
	if r.grpcStatus != "" {
		e.Response.ResponseTrailers = map[string]string{"grpc-status": r.grpcStatus}
	}
	return e
}

func counter(m *dto.Metric) float64 { return m.GetCounter().GetValue() }

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// bucket returns the cumulative count of histogram m at upper bound le.
func bucket(t *testing.T, m *dto.Metric, le float64) uint64 {
	t.Helper()
	for _, b := range m.GetHistogram().GetBucket() {
		if b.GetUpperBound() == le {
			return b.GetCumulativeCount()
		}
	}
	t.Fatalf("no bucket le=%v", le)
	return 0
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
