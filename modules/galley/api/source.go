package api

import "context"

// ConfigSource feeds config into galley. The file source (modules/galley/source)
// is one; the Kubernetes CRD source and plugins are others. A source reports
// config per origin: a file, a Kubernetes object, whatever unit it reads as
// a whole. Galley validates each origin's new content against everything
// else it has accepted and accepts or rejects the origin as a whole, so the
// origin is also the unit of rejection: a bad origin keeps serving its last
// good content while other origins' changes go through.
//
// The contract, after Prometheus' discovery sources:
//   - Run reports every origin the source has (Sink.Update), then calls
//     Sink.Synced once, then reports changes as they happen;
//   - each Update carries an origin's whole current content, never a delta;
//     an origin that disappeared is reported with Removed set;
//   - Run returns when ctx is cancelled, with nil; any other return is a
//     failure, and galley restarts the source with backoff. A restarted
//     source starts over with its full state and a new Synced.
//
// Sink methods never block for long and may be called from any goroutine.
type ConfigSource interface {
	Run(ctx context.Context, sink Sink) error
}

// Sink receives a source's reports.
type Sink interface {
	// Update reports the current content of some origins. Later reports of
	// an origin replace earlier ones that galley has not processed yet.
	Update(updates ...Update)
	// Synced says every origin the source has was reported since Run
	// started. Origins galley accepted from this source before (in an
	// earlier run of meshd, say) that were not reported are then removed.
	Synced()
}

// Update is one origin's whole content as a source read it.
type Update struct {
	// Origin names the unit of config, unique among all sources: a file
	// path for the file source; other sources prefix theirs with a scheme,
	// such as "kubernetes://VirtualService/shop/reviews". Findings and
	// /debug/configz use it.
	Origin string
	// Removed says the origin is gone: its objects are to be removed.
	// Removal is a change like any other and is validated first (a
	// removal can leave other origins' objects dangling).
	Removed bool
	// Objects decoded cleanly.
	Objects []*Object
	// Rejected objects failed to decode. Their presence makes the update
	// unacceptable; they take part in analysis only so that references to
	// them do not produce misleading findings.
	Rejected []*Object
	// Findings are the decode findings of the origin (syntax, unknown
	// fields, unreadable file).
	Findings []Finding
}
