package bus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type ev struct {
	topic Topic
	n     int
}

func (e ev) Topic() Topic { return e.topic }

func TestDeliveryInOrder(t *testing.T) {
	b := New(Options{BufferSize: 10})
	s := b.Subscribe("pilot", "galley.config.accepted")
	for i := range 3 {
		b.Publish(ev{"galley.config.accepted", i})
	}
	b.Publish(ev{"citadel.roots.rotated", 99})
	got := s.Drain()
	if len(got) != 3 {
		t.Fatalf("got %d events, want 3: %v", len(got), got)
	}
	for i, e := range got {
		if e.(ev).n != i {
			t.Fatalf("event %d = %v", i, e)
		}
	}
	if s.Drain() != nil {
		t.Fatal("second Drain not empty")
	}
}

func TestTopicMatching(t *testing.T) {
	tests := []struct {
		subscribed []Topic
		topic      Topic
		want       bool
	}{
		{nil, "anything.at.all", true},
		{[]Topic{"galley.config.accepted"}, "galley.config.accepted", true},
		{[]Topic{"galley.config.accepted"}, "galley.config.rejected", false},
		{[]Topic{"galley.*"}, "galley.config.rejected", true},
		{[]Topic{"galley.*"}, "galleys.config", false},
		{[]Topic{"xds.proxy.*", "citadel.*"}, "citadel.roots.rotated", true},
	}
	for _, tt := range tests {
		s := &Subscription{topics: tt.subscribed}
		if got := s.matches(tt.topic); got != tt.want {
			t.Errorf("%v matches %q = %t, want %t", tt.subscribed, tt.topic, got, tt.want)
		}
	}
}

func TestOverflowYieldsResyncAndCountsDrops(t *testing.T) {
	reg := prometheus.NewRegistry()
	b := New(Options{BufferSize: 4, Registerer: reg})
	slow := b.Subscribe("slow")
	fast := b.Subscribe("fast")

	// The publisher must never block, however far behind "slow" is.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 10 {
			b.Publish(ev{"t", i})
			if i%2 == 1 {
				fast.Drain() // fast keeps up
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Publish blocked")
	}

	got := slow.Drain()
	// 10 events into a queue of 4: the queue filled with 0..3, event 4
	// overflowed it (5 lost), then 5..8 filled it again and 9 overflowed
	// (another 5 lost). The subscriber sees only the Resync.
	if len(got) == 0 {
		t.Fatal("no events")
	}
	rs, ok := got[0].(Resync)
	if !ok {
		t.Fatalf("first event = %T, want Resync", got[0])
	}
	if rs.Dropped != 10 {
		t.Fatalf("Resync.Dropped = %d, want 10", rs.Dropped)
	}
	if len(got) != 1 {
		t.Fatalf("got %d events after overflow, want only the Resync: %v", len(got), got)
	}
	if n := testutil.ToFloat64(b.dropped.WithLabelValues("slow")); n != 10 {
		t.Fatalf("dropped{slow} = %v, want 10", n)
	}
	if n := testutil.ToFloat64(b.dropped.WithLabelValues("fast")); n != 0 {
		t.Fatalf("dropped{fast} = %v, want 0", n)
	}

	// After the resync the subscriber receives normally again.
	b.Publish(ev{"t", 100})
	got = slow.Drain()
	if len(got) != 1 || got[0].(ev).n != 100 {
		t.Fatalf("after resync got %v", got)
	}
	b.Close()
}

func TestEventsAfterOverflowFollowResync(t *testing.T) {
	b := New(Options{BufferSize: 2})
	s := b.Subscribe("s")
	for i := range 3 {
		b.Publish(ev{"t", i}) // third overflows
	}
	b.Publish(ev{"t", 7})
	got := s.Drain()
	if len(got) != 2 {
		t.Fatalf("got %v", got)
	}
	if _, ok := got[0].(Resync); !ok {
		t.Fatalf("first = %T, want Resync", got[0])
	}
	if got[1].(ev).n != 7 {
		t.Fatalf("second = %v, want event 7", got[1])
	}
}

func TestNextWaitsAndHonoursContext(t *testing.T) {
	b := New(Options{})
	s := b.Subscribe("s")
	go func() {
		time.Sleep(20 * time.Millisecond)
		b.Publish(ev{"t", 1})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := s.Next(ctx)
	if err != nil || len(got) != 1 {
		t.Fatalf("Next() = %v, %v", got, err)
	}

	short, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if _, err := s.Next(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next() on idle bus = %v, want deadline exceeded", err)
	}

	b.Publish(ev{"t", 2})
	s.Close()
	got, err = s.Next(ctx)
	if err != nil || len(got) != 1 {
		t.Fatalf("queued events must survive Close: %v, %v", got, err)
	}
	if _, err := s.Next(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next() after Close = %v, want ErrClosed", err)
	}
	b.Publish(ev{"t", 3}) // no panic publishing after a subscriber left
}

func TestBusCloseClosesSubscriptions(t *testing.T) {
	b := New(Options{})
	s := b.Subscribe("s")
	b.Close()
	select {
	case _, ok := <-s.Ready():
		if ok {
			t.Fatal("Ready delivered a value after Close")
		}
	case <-time.After(time.Second):
		t.Fatal("Ready not closed")
	}
	late := b.Subscribe("late")
	if _, err := late.Next(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("subscribe after Close: %v", err)
	}
}

func TestConcurrentPublishAndClose(t *testing.T) {
	b := New(Options{BufferSize: 8})
	subs := make([]*Subscription, 4)
	for i := range subs {
		subs[i] = b.Subscribe("s")
	}
	done := make(chan struct{})
	for range 4 {
		go func() {
			for i := range 2000 {
				b.Publish(ev{"t", i})
			}
			done <- struct{}{}
		}()
	}
	for _, s := range subs {
		go s.Close()
	}
	for range 4 {
		<-done
	}
	b.Close()
}

func BenchmarkPublish(b *testing.B) {
	bus := New(Options{BufferSize: 1024})
	subs := make([]*Subscription, 8)
	for i := range subs {
		subs[i] = bus.Subscribe("s", "t")
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		bus.Publish(ev{"t", i})
		if i%512 == 0 {
			for _, s := range subs {
				s.Drain()
			}
		}
	}
}
