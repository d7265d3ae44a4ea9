package server

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics uses Istio's names where the meaning is the same, so existing
// dashboards work; meshd_xds_* are meshd's own.
type metrics struct {
	connected       *prometheus.GaugeVec     // pilot_xds{type}
	pushes          *prometheus.CounterVec   // pilot_xds_pushes{type}
	pushTime        *prometheus.HistogramVec // pilot_xds_push_time{type}
	convergence     prometheus.Histogram     // pilot_proxy_convergence_time
	rejects         *prometheus.CounterVec   // pilot_total_xds_rejects{type}
	configSize      *prometheus.HistogramVec // pilot_xds_config_size_bytes{type}
	debounce        prometheus.Histogram     // pilot_debounce_time
	sendErrors      *prometheus.CounterVec   // meshd_xds_send_errors_total{type}
	generateTime    *prometheus.HistogramVec // meshd_xds_generate_seconds{type}
	generateErrors  *prometheus.CounterVec   // meshd_xds_generate_errors_total{type}
	inconsistent    *prometheus.CounterVec   // meshd_xds_inconsistent_total{type}
	groups          *prometheus.GaugeVec     // meshd_xds_groups{type}
	streamsRejected *prometheus.CounterVec   // meshd_xds_streams_rejected_total{reason}
	throttled       prometheus.Counter       // meshd_xds_requests_throttled_total
	triggers        *prometheus.CounterVec   // meshd_xds_push_triggers_total{kind}
	behind          prometheus.GaugeFunc     // meshd_xds_proxies_behind_config
}

var (
	sizeBuckets = prometheus.ExponentialBuckets(1<<10, 4, 10) // 1 kB .. 256 MB
	timeBuckets = []float64{.001, .005, .01, .025, .05, .1, .2, .5, 1, 2.5, 5, 10, 30}
)

// newMetrics makes the metrics and registers them with reg (nil: none).
// behind is read at scrape time for meshd_xds_proxies_behind_config.
func newMetrics(reg prometheus.Registerer, behind func() float64) *metrics {
	m := &metrics{
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pilot_xds", Help: "Number of connected xDS streams, by proxy type.",
		}, []string{"type"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pilot_xds_pushes", Help: "xDS responses sent, by type (cds, eds, lds, rds, sds, ...).",
		}, []string{"type"}),
		pushTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "pilot_xds_push_time", Help: "Seconds from a response being ready for a proxy to it being written to the stream, by type.",
			Buckets: timeBuckets,
		}, []string{"type"}),
		convergence: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pilot_proxy_convergence_time", Help: "Seconds from a change being pushed (first push request of the debounce window) to a proxy acknowledging it.",
			Buckets: timeBuckets,
		}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pilot_total_xds_rejects", Help: "Responses proxies rejected (NACK), by type.",
		}, []string{"type"}),
		configSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "pilot_xds_config_size_bytes", Help: "Size of the resources in each response sent, by type.",
			Buckets: sizeBuckets,
		}, []string{"type"}),
		debounce: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pilot_debounce_time", Help: "Seconds from the first push request of a debounce window to the push starting.",
			Buckets: timeBuckets,
		}),
		sendErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_xds_send_errors_total", Help: "Responses that could not be written to their stream, by type.",
		}, []string{"type"}),
		generateTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "meshd_xds_generate_seconds", Help: "Seconds a generator took for one group of proxies, by type.",
			Buckets: timeBuckets,
		}, []string{"type"}),
		generateErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_xds_generate_errors_total", Help: "Generator calls that failed; the group keeps its last good resources.",
		}, []string{"type"}),
		inconsistent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_xds_inconsistent_total", Help: "Generated sets withheld because they refer to resources of the dependent type that do not exist, by type.",
		}, []string{"type"}),
		groups: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshd_xds_groups", Help: "Groups of proxies sharing one generated resource set, by type.",
		}, []string{"type"}),
		streamsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_xds_streams_rejected_total", Help: "xDS streams refused or closed for breaking limits, by reason.",
		}, []string{"reason"}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshd_xds_requests_throttled_total", Help: "Requests delayed because their stream exceeded modules.xds.requestRate.",
		}),
		triggers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_xds_push_triggers_total", Help: "Pushes run after debouncing, by kind (full, incremental).",
		}, []string{"kind"}),
		// No label per revision or proxy: /debug/syncz and meshd status
		// say who is behind and on which revision.
		behind: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshd_xds_proxies_behind_config", Help: "Connected proxies that have not acknowledged the latest config revision pushed (including those that rejected it).",
		}, behind),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.pushes, m.pushTime, m.convergence, m.rejects, m.configSize,
			m.debounce, m.sendErrors, m.generateTime, m.generateErrors, m.inconsistent, m.groups,
			m.streamsRejected, m.throttled, m.triggers, m.behind)
	}
	return m
}
