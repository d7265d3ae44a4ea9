package galley

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshd/meshd/modules/galley/api"
)

// The engine decides, origin by origin, what is accepted.
//
// A change (one or more origins with new content) is checked as a candidate
// set: the accepted objects of every other origin plus the new objects of the
// changing ones. Each finding is attributed to an origin, by its file and
// else by its object. A changing origin with an error of its own (decoding,
// per-object validation, analysis of its objects, an external validator) is
// rejected and keeps serving its last accepted content; the rest are checked
// again without it. A change that introduces an error in an unchanged
// origin's objects (deleting a ServiceEntry that another file routes to) is
// rejected too: errors are new when the accepted set did not already have
// them (the baseline), so errors that exist already, because the registry
// or the rules changed under accepted config, never block unrelated changes.
// When several origins changed together and together they break an
// unchanged one, they are tried one at a time.
//
// Rejected content stays pending. When it failed for reasons outside the
// origin (analysis, external validators), it is tried again after every
// accepted change, registry update and validator retry, so that files
// edited in the "wrong" order still converge on what is on disk.

// entry is one accepted object.
type entry struct {
	obj    *api.Object
	origin string
	blob   blobHash
}

func (e *entry) stored() *Entry {
	return &Entry{Origin: e.origin, Blob: e.blob, File: e.obj.Source.File, Line: e.obj.Source.Line}
}

// originState is what the engine knows about one origin.
type originState struct {
	name   string
	source string
	// digest is the content settled on: accepted, or superseded by a
	// rollback (held).
	digest   digest
	held     bool
	revision uint64
	at       time.Time
	keys     []api.Key
	warnings []api.Finding
	// pending is the latest content when it was rejected.
	pending *attempt
	// lastRejected is the most recent rejection, kept for /debug/configz
	// after the origin is accepted again.
	lastRejected *attempt
}

// attempt is a rejected update.
type attempt struct {
	update   *prepared
	at       time.Time
	findings []api.Finding
	// retry says the rejection may go away without the origin changing:
	// it involved other origins, the registry or a validator.
	retry bool
	// validatorFailed says a validator could not judge the change.
	validatorFailed bool
}

// findingID identifies an error across checks, for the baseline: lines
// move when files are edited, so they are left out.
type findingID struct {
	code   api.Code
	object api.Key
	file   string
	field  string
}

func idOf(f api.Finding) findingID {
	return findingID{f.Code, f.Object, f.File, f.Field}
}

// acceptance describes an accepted change or a rollback.
type acceptance struct {
	// revision is the new revision; 0 when no object changed (a comment
	// edit) and no revision was made.
	revision   uint64
	rollbackTo uint64
	// accepted is how many origins' changes passed (0 for a rollback).
	accepted int
	// origins lists the origins whose objects changed.
	origins  []string
	changes  []change
	kinds    map[string]int
	objects  int
	warnings []api.Finding
}

// engineHooks are told about outcomes; both are optional. They run with the
// engine locked and must not call back into it.
type engineHooks struct {
	accepted func(acceptance)
	rejected func(origin string, a *attempt, repeat bool)
}

type engine struct {
	store   *revStore
	checker func() *Checker
	log     *slog.Logger
	now     func() time.Time
	hooks   engineHooks

	mu       sync.Mutex
	rev      uint64
	restored uint64
	entries  map[api.Key]*entry
	origins  map[string]*originState
	baseline map[findingID]bool // nil: to be computed
	// stale says the baseline must be computed again: the registry or the
	// validators changed. Set without the lock, so callers never wait for
	// a check in progress.
	stale atomic.Bool

	snap   atomic.Pointer[api.Snapshot]
	status atomic.Pointer[engineStatus]
}

// engineStatus is the engine's part of /debug/configz, rebuilt after
// every change so readers never wait for a check in progress.
type engineStatus struct {
	revision uint64
	restored uint64
	kinds    map[string]int
	origins  []OriginStatus
}

