package server

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/xds/api"
)

// pushQueue merges push requests until the debounce window closes.
type pushQueue struct {
	mu          sync.Mutex
	pending     *api.PushRequest
	first, last time.Time
	sig         chan struct{} // 1-slot: "something is pending"
}

// Push implements api.Pusher. It never blocks.
func (s *Server) Push(req api.PushRequest) {
	now := time.Now()
	s.pq.mu.Lock()
	if s.pq.pending == nil {
		s.pq.pending, s.pq.first = &req, now
	} else {
		merged := s.pq.pending.Merge(req)
		s.pq.pending = &merged
	}
	s.pq.last = now
	s.pq.mu.Unlock()
	select {
	case s.pq.sig <- struct{}{}:
	default:
	}
}

// pushLoop debounces and runs pushes, one at a time, until ctx ends.
//
// A push waits until no request arrived for DebounceQuiet, but no longer
// than DebounceMax after the first: a burst of changes (a deployment
// rolling, a file saved twice) becomes one push, and a steady trickle cannot
// postpone pushes forever. Requests arriving during a push are merged and
// debounced for the next one.
//
// One exception: an incremental push (endpoints, say) that arrives after a
// quiet spell goes at once. Such pushes are cheap and their latency is what
// keeps traffic off dead endpoints; if more changes follow, they are merged
// and wait for the quiet window as usual, so a burst costs one extra small
// push, not one push per change.
func (s *Server) pushLoop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var lastPush time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.pq.sig:
		}
		for s.opts.DebounceQuiet > 0 {
			s.pq.mu.Lock()
			first, last := s.pq.first, s.pq.last
			leading := s.pq.pending != nil && !s.pq.pending.Full && first.Sub(lastPush) >= s.opts.DebounceQuiet && first == last
			s.pq.mu.Unlock()
			if leading {
				break
			}
			now := time.Now()
			wait := min(last.Add(s.opts.DebounceQuiet).Sub(now), first.Add(s.opts.DebounceMax).Sub(now))
			if wait <= 0 {
				break
			}
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			case <-s.pq.sig: // more came in; recompute the wait
				timer.Stop()
			}
		}
		s.pq.mu.Lock()
		req, first := s.pq.pending, s.pq.first
		s.pq.pending = nil
		s.pq.mu.Unlock()
		if req == nil {
			continue
		}
		s.m.debounce.Observe(time.Since(first).Seconds())
		s.cache.push(ctx, *req, first)
		lastPush = time.Now()
	}
}

// push runs one push: a full push re-keys every stream and regenerates
// every group; an incremental one regenerates only the named resources of
// the named types.
func (x *xdsCache) push(ctx context.Context, req api.PushRequest, trigger time.Time) {
	start := time.Now()
	x.genMu.Lock()
	defer x.genMu.Unlock()
	x.mu.Lock()
	x.rev = max(x.rev, req.Revision)
	rev := x.rev
	var groups []*group
	var names map[string][]string
	kind := "incremental"
	if req.Full {
		kind = "full"
		x.epoch++
		for _, c := range x.conns {
			for _, ct := range c.types {
				x.keyed(c, ct.ts)
			}
		}
		for _, ts := range x.types {
			for _, g := range ts.groups {
				groups = append(groups, g)
			}
		}
	} else {
		names = map[string][]string{}
		for url, ns := range req.Updates {
			ts := x.types[url]
			if ts == nil {
				continue
			}
			names[url] = ns
			for _, g := range ts.groups {
				if g.snap != nil {
					groups = append(groups, g)
				}
			}
		}
	}
	x.mu.Unlock()
	slices.SortFunc(groups, func(a, b *group) int {
		if a.ts.order != b.ts.order {
			return a.ts.order - b.ts.order
		}
		return strings.Compare(a.key, b.key)
	})
	x.s.m.triggers.WithLabelValues(kind).Inc()
	x.generate(ctx, groups, names, req.Reason, trigger, rev)
	x.confirm(rev)
	x.s.log.Debug("xds push done", "kind", kind, "reason", req.Reason, "groups", len(groups), "took", time.Since(start))
}

// confirm marks every group's snapshot as current for config revision rev,
// after a push built on rev: the groups it regenerated and those it had no
// need to (an endpoint push leaves clusters and routes as they are; the
// config they were built from still holds). Groups whose last generation
// failed or was withheld keep an older revision: their proxies run config
// the push could not replace. Caller holds genMu, not mu.
func (x *xdsCache) confirm(rev uint64) {
	if rev == 0 {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, ts := range x.types {
		for _, g := range ts.groups {
			if g.snap != nil && g.err == "" && g.snap.rev.Load() < rev {
				g.snap.rev.Store(rev)
			}
		}
	}
}
