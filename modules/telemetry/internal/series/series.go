// Package series keeps the request metrics telemetry derives from access
// logs, with a bound on how many label combinations each metric may hold.
//
// A Family is a set of metrics sharing one label tuple (the HTTP request
// metrics, the TCP connection metrics). The first time a tuple is seen, the
// family admits it into each metric that has room under its limit and
// resolves the Prometheus child once; a metric at its limit records the
// observation in its overflow series instead, where every label but
// reporter is "__overflow__", and counts it. So a proxy sending endless
// distinct label values costs a bounded number of series and one counter
// increment per entry, never unbounded memory.
//
// The hot path does not touch the family's lock or hash the labels into
// Prometheus: a per-stream Cache maps a tuple to its Series, whose
// Prometheus children are already resolved, so an entry costs a map lookup
// and atomic adds. Series idle for longer than the expiry are deleted,
// which frees room under the limits.
package series

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// Overflow is the label value of the series that collects observations
// beyond a metric's series limit.
const Overflow = "__overflow__"

// MaxLabelValue is the longest label value kept; longer values are cut.
const MaxLabelValue = 256

// Positions in a Tuple.
const (
	Reporter = iota
	SourceWorkload
	SourceNamespace
	SourcePrincipal
	DestinationService
	DestinationWorkload
	DestinationNamespace
	ResponseCode
	GRPCStatus
	SecurityPolicy
	NumLabels
)

// LabelNames are the Prometheus label names of the Tuple positions.
var LabelNames = [NumLabels]string{
	"reporter", "source_workload", "source_workload_namespace", "source_principal",
	"destination_service", "destination_workload", "destination_workload_namespace",
	"response_code", "grpc_response_status", "connection_security_policy",
}

// Tuple holds the label values of one series by position. Its strings may
// be transient (pointing into a message buffer); the family copies them
// when it admits a tuple.
type Tuple [NumLabels]string

// Kind is the kind of a metric.
type Kind int

// Metric kinds.
const (
	Counter Kind = iota
	Histogram
)

// MetricSpec describes one metric of a family.
type MetricSpec struct {
	Name, Help string
	Kind       Kind
	Buckets    []float64 // Histogram only
	// Limit is how many series the metric may hold besides its overflow
	// series; at least 1.
	Limit int
}

// Options configure a family.
type Options struct {
	// Labels are the Tuple positions the family's metrics carry, in order.
	// Reporter must be among them.
	Labels  []int
	Metrics []MetricSpec
	// Registerer receives the metrics.
	Registerer prometheus.Registerer
	// OverflowTotal counts observations folded into an overflow series,
	// by metric: meshd_telemetry_series_overflow_total. Series counts
	// meshd_telemetry_series, by metric. Both are shared by the families.
	OverflowTotal *prometheus.CounterVec
	SeriesCount   *prometheus.GaugeVec
}

// Family is a set of metrics over one label tuple.
type Family struct {
	labels   []int
	reporter int // index of Reporter in labels
	metrics  []*metric

	mu       sync.Mutex
	series   map[Tuple]*Series
	overflow map[string]*Series // by reporter
	values   []string           // scratch for label values
}

type metric struct {
	spec     MetricSpec
	counter  *prometheus.CounterVec
	hist     *prometheus.HistogramVec
	count    int // admitted series; under Family.mu
	overflow prometheus.Counter
	gauge    prometheus.Gauge
	folded   atomic.Uint64 // observations folded, for /debug/telemetryz
}

