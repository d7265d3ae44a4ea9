package telemetry

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/modules/telemetry/internal/series"
)

// Istio's request metric names. Their buckets are Envoy's defaults, which
// are what Istio's proxies expose, so dashboards' histogram_quantile
// queries see the same boundaries.
const (
	mRequests        = "istio_requests_total"
	mRequestDuration = "istio_request_duration_milliseconds"
	mRequestBytes    = "istio_request_bytes"
	mResponseBytes   = "istio_response_bytes"
	mTCPOpened       = "istio_tcp_connections_opened_total"
	mTCPClosed       = "istio_tcp_connections_closed_total"
	mTCPReceived     = "istio_tcp_received_bytes_total"
	mTCPSent         = "istio_tcp_sent_bytes_total"
)

// Indexes of the metrics in their families, for Series.Observe.
const (
	iRequests = iota
	iDuration
	iRequestBytes
	iResponseBytes
)

const (
	iOpened = iota
	iClosed
	iReceived
	iSent
)

// envoyBuckets are Envoy's default histogram bucket bounds.
var envoyBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}

// httpLabels and tcpLabels are the label sets of the request and the TCP
// metrics (TCP metrics have no response code or gRPC status).
var (
	httpLabels = []int{series.Reporter, series.SourceWorkload, series.SourceNamespace, series.SourcePrincipal,
		series.DestinationService, series.DestinationWorkload, series.DestinationNamespace,
		series.ResponseCode, series.GRPCStatus, series.SecurityPolicy}
	tcpLabels = []int{series.Reporter, series.SourceWorkload, series.SourceNamespace, series.SourcePrincipal,
		series.DestinationService, series.DestinationWorkload, series.DestinationNamespace, series.SecurityPolicy}
)

func httpSpecs(c *MetricsConfig) []series.MetricSpec {
	return []series.MetricSpec{
		{Name: mRequests, Kind: series.Counter, Limit: c.limit(mRequests),
			Help: "Requests proxies logged to meshd's access-log service, by source, destination and response."},
		{Name: mRequestDuration, Kind: series.Histogram, Buckets: envoyBuckets, Limit: c.limit(mRequestDuration),
			Help: "Duration of requests in milliseconds, from the first byte received to the last byte sent, as proxies logged them."},
		{Name: mRequestBytes, Kind: series.Histogram, Buckets: envoyBuckets, Limit: c.limit(mRequestBytes),
			Help: "Size of request bodies in bytes, as proxies logged them."},
		{Name: mResponseBytes, Kind: series.Histogram, Buckets: envoyBuckets, Limit: c.limit(mResponseBytes),
			Help: "Size of response bodies in bytes, as proxies logged them."},
	}
}

func tcpSpecs(c *MetricsConfig) []series.MetricSpec {
	return []series.MetricSpec{
		{Name: mTCPOpened, Kind: series.Counter, Limit: c.limit(mTCPOpened),
			Help: "TCP connections proxies accepted, as their access logs reported them."},
		{Name: mTCPClosed, Kind: series.Counter, Limit: c.limit(mTCPClosed),
			Help: "TCP connections that closed, as proxies' access logs reported them."},
		{Name: mTCPReceived, Kind: series.Counter, Limit: c.limit(mTCPReceived),
			Help: "Bytes received from the downstream on TCP connections that closed."},
		{Name: mTCPSent, Kind: series.Counter, Limit: c.limit(mTCPSent),
			Help: "Bytes sent to the downstream on TCP connections that closed."},
	}
}

func requestMetricNames() []string {
	var names []string
	c := MetricsConfig{MaxSeries: 1}
	for _, s := range append(httpSpecs(&c), tcpSpecs(&c)...) {
		names = append(names, s.Name)
	}
	return names
}

// metrics are telemetry's own metrics, meshd_telemetry_*.
type metrics struct {
	streams         prometheus.Gauge
	streamsRejected *prometheus.CounterVec
	entries         *prometheus.CounterVec
	msgDropped      *prometheus.CounterVec
	entriesDropped  *prometheus.CounterVec
	seriesCount     *prometheus.GaugeVec
	overflow        *prometheus.CounterVec
	expired         prometheus.Counter
	peers           prometheus.Gauge
	sinkExported    *prometheus.CounterVec
	sinkDropped     *prometheus.CounterVec
	sinkErrors      *prometheus.CounterVec
}

// Reasons in the labels of the drop and rejection counters.
const (
	reasonMaxStreams        = "max_streams"
	reasonMaxStreamsPerConn = "max_streams_per_connection"
	reasonIdentity          = "identity"
	reasonTooLarge          = "too_large"
	reasonMalformed         = "malformed"
	reasonTooManyEntries    = "too_many_entries"
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshd_telemetry_als_streams", Help: "Open access-log service streams.",
		}),
		streamsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_telemetry_als_streams_rejected_total", Help: "Access-log streams refused or ended, by reason (max_streams, max_streams_per_connection, identity).",
		}, []string{"reason"}),
		entries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_telemetry_als_entries_total", Help: "Access-log entries received, by kind (http, tcp).",
		}, []string{"kind"}),
		msgDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_telemetry_als_messages_dropped_total", Help: "Access-log messages dropped whole, by reason (too_large, malformed).",
		}, []string{"reason"}),
		entriesDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_telemetry_als_entries_dropped_total", Help: "Access-log entries dropped from messages that were read, by reason (too_many_entries, malformed).",
		}, []string{"reason"}),
		seriesCount: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshd_telemetry_series", Help: "Label combinations each request metric holds, besides its overflow series.",
		}, []string{"metric"}),
		overflow: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_telemetry_series_overflow_total", Help: "Observations recorded in a request metric's __overflow__ series because the metric was at its series limit, by metric.",
		}, []string{"metric"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshd_telemetry_series_expired_total", Help: "Label combinations deleted after metrics.seriesIdleTimeout without observations.",
		}),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshd_telemetry_peer_addresses", Help: "Proxy addresses known to telemetry for naming the peer workload of access-log entries.",
		}),
		sinkExported: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_telemetry_sink_records_exported_total", Help: "Access-log records a sink exported, by sink.",
		}, []string{"sink"}),
		sinkDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_telemetry_sink_records_dropped_total", Help: "Access-log records a sink lost because its queue was full, it failed, or meshd stopped, by sink.",
		}, []string{"sink"}),
		sinkErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_telemetry_sink_export_errors_total", Help: "Failed exports, by sink.",
		}, []string{"sink"}),
	}
	for _, c := range []prometheus.Collector{m.streams, m.streamsRejected, m.entries, m.msgDropped, m.entriesDropped,
		m.seriesCount, m.overflow, m.expired, m.peers, m.sinkExported, m.sinkDropped, m.sinkErrors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("telemetry: register metrics: %w", err)
		}
	}
	// Show the label values that can occur from the start, so dashboards
	// and alerts see zeros rather than nothing.
	for _, r := range []string{reasonMaxStreams, reasonMaxStreamsPerConn, reasonIdentity} {
		m.streamsRejected.WithLabelValues(r)
	}
	for _, k := range []string{"http", "tcp"} {
		m.entries.WithLabelValues(k)
	}
	for _, r := range []string{reasonTooLarge, reasonMalformed} {
		m.msgDropped.WithLabelValues(r)
	}
	for _, r := range []string{reasonTooManyEntries, reasonMalformed} {
		m.entriesDropped.WithLabelValues(r)
	}
	return m, nil
}
