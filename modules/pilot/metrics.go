package pilot

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/registry"
)

// metrics are pilot's. Names follow Istio's where the meaning is the same
// (pilot_services, pilot_virt_services), so existing dashboards work;
// meshd_pilot_* are meshd's own.
type metrics struct {
	services   prometheus.Gauge
	virtual    prometheus.Gauge
	endpoints  prometheus.Gauge
	conflicts  prometheus.Gauge
	workloads  prometheus.Gauge
	pushes     *prometheus.CounterVec
	buildTime  prometheus.Histogram
	registries *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pilot_services", Help: "Total services known to pilot (after merging registries).",
		}),
		virtual: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pilot_virt_services", Help: "Total virtual services known to pilot.",
		}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshd_pilot_endpoints", Help: "Endpoints of all services known to pilot, healthy or not.",
		}),
		conflicts: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshd_pilot_registry_conflicts", Help: "Services (host name and namespace) known to more than one registry; the one with precedence wins. See /debug/registryz.",
		}),
		workloads: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshd_pilot_registered_workloads", Help: "Workloads registered at run time through the registration API.",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_pilot_push_requests_total", Help: "Pushes pilot asked the xds module for, by kind: full (config or service definitions changed) or eds (endpoints only).",
		}, []string{"kind"}),
		buildTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "meshd_pilot_index_build_seconds", Help: "Time to rebuild pilot's index after a config or registry change.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		registries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshd_pilot_registry_services", Help: "Services each registry contributes to the merged view (after precedence).",
		}, []string{"registry"}),
	}
	for _, c := range []prometheus.Collector{m.services, m.virtual, m.endpoints, m.conflicts, m.workloads, m.pushes, m.buildTime, m.registries} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m.pushes.WithLabelValues("full")
	m.pushes.WithLabelValues("eds")
	return m, nil
}

func (m *metrics) observeIndex(ix *index.Index, view *registry.View, took time.Duration) {
	m.buildTime.Observe(took.Seconds())
	m.services.Set(float64(len(view.Services)))
	m.conflicts.Set(float64(len(view.Conflicts)))
	eps := 0
	bySource := map[string]int{}
	for _, s := range view.Services {
		eps += len(s.Endpoints)
		bySource[s.Source]++
	}
	m.endpoints.Set(float64(eps))
	m.registries.Reset()
	for src, n := range bySource {
		m.registries.WithLabelValues(src).Set(float64(n))
	}
	vs := 0
	for range ix.Config.All(galleyapi.KindVirtualService) {
		vs++
	}
	m.virtual.Set(float64(vs))
}