// NewFamily registers the family's metrics.
func NewFamily(o Options) (*Family, error) {
	f := &Family{labels: o.Labels, reporter: slices.Index(o.Labels, Reporter),
		series: map[Tuple]*Series{}, overflow: map[string]*Series{}}
	if f.reporter < 0 {
		return nil, fmt.Errorf("series: family labels must include the reporter")
	}
	names := make([]string, len(o.Labels))
	for i, l := range o.Labels {
		names[i] = LabelNames[l]
	}
	for _, spec := range o.Metrics {
		if spec.Limit < 1 {
			return nil, fmt.Errorf("series: %s: limit %d, want at least 1", spec.Name, spec.Limit)
		}
		m := &metric{spec: spec,
			overflow: o.OverflowTotal.WithLabelValues(spec.Name),
			gauge:    o.SeriesCount.WithLabelValues(spec.Name)}
		var c prometheus.Collector
		switch spec.Kind {
		case Counter:
			m.counter = prometheus.NewCounterVec(prometheus.CounterOpts{Name: spec.Name, Help: spec.Help}, names)
			c = m.counter
		case Histogram:
			m.hist = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: spec.Name, Help: spec.Help, Buckets: spec.Buckets}, names)
			c = m.hist
		}
		if err := o.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("series: register %s: %w", spec.Name, err)
		}
		f.metrics = append(f.metrics, m)
	}
	f.values = make([]string, len(names))
	return f, nil
}

// Series is one label tuple of a family, with its Prometheus children
// resolved. Observe it through Cache.
type Series struct {
	tuple    Tuple
	handles  []handle // by metric
	lastUsed atomic.Int64
	dead     atomic.Bool
	partial  bool // some metric folded this tuple into its overflow series
}

type handle struct {
	counter  prometheus.Counter
	observer prometheus.Observer
	overflow prometheus.Counter // set when this metric folded the tuple
	folded   *atomic.Uint64
}

// Observe adds v to the family's i-th metric: Add for a counter, Observe
// for a histogram.
func (s *Series) Observe(i int, v float64) {
	h := &s.handles[i]
	if h.overflow != nil {
		h.overflow.Inc()
		h.folded.Add(1)
	}
	if h.counter != nil {
		h.counter.Add(v)
		return
	}
	h.observer.Observe(v)
}

// Tuple returns the series' label values.
func (s *Series) Tuple() Tuple { return s.tuple }

// touch records use at now (a coarse clock: seconds), writing only when it
// changed so that hot series do not bounce a cache line between cores.
func (s *Series) touch(now int64) {
	if s.lastUsed.Load() != now {
		s.lastUsed.Store(now)
	}
}

// resolve returns the series of t and whether it is a series of its own
// (admitted by at least one metric). A tuple no metric has room for gets
// the overflow series of its reporter and is not remembered, so a flood of
// distinct tuples leaves nothing behind and allocates nothing.
func (f *Family) resolve(t *Tuple, now int64) (*Series, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.series[*t]; ok {
		s.touch(now)
		return s, true
	}
	key, changed := *t, false
	for i, v := range key {
		if c, ok := clean(v); ok {
			key[i], changed = c, true
		}
	}
	if changed {
		if s, ok := f.series[key]; ok {
			s.touch(now)
			return s, true
		}
	}
	admit := false
	for _, m := range f.metrics {
		if m.count < m.spec.Limit {
			admit = true
			break
		}
	}
	if !admit {
		return f.overflowSeries(key[Reporter]), false
	}
	s := &Series{handles: make([]handle, len(f.metrics))}
	for i, v := range key {
		s.tuple[i] = strings.Clone(v)
	}
	f.fill(s, now)
	f.series[s.tuple] = s
	return s, true
}

// fill resolves each metric's child for s, or its overflow series. Under f.mu.
func (f *Family) fill(s *Series, now int64) {
	s.partial = false
	for i, m := range f.metrics {
		if s.handles[i].overflow == nil && (s.handles[i].counter != nil || s.handles[i].observer != nil) {
			continue // admitted before
		}
		if m.count < m.spec.Limit {
			m.count++
			m.gauge.Set(float64(m.count))
			s.handles[i] = f.child(m, &s.tuple)
			continue
		}
		ov := f.overflowSeries(s.tuple[Reporter])
		s.handles[i] = handle{counter: ov.handles[i].counter, observer: ov.handles[i].observer, overflow: m.overflow, folded: &m.folded}
		s.partial = true
	}
	s.lastUsed.Store(now)
}

func (f *Family) child(m *metric, t *Tuple) handle {
	for i, l := range f.labels {
		f.values[i] = t[l]
	}
	if m.counter != nil {
		return handle{counter: m.counter.WithLabelValues(f.values...)}
	}
	return handle{observer: m.hist.WithLabelValues(f.values...)}
}

