package autoregister

import "github.com/prometheus/client_golang/prometheus"

// metrics are Istio's auto-registration counters, where the meaning is the
// same, and meshd's own for the rest.
type metrics struct {
	success    prometheus.Counter
	updates    prometheus.Counter
	unregister prometheus.Counter
	deletes    prometheus.Counter
	errors     prometheus.Counter
	refusals   *prometheus.CounterVec
	workloads  prometheus.Gauge
}

func newMetrics(r prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		success: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "auto_registration_success_total", Help: "Workloads registered by their agent's xDS stream.",
		}),
		updates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "auto_registration_updates_total", Help: "Registered workloads changed (labels, ports, health, WorkloadGroup edits).",
		}),
		unregister: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "auto_registration_unregister_total", Help: "Registered workloads whose agent's last xDS stream ended (grace period started).",
		}),
		deletes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "auto_registration_deletes_total", Help: "Workloads deregistered: grace period over, or no longer admitted by their WorkloadGroup.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "auto_registration_errors_total", Help: "Registrations refused or failed.",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_autoregister_refusals_total",
			Help: "Registrations refused, by reason: unverified, no_group, service_account, template, labels, ports, address, invalid, registrar. See /debug/autoregisterz.",
		}, []string{"reason"}),
		workloads: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshd_autoregister_workloads", Help: "Workloads registered by their agents now (including those in their grace period).",
		}),
	}
	for _, c := range []prometheus.Collector{m.success, m.updates, m.unregister, m.deletes, m.errors, m.refusals, m.workloads} {
		if err := r.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
