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
	serial string
	rec    certRecord
	done   chan ledgerResult
}

type ledgerResult struct {
	err  error
	lead bool // the receiver must commit the queue now
}

func newLedger(ns *store.Namespace) *ledger { return &ledger{ns: ns} }

// record stores rec under serial and returns once it is durable.
func (l *ledger) record(serial string, rec certRecord) error {
	e := &ledgerEntry{serial: serial, rec: rec, done: make(chan ledgerResult, 1)}
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
			if err := putJSON(certs, []byte(e.serial), &e.rec); err != nil {
				return err
			}
		}
		return nil
	})
	for _, e := range batch {
		e.done <- ledgerResult{err: err}
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
