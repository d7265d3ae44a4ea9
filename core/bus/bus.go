// Package bus is meshd's in-process event bus.
//
// Events are hints, not state: they carry keys and revisions, and the store
// and module state stay the truth. That is what lets the bus keep its one
// promise to publishers, that Publish never blocks. Each subscriber has its own
// bounded queue; when it overflows, the queued events are dropped and counted,
// and the subscriber's next delivery starts with a Resync marker telling it to
// re-read state, so a lost event can never leave it silently wrong.
//
// Subscribers receive in batches (Ready then Drain), which suits the
// coalescing consumers of a control plane: pilot merges a burst of config and
// endpoint events into one push.
package bus

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Topic names an event kind as <module>.<noun>.<verb>, for example
// galley.config.accepted.
type Topic string

// Event is anything published on the bus.
type Event interface {
	Topic() Topic
}

// TopicResync is the topic of the Resync marker.
const TopicResync Topic = "bus.resync"

// Resync tells a subscriber that it missed events because its queue
// overflowed. It must re-read whatever state it derives from the bus.
type Resync struct {
	// Dropped is how many events were lost since the last delivery.
	Dropped uint64
}

// Topic implements Event.
func (Resync) Topic() Topic { return TopicResync }

// ErrClosed is returned by Next after the subscription or bus was closed.
var ErrClosed = errors.New("bus: subscription closed")

// DefaultBufferSize is the per-subscriber queue length when Options leave it 0.
const DefaultBufferSize = 256

// Options configure a Bus.
type Options struct {
	// BufferSize bounds each subscriber's queue.
	BufferSize int
	// Registerer receives the bus metrics; nil means no metrics.
	Registerer prometheus.Registerer
}

// Bus fans events out to subscribers. The zero value is not usable; call New.
type Bus struct {
	bufSize   int
	published *prometheus.CounterVec
	dropped   *prometheus.CounterVec

	mu     sync.RWMutex
	subs   map[*Subscription]struct{}
	closed bool
}

// New returns a Bus. It registers meshd_bus_events_published_total and
// meshd_bus_events_dropped_total with opts.Registerer when one is given.
func New(opts Options) *Bus {
	if opts.BufferSize <= 0 {
		opts.BufferSize = DefaultBufferSize
	}
	b := &Bus{
		bufSize: opts.BufferSize,
		subs:    map[*Subscription]struct{}{},
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_bus_events_published_total",
			Help: "Events published on the internal bus, by topic.",
		}, []string{"topic"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_bus_events_dropped_total",
			Help: "Events dropped because a subscriber's queue overflowed; the subscriber then receives a resync marker.",
		}, []string{"subscriber"}),
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(b.published, b.dropped)
	}
	return b
}

// Publish delivers e to every matching subscriber. It never blocks: a
// subscriber whose queue is full loses its queued events and gets a Resync.
func (b *Bus) Publish(e Event) {
	topic := e.Topic()
	b.published.WithLabelValues(string(topic)).Inc()
	b.mu.RLock()
	defer b.mu.RUnlock()
	for s := range b.subs {
		if s.matches(topic) {
			s.push(e)
		}
	}
}

// Subscribe returns a subscription to the given topics. A topic ending in
// ".*" matches every topic under that prefix; no topics means all topics.
// The name labels the subscriber's drop metric and should be the module ID.
// Matching is by name only and does no I/O.
func (b *Bus) Subscribe(name string, topics ...Topic) *Subscription {
	s := &Subscription{
		name:   name,
		max:    b.bufSize,
		ready:  make(chan struct{}, 1),
		bus:    b,
		drops:  b.dropped.WithLabelValues(name),
		topics: topics,
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		s.closed = true
		close(s.ready)
		return s
	}
	b.subs[s] = struct{}{}
	return s
}

// Close ends every subscription; their Ready channels close once drained.
func (b *Bus) Close() {
	b.mu.Lock()
	subs := b.subs
	b.subs = map[*Subscription]struct{}{}
	b.closed = true
	b.mu.Unlock()
	for s := range subs {
		s.close()
	}
}

// Subscription is one subscriber's queue.
type Subscription struct {
	name   string
	max    int
	topics []Topic
	ready  chan struct{}
	bus    *Bus
	drops  prometheus.Counter

	mu      sync.Mutex
	queue   []Event
	dropped uint64 // events lost since the last Drain; >0 means a Resync is due
	closed  bool
}

func (s *Subscription) matches(t Topic) bool {
	if len(s.topics) == 0 {
		return true
	}
	for _, want := range s.topics {
		if want == t {
			return true
		}
		if p, ok := strings.CutSuffix(string(want), "*"); ok && strings.HasPrefix(string(t), p) {
			return true
		}
	}
	return false
}

func (s *Subscription) push(e Event) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	if len(s.queue) >= s.max {
		// Everything queued is now moot: the Resync that replaces it makes
		// the subscriber re-read state, which covers those events too.
		lost := uint64(len(s.queue)) + 1
		s.dropped += lost
		s.queue = s.queue[:0]
		s.drops.Add(float64(lost))
	} else {
		s.queue = append(s.queue, e)
	}
	// The wake-up is sent under the lock so that close cannot close the
	// channel between the closed check and the send.
	select {
	case s.ready <- struct{}{}:
	default: // a wake-up is already pending
	}
	s.mu.Unlock()
}

// Ready is signalled when events are waiting, and closed when the
// subscription or the bus is closed and the queue is empty.
func (s *Subscription) Ready() <-chan struct{} { return s.ready }

// Drain takes every waiting event, oldest first. If events were lost since
// the last Drain, the batch starts with a Resync.
func (s *Subscription) Drain() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 && s.dropped == 0 {
		return nil
	}
	out := make([]Event, 0, len(s.queue)+1)
	if s.dropped > 0 {
		out = append(out, Resync{Dropped: s.dropped})
		s.dropped = 0
	}
	out = append(out, s.queue...)
	clear(s.queue)
	s.queue = s.queue[:0]
	return out
}

// Next waits for events and returns the next batch. It returns ctx.Err()
// when ctx ends and ErrClosed when the subscription was closed.
func (s *Subscription) Next(ctx context.Context) ([]Event, error) {
	for {
		if evs := s.Drain(); len(evs) > 0 {
			return evs, nil
		}
		select {
		case _, ok := <-s.ready:
			if !ok {
				if evs := s.Drain(); len(evs) > 0 {
					return evs, nil
				}
				return nil, ErrClosed
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Close unsubscribes. Queued events can still be drained.
func (s *Subscription) Close() {
	s.bus.mu.Lock()
	delete(s.bus.subs, s)
	s.bus.mu.Unlock()
	s.close()
}

func (s *Subscription) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	close(s.ready)
}

// Name returns the subscriber name given to Subscribe.
func (s *Subscription) Name() string { return s.name }
