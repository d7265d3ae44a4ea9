package citadel

import (
	"sync"
	"time"
)

// limiter is a token bucket per caller. Buckets that have refilled
// completely carry no information and are dropped when the map grows, so
// its size follows the number of recently active callers.
type limiter struct {
	rate  float64 // tokens per second
	burst float64

	mu      sync.Mutex
	buckets map[string]*bucket
	sweepAt int // sweep when len(buckets) reaches this
}

type bucket struct {
	tokens float64
	last   time.Time
}

// newLimiter returns nil (no limit) when qps is 0.
func newLimiter(qps float64, burst int) *limiter {
	if qps <= 0 {
		return nil
	}
	return &limiter{rate: qps, burst: float64(burst), buckets: map[string]*bucket{}, sweepAt: 1024}
}

// allow takes a token from key's bucket if it has one.
func (l *limiter) allow(key string, now time.Time) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= l.sweepAt {
			l.sweep(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (l *limiter) sweep(now time.Time) {
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for k, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, k)
		}
	}
	l.sweepAt = max(1024, 2*len(l.buckets))
}