// overflowSeries returns the reporter's overflow series. Under f.mu.
func (f *Family) overflowSeries(reporter string) *Series {
	if s, ok := f.overflow[reporter]; ok {
		return s
	}
	s := &Series{handles: make([]handle, len(f.metrics))}
	for i := range s.tuple {
		s.tuple[i] = Overflow
	}
	s.tuple[Reporter] = strings.Clone(reporter)
	for i, m := range f.metrics {
		h := f.child(m, &s.tuple)
		h.overflow, h.folded = m.overflow, &m.folded
		s.handles[i] = h
	}
	f.overflow[s.tuple[Reporter]] = s
	return s
}

// Expire deletes the series last used before the given time (seconds, the
// clock the caches are given), which frees room under the limits, then
// gives series that some metric had folded a second chance at admission.
// It returns how many series it deleted.
func (f *Family) Expire(before, now int64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for t, s := range f.series {
		if s.lastUsed.Load() >= before {
			continue
		}
		for i, m := range f.metrics {
			if s.handles[i].overflow != nil {
				continue
			}
			for j, l := range f.labels {
				f.values[j] = t[l]
			}
			if m.counter != nil {
				m.counter.DeleteLabelValues(f.values...)
			} else {
				m.hist.DeleteLabelValues(f.values...)
			}
			m.count--
			m.gauge.Set(float64(m.count))
		}
		// A cache holding s notices on its next lookup. An observation
		// racing with this deletion is lost; the series was idle.
		s.dead.Store(true)
		delete(f.series, t)
		n++
	}
	for t, s := range f.series {
		if !s.partial || !f.room(s) {
			continue
		}
		// Handles are read without the lock, so replace the series
		// rather than change it; admitted children carry over.
		ns := &Series{tuple: s.tuple, handles: slices.Clone(s.handles)}
		f.fill(ns, s.lastUsed.Load())
		f.series[t] = ns
		s.dead.Store(true)
	}
	return n
}

// room says whether a metric that folded s has room now. Under f.mu.
func (f *Family) room(s *Series) bool {
	for i, m := range f.metrics {
		if s.handles[i].overflow != nil && m.count < m.spec.Limit {
			return true
		}
	}
	return false
}

// MetricStats is one metric's state, for /debug/telemetryz.
type MetricStats struct {
	Metric string `json:"metric"`
	Series int    `json:"series"`
	Limit  int    `json:"limit"`
	// Folded counts observations recorded in the overflow series.
	Folded uint64 `json:"folded"`
}

// Stats returns the state of each metric of the family.
func (f *Family) Stats() []MetricStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]MetricStats, len(f.metrics))
	for i, m := range f.metrics {
		out[i] = MetricStats{Metric: m.spec.Name, Series: m.count, Limit: m.spec.Limit, Folded: m.folded.Load()}
	}
	return out
}

// clean returns v cut to MaxLabelValue bytes and made valid UTF-8, and
// whether that changed it. It allocates only for invalid UTF-8.
func clean(v string) (string, bool) {
	changed := false
	if len(v) > MaxLabelValue {
		v, changed = v[:MaxLabelValue], true
	}
	if !utf8.ValidString(v) {
		return strings.ToValidUTF8(v, "\uFFFD"), true
	}
	return v, changed
}

// Cache is one stream's map from tuple to series. It is not safe for
// concurrent use; each receiving goroutine has its own.
type Cache struct {
	max int
	m   map[Tuple]*Series
}

// NewCache returns a cache holding at most max series.
func NewCache(max int) *Cache {
	return &Cache{max: max, m: make(map[Tuple]*Series, max)}
}

// Get returns the series of t in f. now is a coarse clock in seconds.
func (c *Cache) Get(f *Family, t *Tuple, now int64) *Series {
	if s, ok := c.m[*t]; ok && !s.dead.Load() {
		s.touch(now)
		return s
	}
	s, own := f.resolve(t, now)
	if !own {
		return s // not remembered: a flood must not churn the cache
	}
	if len(c.m) >= c.max {
		clear(c.m)
	}
	c.m[s.tuple] = s
	return s
}
