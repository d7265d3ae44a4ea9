package galley

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are galley's Prometheus metrics. The two validation counters keep
// the names Istio's galley used, so existing dashboards work.
type metrics struct {
	passed   prometheus.Counter
	failed   prometheus.Counter
	revision prometheus.Gauge
	objects  *prometheus.GaugeVec
	rejected prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		passed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "galley_validation_passed",
			Help: "Config changes (counted per origin, such as a file) that passed validation and were accepted.",
		}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "galley_validation_failed",
			Help: "Config changes (counted per origin) that were rejected; the origin's last accepted config keeps serving.",
		}),
		revision: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshd_galley_config_revision",
			Help: "Revision of the accepted config.",
		}),
		objects: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshd_galley_accepted_objects",
			Help: "Accepted config objects by kind.",
		}, []string{"kind"}),
		rejected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshd_galley_rejected_origins",
			Help: "Origins (files) whose latest content is rejected, so that older content of theirs is serving.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.passed, m.failed, m.revision, m.objects, m.rejected} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) setObjects(kinds map[string]int) {
	for k, n := range kinds {
		m.objects.WithLabelValues(k).Set(float64(n))
	}
}
