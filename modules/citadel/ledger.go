package citadel

import (
	"sync"

	"github.com/meshd/meshd/core/store"
	bolt "go.etcd.io/bbolt"
)

// ledger records issued certificates in the store before they are handed
// out, so every certificate a caller holds is on record even across a
// SIGKILL. Each commit is fsynced; to keep that off the per-request cost,
// concurrent records are group-committed: whoever finds no commit running
// writes everything queued so far in one transaction, and hands the next
// batch to one of its waiters. No goroutine runs in the background and
// nobody waits for a timer, so a lone request pays one commit and a burst
// pays one commit per batch.
type ledger struct {
	ns *store.Namespace

	mu      sync.Mutex
	queue   []*ledgerEntry
	running bool
}

type ledgerEntry struct {
	spend func(*bolt.Bucket) error
	rec   certRecord
	err   error // the entry's own failure (its spend)
	done  chan ledgerResult
}

// spendError is a refused credential (Caller.Spend), as opposed to a store
// failure.
type spendError struct{ err error }

func (e *spendError) Error() string { return e.err.Error() }
func (e *spendError) Unwrap() error { return e.err }

type ledgerResult struct {
	err  error
	lead bool // the receiver must commit the queue now
}

func newLedger(ns *store.Namespace) *ledger { return &ledger{ns: ns} }

// record runs spend (when not nil) and stores rec in one transaction, and
// returns once it is durable. A failed spend is returned as *spendError and
// stores nothing.
func (l *ledger) record(spend func(*bolt.Bucket) error, rec certRecord) error {
	e := &ledgerEntry{spend: spend, rec: rec, done: make(chan ledgerResult, 1)}
	l.mu.Lock()
	l.queue = append(l.queue, e)
	lead := !l.running
	l.running = true
	l.mu.Unlock()
	if lead {
		l.commit()
	}
	for {
		r := <-e.done
		if !r.lead {
			return r.err
		}
		l.commit()
	}
}

// commit writes the whole queue in one transaction, answers every entry of
// it, and passes the lead to the first entry queued meanwhile.
func (l *ledger) commit() {
	l.mu.Lock()
	batch := l.queue
	l.queue = nil
	l.mu.Unlock()

	err := l.ns.Update(func(b *bolt.Bucket) error {
		certs, err := sub(b, bucketCerts)
		if err != nil {
			return err
		}
		for _, e := range batch {
			if e.spend != nil {
				// A spend checks before it writes, so a refusal leaves
				// nothing behind and the batch goes on.
				if err := e.spend(b); err != nil {
					e.err = &spendError{err}
					continue
				}
			}
			// Sequential keys append at the right edge of the B+tree, so a
			// commit rewrites a page or two instead of one page per record.
			seq, err := certs.NextSequence()
			if err != nil {
				return err
			}
			if err := putJSON(certs, store.EncodeUint64(seq), &e.rec); err != nil {
				return err
			}
		}
		return nil
	})
	for _, e := range batch {
		r := ledgerResult{err: err}
		if err == nil {
			r.err = e.err
		}
		e.done <- r
	}

	l.mu.Lock()
	if len(l.queue) == 0 {
		l.running = false
		l.mu.Unlock()
		return
	}
	next := l.queue[0]
	l.mu.Unlock()
	next.done <- ledgerResult{lead: true}
}