func newEngine(st *revStore, checker func() *Checker, log *slog.Logger, now func() time.Time, hooks engineHooks) *engine {
	e := &engine{
		store: st, checker: checker, log: log, now: now, hooks: hooks,
		entries: map[api.Key]*entry{},
		origins: map[string]*originState{},
	}
	e.snap.Store(api.NewSnapshot(0, nil))
	e.refreshStatus()
	return e
}

// restore loads the latest stored revision, so that galley serves it before
// any source has reported.
func (e *engine) restore() error {
	l, err := e.store.load()
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, se := range l.entries {
		o, err := fromCanonical(l.blobs[se.Blob], se)
		if err != nil {
			return fmt.Errorf("galley store: %s: %w", k, err)
		}
		if o.Key() != k {
			return fmt.Errorf("galley store: current/%s holds %s", k, o.Key())
		}
		e.entries[k] = &entry{obj: o, origin: se.Origin, blob: se.Blob}
		st := e.origin(se.Origin)
		st.keys = append(st.keys, k)
	}
	for name, r := range l.origins {
		st := e.origin(name)
		st.source, st.digest, st.held, st.revision, st.at = r.Source, r.Digest, r.Held, r.Revision, r.Time
	}
	for _, st := range e.origins {
		slices.Sort(st.keys)
	}
	e.rev, e.restored = l.revision, l.revision
	e.publishSnapshot()
	e.refreshStatus()
	return nil
}

// origin returns the state of name, creating it.
func (e *engine) origin(name string) *originState {
	st := e.origins[name]
	if st == nil {
		st = &originState{name: name}
		e.origins[name] = st
	}
	return st
}

// Accepted returns the current accepted snapshot.
func (e *engine) Accepted() *api.Snapshot { return e.snap.Load() }

