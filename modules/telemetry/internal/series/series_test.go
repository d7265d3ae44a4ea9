package series

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

type fixture struct {
	reg      *prometheus.Registry
	f        *Family
	overflow *prometheus.CounterVec
}

func newFixture(t *testing.T, reqLimit, durLimit int) *fixture {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	ov := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshd_telemetry_series_overflow_total", Help: "h"}, []string{"metric"})
	sc := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meshd_telemetry_series", Help: "h"}, []string{"metric"})
	reg.MustRegister(ov, sc)
	f, err := NewFamily(Options{
		Labels: []int{Reporter, SourceWorkload, ResponseCode},
		Metrics: []MetricSpec{
			{Name: "req_total", Help: "h", Kind: Counter, Limit: reqLimit},
			{Name: "dur", Help: "h", Kind: Histogram, Buckets: []float64{1, 10}, Limit: durLimit},
		},
		Registerer: reg, OverflowTotal: ov, SeriesCount: sc,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{reg: reg, f: f, overflow: ov}
}

func tuple(reporter, workload, code string) *Tuple {
	var t Tuple
	t[Reporter], t[SourceWorkload], t[ResponseCode] = reporter, workload, code
	return &t
}

// values returns metric name -> "label=value,..." -> counter value or
// histogram count.
func (fx *fixture) values(t *testing.T) map[string]map[string]float64 {
	t.Helper()
	mfs, err := fx.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]float64{}
	for _, mf := range mfs {
		out[mf.GetName()] = map[string]float64{}
		for _, m := range mf.GetMetric() {
			var parts []string
			for _, lp := range m.GetLabel() {
				parts = append(parts, lp.GetName()+"="+lp.GetValue())
			}
			out[mf.GetName()][strings.Join(parts, ",")] = value(m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	}
	return float64(m.GetHistogram().GetSampleCount())
}

func TestAdmitWithinLimit(t *testing.T) {
	fx := newFixture(t, 10, 10)
	c := NewCache(4)
	for i := range 3 {
		for range i + 1 {
			s := c.Get(fx.f, tuple("destination", fmt.Sprint("w", i), "200"), 1)
			s.Observe(0, 1)
			s.Observe(1, 5)
		}
	}
	v := fx.values(t)
	for i := range 3 {
		key := fmt.Sprintf("reporter=destination,response_code=200,source_workload=w%d", i)
		if got := v["req_total"][key]; got != float64(i+1) {
			t.Errorf("req_total{%s} = %v, want %d", key, got, i+1)
		}
		if got := v["dur"][key]; got != float64(i+1) {
			t.Errorf("dur{%s} count = %v, want %d", key, got, i+1)
		}
	}
	if got := v["meshd_telemetry_series"]["metric=req_total"]; got != 3 {
		t.Errorf("series gauge = %v, want 3", got)
	}
}

// TestFlood sends many distinct tuples: each metric keeps its limit of
// series, the rest lands in the overflow series and is counted, and
// neither the family nor the cache grows.
func TestFlood(t *testing.T) {
	fx := newFixture(t, 50, 20)
	c := NewCache(16)
	const n = 5000
	for i := range n {
		c.Get(fx.f, tuple("source", fmt.Sprint("w", i), "200"), 1).Observe(0, 1)
		c.Get(fx.f, tuple("source", fmt.Sprint("w", i), "200"), 1).Observe(1, 1)
	}
	v := fx.values(t)
	if got := len(v["req_total"]); got != 51 {
		t.Errorf("req_total has %d series, want 50 and the overflow series", got)
	}
	if got := len(v["dur"]); got != 21 {
		t.Errorf("dur has %d series, want 20 and the overflow series", got)
	}
	ovKey := "reporter=source,response_code=__overflow__,source_workload=__overflow__"
	if got := v["req_total"][ovKey]; got != n-50 {
		t.Errorf("req_total overflow = %v, want %d", got, n-50)
	}
	if got := v["dur"][ovKey]; got != n-20 {
		t.Errorf("dur overflow count = %v, want %d", got, n-20)
	}
	if got := v["meshd_telemetry_series_overflow_total"]["metric=req_total"]; got != n-50 {
		t.Errorf("overflow_total{req_total} = %v, want %d", got, n-50)
	}
	if got := v["meshd_telemetry_series_overflow_total"]["metric=dur"]; got != n-20 {
		t.Errorf("overflow_total{dur} = %v, want %d", got, n-20)
	}
	if got := len(fx.f.series); got != 50 {
		t.Errorf("family remembers %d tuples, want 50", got)
	}
	if got := len(c.m); got > 16 {
		t.Errorf("cache holds %d, want at most 16", got)
	}
	st := fx.f.Stats()
	if st[0].Series != 50 || st[0].Folded != n-50 || st[1].Series != 20 || st[1].Folded != n-20 {
		t.Errorf("stats %+v", st)
	}
}

func TestFloodAllocatesNothing(t *testing.T) {
	fx := newFixture(t, 5, 5)
	c := NewCache(16)
	tuples := make([]*Tuple, 1000)
	for i := range tuples {
		tuples[i] = tuple("source", fmt.Sprint("w", i), "200")
	}
	for _, tu := range tuples[:10] {
		c.Get(fx.f, tu, 1).Observe(0, 1)
	}
	i := 10
	allocs := testing.AllocsPerRun(500, func() {
		s := c.Get(fx.f, tuples[i%len(tuples)], 1)
		s.Observe(0, 1)
		s.Observe(1, 1)
		i++
		if i == len(tuples) {
			i = 10
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per flood entry, want 0", allocs)
	}
}

func TestHotPathAllocatesNothing(t *testing.T) {
	fx := newFixture(t, 100, 100)
	c := NewCache(64)
	tuples := make([]*Tuple, 20)
	for i := range tuples {
		tuples[i] = tuple("destination", fmt.Sprint("w", i), "200")
	}
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		s := c.Get(fx.f, tuples[i%len(tuples)], 1)
		s.Observe(0, 1)
		s.Observe(1, 3)
		i++
	})
	if allocs != 0 {
		t.Errorf("%v allocations per entry, want 0", allocs)
	}
}

func TestExpireFreesRoom(t *testing.T) {
	fx := newFixture(t, 2, 1)
	c := NewCache(16)
	c.Get(fx.f, tuple("source", "old", "200"), 10).Observe(0, 1)
	a := c.Get(fx.f, tuple("source", "a", "200"), 20) // dur folds it: limit 1
	a.Observe(0, 1)
	a.Observe(1, 1)
	if fx.f.Expire(15, 20) != 1 {
		t.Fatal("Expire did not delete the idle series")
	}
	v := fx.values(t)
	if _, ok := v["req_total"]["reporter=source,response_code=200,source_workload=old"]; ok {
		t.Error("expired series still exported")
	}
	// dur had room again, so a was re-admitted there; its counter carried over.
	a2 := c.Get(fx.f, tuple("source", "a", "200"), 21)
	if a2 == a {
		t.Fatal("cache kept the replaced series")
	}
	a2.Observe(0, 1)
	a2.Observe(1, 1)
	v = fx.values(t)
	key := "reporter=source,response_code=200,source_workload=a"
	if got := v["req_total"][key]; got != 2 {
		t.Errorf("req_total{a} = %v, want 2 (carried over)", got)
	}
	if got := v["dur"][key]; got != 1 {
		t.Errorf("dur{a} = %v, want 1 (admitted after expiry)", got)
	}
	b := c.Get(fx.f, tuple("source", "b", "200"), 22)
	b.Observe(0, 1)
	if got := testutil.ToFloat64(fx.overflow.WithLabelValues("req_total")); got != 0 {
		t.Errorf("req_total overflowed (%v) though expiry made room", got)
	}
}

func TestBadLabelValues(t *testing.T) {
	fx := newFixture(t, 10, 10)
	c := NewCache(16)
	long := strings.Repeat("x", 1000)
	for range 3 {
		c.Get(fx.f, tuple("source", long, "\xff\xfe"), 1).Observe(0, 1)
	}
	v := fx.values(t)
	key := "reporter=source,response_code=\uFFFD,source_workload=" + strings.Repeat("x", MaxLabelValue)
	if got := v["req_total"][key]; got != 3 {
		t.Errorf("req_total = %v, want 3 in one cleaned series; have %v", got, v["req_total"])
	}
	if fx.f.Stats()[0].Series != 1 {
		t.Errorf("cleaned values counted as %d series", fx.f.Stats()[0].Series)
	}
}
