package telemetry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/modules/telemetry/api"
)

// exportTimeout bounds one Export call, so a stuck sink backs up only its
// own queue.
const exportTimeout = 10 * time.Second

// sinks fans access-log records out to the registered sinks. The receiver
// hands each message's records to every sink's queue without blocking; one
// goroutine per sink exports them.
type sinks struct {
	m     *metrics
	queue int

	list atomic.Pointer[[]*sinkRunner] // read by the receiver on every message

	mu      sync.Mutex
	ctx     context.Context // set while running
	wg      sync.WaitGroup
	stopped bool
}

type sinkRunner struct {
	name     string
	sink     api.Sink
	q        chan []api.Record
	exported prometheus.Counter
	dropped  prometheus.Counter
	errors   prometheus.Counter

	nExported, nDropped, nErrors atomic.Uint64
	lastErr                      atomic.Pointer[string]
}

func newSinks(m *metrics, queue int) *sinks {
	s := &sinks{m: m, queue: queue}
	s.list.Store(&[]*sinkRunner{})
	return s
}

// add implements api.SinkRegistry.
func (s *sinks) add(name string, sink api.Sink) error {
	if name == "" || sink == nil {
		return errors.New("telemetry: AddSink: empty name or nil sink")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("telemetry: AddSink after shutdown")
	}
	list := *s.list.Load()
	for _, r := range list {
		if r.name == name {
			return fmt.Errorf("telemetry: sink %q already added", name)
		}
	}
	r := &sinkRunner{name: name, sink: sink, q: make(chan []api.Record, s.queue),
		exported: s.m.sinkExported.WithLabelValues(name),
		dropped:  s.m.sinkDropped.WithLabelValues(name),
		errors:   s.m.sinkErrors.WithLabelValues(name)}
	s.list.Store(new(append(slices.Clone(list), r)))
	if s.ctx != nil {
		s.start(r)
	}
	return nil
}

// active reports whether any sink wants records, so that the receiver
// builds them only then.
func (s *sinks) active() bool { return len(*s.list.Load()) > 0 }

// publish queues one batch for every sink; a full queue drops it.
func (s *sinks) publish(batch []api.Record) {
	for _, r := range *s.list.Load() {
		select {
		case r.q <- batch:
		default:
			r.drop(len(batch))
		}
	}
}

func (r *sinkRunner) drop(n int) {
	r.dropped.Add(float64(n))
	r.nDropped.Add(uint64(n))
}

// run starts the sink goroutines and stops them when ctx ends. Batches
// still queued then are dropped and counted.
func (s *sinks) run(ctx context.Context) {
	s.mu.Lock()
	s.ctx = ctx
	for _, r := range *s.list.Load() {
		s.start(r)
	}
	s.mu.Unlock()
	<-ctx.Done()
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *sinks) start(r *sinkRunner) {
	ctx := s.ctx
	s.wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				for {
					select {
					case b := <-r.q:
						r.drop(len(b))
					default:
						return
					}
				}
			case b := <-r.q:
				r.export(ctx, b)
			}
		}
	})
}

func (r *sinkRunner) export(ctx context.Context, batch []api.Record) {
	ctx, cancel := context.WithTimeout(ctx, exportTimeout)
	defer cancel()
	if err := r.sink.Export(ctx, batch); err != nil {
		msg := err.Error()
		r.lastErr.Store(&msg)
		r.errors.Inc()
		r.nErrors.Add(1)
		r.drop(len(batch))
		return
	}
	r.exported.Add(float64(len(batch)))
	r.nExported.Add(uint64(len(batch)))
}

// SinkStatus is one sink's state, for /debug/telemetryz.
type SinkStatus struct {
	Name      string `json:"name"`
	Queued    int    `json:"queuedBatches"`
	QueueCap  int    `json:"queueCapacity"`
	Exported  uint64 `json:"exportedRecords"`
	Dropped   uint64 `json:"droppedRecords"`
	Errors    uint64 `json:"errors"`
	LastError string `json:"lastError,omitempty"`
}

func (s *sinks) status() []SinkStatus {
	list := *s.list.Load()
	out := make([]SinkStatus, 0, len(list))
	for _, r := range list {
		st := SinkStatus{Name: r.name, Queued: len(r.q), QueueCap: cap(r.q),
			Exported: r.nExported.Load(), Dropped: r.nDropped.Load(), Errors: r.nErrors.Load()}
		if e := r.lastErr.Load(); e != nil {
			st.LastError = *e
		}
		out = append(out, st)
	}
	return out
}