// originsOf returns the origins galley holds from source.
func (e *engine) originsOf(source string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for name, st := range e.origins {
		if st.source == source {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// invalidateBaseline forgets the errors of the accepted set; the next
// check computes them again (after a registry or validator change).
func (e *engine) invalidateBaseline() { e.stale.Store(true) }

// apply processes updates: sources maps each update's origin to the source
// that reported it.
func (e *engine) apply(ctx context.Context, updates []api.Update, sources map[string]string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	changed := map[string]*prepared{}
	for _, u := range updates {
		p := prepare(u, sources[u.Origin])
		st := e.origins[u.Origin]
		if st == nil {
			if u.Removed {
				continue
			}
		} else {
			if p.source != "" {
				st.source = p.source
			}
			if u.Removed && !st.held && len(st.keys) == 0 && st.digest == (digest{}) {
				delete(e.origins, u.Origin) // gone before anything was accepted
				continue
			}
			if st.pending != nil && st.pending.update.digest == p.digest {
				continue // the same rejected content again
			}
			if st.digest == p.digest && (st.digest != digest{} || u.Removed) {
				// Back to what is settled (an edit undone, or unchanged
				// content read again after a restart).
				st.pending = nil
				if !st.held {
					e.adopt(p)
				}
				continue
			}
		}
		changed[u.Origin] = p
	}
	e.process(ctx, changed, false)
	e.refreshStatus()
}

// retry checks pending rejections that may pass now.
func (e *engine) retry(ctx context.Context) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.process(ctx, e.retryable(), true)
	e.refreshStatus()
}

// pendingValidatorFailures reports whether a rejection waits for a
// validator.
func (e *engine) pendingValidatorFailures() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, st := range e.origins {
		if st.pending != nil && st.pending.validatorFailed {
			return true
		}
	}
	return false
}

func (e *engine) retryable() map[string]*prepared {
	out := map[string]*prepared{}
	for name, st := range e.origins {
		if st.pending != nil && st.pending.retry {
			out[name] = st.pending.update
		}
	}
	return out
}

// adopt replaces accepted objects with freshly decoded ones of identical
// content, so findings about them get exact lines again. No revision.
func (e *engine) adopt(p *prepared) {
	for _, po := range p.objects {
		if en := e.entries[po.obj.Key()]; en != nil && en.origin == p.Origin && en.blob == po.blob {
			en.obj = po.obj
		}
	}
}

// process accepts what it can of changed, then retries pending rejections
// for as long as accepting something lets more through.
func (e *engine) process(ctx context.Context, changed map[string]*prepared, retrying bool) {
	for len(changed) > 0 {
		if !e.round(ctx, changed, retrying) {
			return
		}
		changed, retrying = e.retryable(), true
	}
}

// round tries to accept changed and reports whether anything was accepted.
func (e *engine) round(ctx context.Context, changed map[string]*prepared, retrying bool) bool {
	changed = maps.Clone(changed)
	joined := map[string]bool{}
	for len(changed) > 0 {
		res := e.check(ctx, changed)
		if len(res.bad) > 0 {
			for _, name := range res.bad {
				e.reject(changed[name], res.own[name], res, retrying || joined[name])
				delete(changed, name)
			}
			continue
		}
		if len(res.breaks) > 0 {
			// The change breaks what an unchanged origin has accepted; if
			// that origin has newer content waiting, the two may only work
			// together (a subset renamed in one file and the route to it
			// in another): try them as one change.
			more := false
			for _, name := range slices.Sorted(maps.Keys(res.breakOrigins)) {
				if st := e.origins[name]; st != nil && st.pending != nil && !joined[name] {
					changed[name], joined[name], more = st.pending.update, true, true
				}
			}
			if more {
				continue
			}
			names := slices.Sorted(maps.Keys(changed))
			if len(names) == 1 {
				e.reject(changed[names[0]], append(res.own[names[0]], res.breaks...), res, retrying)
				return false
			}
			// Together they break an unchanged origin; find out which.
			any := false
			for _, name := range names {
				any = e.round(ctx, map[string]*prepared{name: changed[name]}, retrying) || any
			}
			return any
		}
		return e.accept(changed, res)
	}
	return false
}

// checkResult is a candidate set's findings, attributed.
type checkResult struct {
	// own holds the findings of each changing origin.
	own map[string][]api.Finding
	// bad lists changing origins with errors of their own, sorted.
	bad []string
	// breaks are new errors in unchanged origins, breakOrigins those
	// origins.
	breaks       []api.Finding
	breakOrigins map[string]bool
	// errors identifies every error in the candidate set.
	errors map[findingID]bool
	// validatorFailed: an external validator could not judge the set.
	validatorFailed bool
	// contextual marks origins whose errors involve other origins, the
	// registry or a validator.
	contextual map[string]bool
}

func (e *engine) check(ctx context.Context, changed map[string]*prepared) *checkResult {
	c := e.checker()
	baseline := e.baselineErrors(ctx, c)

	fileOrigin := map[string]string{}
	keyOrigin := map[api.Key]string{}
	var unchanged []*api.Object
	for _, k := range keysOf(e.entries) {
		en := e.entries[k]
		if _, ok := changed[en.origin]; ok {
			continue
		}
		unchanged = append(unchanged, en.obj)
		keyOrigin[k] = en.origin
		if f := en.obj.Source.File; f != "" {
			fileOrigin[f] = en.origin
		}
	}
	var objs, rejected []*api.Object
	var findings []api.Finding
	for _, name := range slices.Sorted(maps.Keys(changed)) {
		p := changed[name]
		fileOrigin[name] = name
		for _, po := range p.objects {
			objs = append(objs, po.obj)
			keyOrigin[po.obj.Key()] = name
			if f := po.obj.Source.File; f != "" {
				fileOrigin[f] = name
			}
		}
		for _, o := range p.Rejected {
			rejected = append(rejected, o)
			if f := o.Source.File; f != "" {
				fileOrigin[f] = name
			}
		}
		for _, f := range p.Findings {
			if f.File == "" {
				f.File = name
			}
			findings = append(findings, f)
		}
	}
	findings = append(findings, c.CheckChange(ctx, objs, rejected, unchanged)...)
	findings = api.SortFindings(findings)

	res := &checkResult{own: map[string][]api.Finding{}, errors: map[findingID]bool{}, contextual: map[string]bool{}, breakOrigins: map[string]bool{}}
	badSet := map[string]bool{}
	for _, f := range findings {
		isErr := f.Severity == api.SeverityError
		if isErr {
			res.errors[idOf(f)] = true
		}
		if f.Code == api.CodeValidatorFailed && isErr {
			res.validatorFailed = true
		}
		origin, ok := fileOrigin[f.File]
		if !ok || f.File == "" {
			origin, ok = keyOrigin[f.Object]
		}
		switch {
		case !ok:
			// Not about any object (a validator failure): it concerns
			// every changing origin.
			for name := range changed {
				res.own[name] = append(res.own[name], f)
				if isErr {
					badSet[name], res.contextual[name] = true, true
				}
			}
		case changed[origin] != nil:
			res.own[origin] = append(res.own[origin], f)
			if isErr {
				badSet[origin] = true
				if f.Code >= "GAL3" || !strings.HasPrefix(string(f.Code), "GAL") {
					res.contextual[origin] = true
				}
			}
		case isErr && !baseline[idOf(f)]:
			res.breaks = append(res.breaks, f)
			res.breakOrigins[origin] = true
		}
	}
	res.bad = slices.Sorted(maps.Keys(badSet))
	return res
}

// baselineErrors returns the errors of the accepted set, computing them if
// needed.
func (e *engine) baselineErrors(ctx context.Context, c *Checker) map[findingID]bool {
	if e.stale.Swap(false) {
		e.baseline = nil
	}
	if e.baseline != nil {
		return e.baseline
	}
	objs := make([]*api.Object, 0, len(e.entries))
	for _, k := range keysOf(e.entries) {
		objs = append(objs, e.entries[k].obj)
	}
	e.baseline = map[findingID]bool{}
	for _, f := range c.CheckContext(ctx, objs) {
		if f.Severity == api.SeverityError {
			e.baseline[idOf(f)] = true
		}
	}
	return e.baseline
}

// reject records a rejected update. The origin keeps its accepted objects.
func (e *engine) reject(p *prepared, findings []api.Finding, res *checkResult, retrying bool) {
	st := e.origin(p.Origin)
	if p.source != "" && st.source == "" {
		st.source = p.source
	}
	repeat := retrying && st.pending != nil && st.pending.update.digest == p.digest
	a := &attempt{
		update:          p,
		at:              e.now(),
		findings:        api.SortFindings(slices.Clone(findings)),
		retry:           res.contextual[p.Origin] || !api.HasErrors(res.own[p.Origin]),
		validatorFailed: res.validatorFailed,
	}
	if repeat {
		a.at = st.pending.at
	}
	st.pending, st.lastRejected = a, a
	if e.hooks.rejected != nil {
		e.hooks.rejected(p.Origin, a, repeat)
	}
}

// accept makes changed the accepted content of their origins, storing a
// new revision when any object changed. It reports success.
func (e *engine) accept(changed map[string]*prepared, res *checkResult) bool {
	final := map[api.Key]*entry{}
	for name := range changed {
		if st := e.origins[name]; st != nil {
			for _, k := range st.keys {
				final[k] = nil
			}
		}
	}
	newKeys := map[string][]api.Key{}
	for _, name := range slices.Sorted(maps.Keys(changed)) {
		for _, po := range changed[name].objects {
			k := po.obj.Key()
			final[k] = &entry{obj: po.obj, origin: name, blob: po.blob}
			newKeys[name] = append(newKeys[name], k)
		}
	}
	blobs := map[blobHash][]byte{}
	for _, p := range changed {
		for _, po := range p.objects {
			blobs[po.blob] = po.data
		}
	}
	var changes []change
	changedOrigins := map[string]bool{}
	for _, k := range keysOf(final) {
		cur, next := e.entries[k], final[k]
		switch {
		case cur == nil && next == nil:
		case cur == nil:
			changes = append(changes, change{Key: k, Op: OpAdd, After: next.stored()})
			changedOrigins[next.origin] = true
		case next == nil:
			changes = append(changes, change{Key: k, Op: OpRemove, Before: cur.stored()})
			changedOrigins[cur.origin] = true
		case cur.blob == next.blob && cur.origin == next.origin:
			cur.obj = next.obj // same content; fresher source lines
		default:
			changes = append(changes, change{Key: k, Op: OpUpdate, Before: cur.stored(), After: next.stored()})
			changedOrigins[cur.origin], changedOrigins[next.origin] = true, true
		}
	}
	now := e.now()
	rev := e.rev
	if len(changes) > 0 {
		rev++
		after := make(map[api.Key]Entry, len(e.entries))
		for k, en := range e.entries {
			after[k] = *en.stored()
		}
		for _, c := range changes {
			if c.After == nil {
				delete(after, c.Key)
			} else {
				after[c.Key] = *c.After
			}
		}
		op := commitOp{
			record: &revisionRecord{
				Revision: rev, Time: now, Reason: ReasonChange,
				Origins: slices.Sorted(maps.Keys(changedOrigins)),
				Objects: len(after), Digest: setDigest(after), Changes: changes,
			},
			blobs:   blobs,
			origins: map[string]originRecord{},
		}
		for name, p := range changed {
			if p.Removed {
				op.deleteOrigins = append(op.deleteOrigins, name)
				continue
			}
			r := originRecord{Source: p.source, Digest: p.digest}
			if st := e.origins[name]; st != nil {
				r.Revision, r.Time = st.revision, st.at
				if r.Source == "" {
					r.Source = st.source
				}
			}
			if changedOrigins[name] {
				r.Revision, r.Time = rev, now
			}
			op.origins[name] = r
		}
		if err := e.store.commit(op); err != nil {
			e.log.Error("storing accepted config failed; the change is retried with the next one", "revision", rev, "err", err)
			for name, p := range changed {
				st := e.origin(name)
				st.pending = &attempt{update: p, at: now, retry: true, findings: []api.Finding{{
					Code: api.CodeUnreadable, Severity: api.SeverityError, File: name,
					Message: "accepted, but the revision could not be stored: " + err.Error(),
				}}}
			}
			return false
		}
		for _, c := range changes {
			if c.After == nil {
				delete(e.entries, c.Key)
			} else {
				e.entries[c.Key] = final[c.Key]
			}
		}
		e.rev = rev
	}
	for name, p := range changed {
		if p.Removed {
			delete(e.origins, name)
			continue
		}
		st := e.origin(name)
		if p.source != "" {
			st.source = p.source
		}
		st.digest, st.held, st.pending = p.digest, false, nil
		keys := newKeys[name]
		slices.Sort(keys)
		st.keys = keys
		var warnings []api.Finding
		for _, f := range res.own[name] {
			if f.Severity != api.SeverityError {
				warnings = append(warnings, f)
			}
		}
		st.warnings = warnings
		if changedOrigins[name] {
			st.revision, st.at = rev, now
		}
	}
	// Keys may have moved between origins; rebuild the key lists of
	// unchanged origins that lost one.
	for name := range changedOrigins {
		if _, ok := changed[name]; ok {
			continue
		}
		if st := e.origins[name]; st != nil {
			st.keys = slices.DeleteFunc(st.keys, func(k api.Key) bool {
				en := e.entries[k]
				return en == nil || en.origin != name
			})
		}
	}
	e.baseline = res.errors
	info := acceptance{accepted: len(changed), objects: len(e.entries)}
	for _, name := range slices.Sorted(maps.Keys(changed)) {
		for _, f := range res.own[name] {
			if f.Severity != api.SeverityError {
				info.warnings = append(info.warnings, f)
			}
		}
	}
	if len(changes) > 0 {
		e.publishSnapshot()
		info.revision, info.changes, info.kinds = rev, changes, e.kindCounts()
		info.origins = slices.Sorted(maps.Keys(changedOrigins))
	}
	if e.hooks.accepted != nil {
		e.hooks.accepted(info)
	}
	return true
}

// RollbackResult is the outcome of a rollback.
type RollbackResult struct {
	// Revision is the new revision, or the current one when the config
	// already equalled the target.
	Revision uint64 `json:"revision"`
	// To is the revision rolled back to.
	To      uint64 `json:"to"`
	Added   int    `json:"added"`
	Updated int    `json:"updated"`
	Removed int    `json:"removed"`
	// Findings are what checking the restored set found now. They do not
	// block a rollback.
	Findings []api.Finding `json:"findings,omitempty"`
}

// rollback makes a new revision with the objects of revision to. Every
// origin's current content is held: it is not applied again until the
// origin changes.
func (e *engine) rollback(ctx context.Context, to uint64) (*RollbackResult, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	defer e.refreshStatus()
	m, err := e.store.materialize(to)
	if err != nil {
		return nil, err
	}
	to = m.record.Revision
	final := map[api.Key]*entry{}
	for k, se := range m.entries {
		if cur := e.entries[k]; cur != nil && cur.blob == se.Blob && cur.origin == se.Origin {
			final[k] = cur
			continue
		}
		o, err := fromCanonical(m.blobs[se.Blob], se)
		if err != nil {
			return nil, err
		}
		final[k] = &entry{obj: o, origin: se.Origin, blob: se.Blob}
	}
	res := &RollbackResult{Revision: e.rev, To: to}
	var changes []change
	changedOrigins := map[string]bool{}
	keys := map[api.Key]bool{}
	for k := range final {
		keys[k] = true
	}
	for k := range e.entries {
		keys[k] = true
	}
	for _, k := range keysOf(keys) {
		cur, next := e.entries[k], final[k]
		switch {
		case cur == nil:
			changes = append(changes, change{Key: k, Op: OpAdd, After: next.stored()})
			changedOrigins[next.origin] = true
			res.Added++
		case next == nil:
			changes = append(changes, change{Key: k, Op: OpRemove, Before: cur.stored()})
			changedOrigins[cur.origin] = true
			res.Removed++
		case cur == next:
		default:
			changes = append(changes, change{Key: k, Op: OpUpdate, Before: cur.stored(), After: next.stored()})
			changedOrigins[cur.origin], changedOrigins[next.origin] = true, true
			res.Updated++
		}
	}
	objs := make([]*api.Object, 0, len(final))
	for _, k := range keysOf(final) {
		objs = append(objs, final[k].obj)
	}
	errs := map[findingID]bool{}
	for _, f := range e.checker().CheckContext(ctx, objs) {
		res.Findings = append(res.Findings, f)
		if f.Severity == api.SeverityError {
			errs[idOf(f)] = true
		}
	}
	if len(changes) == 0 {
		return res, nil
	}
	now := e.now()
	rev := e.rev + 1
	after := make(map[api.Key]Entry, len(final))
	for k, en := range final {
		after[k] = *en.stored()
	}
	// Every origin is held at the content last seen from it: the rejected
	// content if any (it is on disk), else the accepted one.
	origins := map[string]*originState{}
	for name, st := range e.origins {
		origins[name] = st
	}
	for _, en := range final {
		if origins[en.origin] == nil {
			origins[en.origin] = &originState{name: en.origin}
		}
	}
	op := commitOp{
		record: &revisionRecord{
			Revision: rev, Time: now, Reason: ReasonRollback, RollbackTo: to,
			Origins: slices.Sorted(maps.Keys(changedOrigins)),
			Objects: len(after), Digest: setDigest(after), Changes: changes,
		},
		blobs:   map[blobHash][]byte{},
		origins: map[string]originRecord{},
	}
	for _, c := range changes {
		if c.After != nil {
			op.blobs[c.After.Blob] = m.blobs[c.After.Blob]
		}
	}
	held := map[string]digest{}
	for name, st := range origins {
		d := st.digest
		if st.pending != nil {
			d = st.pending.update.digest
		}
		held[name] = d
		r := originRecord{Source: st.source, Digest: d, Held: true, Revision: st.revision, Time: st.at}
		if changedOrigins[name] {
			r.Revision, r.Time = rev, now
		}
		op.origins[name] = r
	}
	if err := e.store.commit(op); err != nil {
		return nil, fmt.Errorf("store rollback: %w", err)
	}
	e.entries = final
	e.rev = rev
	res.Revision = rev
	for name, st := range origins {
		st.digest, st.held, st.pending, st.warnings = held[name], true, nil, nil
		st.keys = st.keys[:0]
		if changedOrigins[name] {
			st.revision, st.at = rev, now
		}
		e.origins[name] = st
	}
	for k, en := range final {
		st := e.origins[en.origin]
		st.keys = append(st.keys, k)
	}
	for _, st := range e.origins {
		slices.Sort(st.keys)
	}
	e.baseline = errs
	e.publishSnapshot()
	if e.hooks.accepted != nil {
		e.hooks.accepted(acceptance{
			revision: rev, rollbackTo: to, origins: slices.Sorted(maps.Keys(changedOrigins)),
			changes: changes, kinds: e.kindCounts(), objects: len(e.entries),
		})
	}
	return res, nil
}

func (e *engine) publishSnapshot() {
	objs := make([]*api.Object, 0, len(e.entries))
	for _, en := range e.entries {
		objs = append(objs, en.obj)
	}
	e.snap.Store(api.NewSnapshot(e.rev, objs))
}

func (e *engine) kindCounts() map[string]int {
	out := map[string]int{}
	for _, k := range api.Kinds() {
		out[k.Kind] = 0
	}
	for _, en := range e.entries {
		out[en.obj.Kind.Kind]++
	}
	return out
}

// Origin states in /debug/configz.
const (
	StateAccepted = "accepted" // the latest content is accepted
	StateRejected = "rejected" // the latest content was rejected; older content serves
	StateHeld     = "held"     // a rollback replaced the content; it is applied again when it changes
)

// OriginStatus is one origin in /debug/configz.
type OriginStatus struct {
	Origin string `json:"origin"`
	Source string `json:"source,omitempty"`
	State  string `json:"state"`
	// Objects is how many accepted objects come from the origin.
	Objects int `json:"objects"`
	// Revision is the revision of the origin's last accepted change, and
	// AcceptedAt its time.
	Revision   uint64    `json:"revision,omitempty"`
	AcceptedAt time.Time `json:"acceptedAt,omitzero"`
	// Digest identifies the content settled on.
	Digest string `json:"digest,omitempty"`
	// Warnings are the non-error findings of the accepted content.
	Warnings []api.Finding `json:"warnings,omitempty"`
	// LastRejected is the latest rejected attempt, also after the origin
	// was accepted again.
	LastRejected *Rejection `json:"lastRejected,omitempty"`
}

// Rejection is a rejected attempt.
type Rejection struct {
	Time   time.Time `json:"time"`
	Digest string    `json:"digest,omitempty"`
	Errors int       `json:"errors"`
	// Pending says this is the origin's latest content, waiting; Retrying
	// that galley tries it again by itself (it failed on other origins,
	// the registry or a validator).
	Pending  bool          `json:"pending"`
	Retrying bool          `json:"retrying"`
	Findings []api.Finding `json:"findings"`
}

func (e *engine) refreshStatus() {
	s := &engineStatus{revision: e.rev, restored: e.restored, kinds: e.kindCounts()}
	for _, name := range slices.Sorted(maps.Keys(e.origins)) {
		st := e.origins[name]
		os := OriginStatus{
			Origin: name, Source: st.source, State: StateAccepted, Objects: len(st.keys),
			Revision: st.revision, AcceptedAt: st.at, Digest: st.digest.String(), Warnings: st.warnings,
		}
		switch {
		case st.pending != nil:
			os.State = StateRejected
		case st.held:
			os.State = StateHeld
		}
		if a := st.lastRejected; a != nil {
			os.LastRejected = &Rejection{
				Time: a.at, Digest: a.update.digest.String(), Errors: api.CountFindings(a.findings).Errors,
				Pending: a == st.pending, Retrying: a == st.pending && a.retry, Findings: a.findings,
			}
		}
		s.origins = append(s.origins, os)
	}
	slices.SortFunc(s.origins, func(a, b OriginStatus) int { return cmp.Compare(a.Origin, b.Origin) })
	e.status.Store(s)
}
