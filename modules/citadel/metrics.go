package citadel

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics uses Istio's names where the meaning is the same, so Istio's
// dashboards work; the rest are meshd's own.
type metrics struct {
	csr          prometheus.Counter
	success      prometheus.Counter
	parseErr     prometheus.Counter
	authnFailure prometheus.Counter
	refused      *prometheus.CounterVec
	rootExpiry   prometheus.Gauge
	chainExpiry  prometheus.Gauge
	duration     prometheus.Histogram
	phase        *prometheus.GaugeVec
	bundle       prometheus.Gauge
}

// Refusal reasons, the values of meshd_citadel_csr_refused_total{reason}.
const (
	reasonAuthentication = "authentication"
	reasonRateLimited    = "rate_limited"
	reasonInternal       = "internal"
	reasonSigner         = "signer" // the external signer failed or returned an unusable chain
	// The CSR reasons come from ca.Reason: malformed, bad_signature,
	// key_type, identity_mismatch, extra_san.
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		csr: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "citadel_server_csr_count", Help: "The number of CSRs received by Citadel server.",
		}),
		success: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "citadel_server_success_cert_issuance_count", Help: "The number of certificates issuances that have succeeded.",
		}),
		parseErr: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "citadel_server_csr_parsing_err_count", Help: "The number of errors occurred when parsing the CSR (malformed request or invalid self-signature).",
		}),
		authnFailure: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "citadel_server_authentication_failure_count", Help: "The number of authentication failures.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_citadel_csr_refused_total", Help: "CSRs refused, by reason (authentication, rate_limited, malformed, bad_signature, key_type, identity_mismatch, extra_san, signer, internal).",
		}, []string{"reason"}),
		rootExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "citadel_server_root_cert_expiry_timestamp", Help: "The unix timestamp, in seconds, when the root certificate that signs will expire.",
		}),
		chainExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "citadel_server_cert_chain_expiry_timestamp", Help: "The unix timestamp, in seconds, when the signing certificate will expire.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "meshd_citadel_csr_duration_seconds", Help: "Time to answer a CSR, from receipt to response, including the ledger commit.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, 1},
		}),
		phase: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshd_citadel_rotation_phase", Help: "1 for the current root rotation phase (idle, staged, switched), 0 for the others.",
		}, []string{"phase"}),
		bundle: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshd_citadel_trust_bundle_version", Help: "Version of the trust bundle served to proxies; it increases whenever a root is added or retired.",
		}),
	}
	for _, r := range []string{reasonAuthentication, reasonRateLimited, reasonInternal, reasonSigner, "malformed", "bad_signature", "key_type", "identity_mismatch", "extra_san"} {
		m.refused.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.csr, m.success, m.parseErr, m.authnFailure, m.refused, m.rootExpiry, m.chainExpiry, m.duration, m.phase, m.bundle} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) setPhase(p Phase) {
	for _, q := range []Phase{PhaseIdle, PhaseStaged, PhaseSwitched} {
		v := 0.0
		if q == p {
			v = 1
		}
		m.phase.WithLabelValues(string(q)).Set(v)
	}
}
