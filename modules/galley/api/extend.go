package api

import (
	"context"
	"errors"
)

// Galley is what the galley module offers modules that extend it, besides
// Accepted. A module gets it with core.Dep[api.Galley](ctx, "galley")
// (galley in its Requires) and calls it from Provision.
type Galley interface {
	Accepted
	// AddSource adds a config source. Sources must be added before galley
	// runs (from Provision); later calls return ErrStarted. name labels the
	// source in logs and /debug/configz.
	AddSource(name string, src ConfigSource) error
	// AddValidator adds a validator that checks every candidate config set
	// besides galley's own rules. It may be called at any time; the next
	// change is checked with it. name labels its findings and failures.
	AddValidator(name string, v Validator) error
	// SetHostIndex hands galley the service registry so that analysis
	// checks routed-to hosts against it. See HostIndex.
	SetHostIndex(HostIndex)
}

// ErrStarted is returned by Galley.AddSource once galley runs.
var ErrStarted = errors.New("galley: config sources must be added before galley runs (from Provision)")

// Validator checks a candidate config set, in addition to galley's own
// per-object rules and whole-set analysis. The validator plugin kind is
// wrapped in one (core/plugin/proto/validator/v1).
//
// Validate receives every object of the candidate set (the accepted objects
// of unchanged origins and the new objects of the changing ones) and
// returns findings. Each finding must name its Object (kind/namespace/name)
// and should name its Field; galley fills in File and Line from the object.
// Codes are the validator's own, stable ones. An error finding blocks the
// change like one of galley's own errors; warnings never do.
//
// Validate must respect ctx: galley cancels it after the configured
// validator timeout. A returned error means the validator could not judge
// the set (crashed, unreachable, timed out). What galley does then is set by
// modules.galley.validators.failurePolicy: "fail" (the default) rejects the
// change with a GAL4001 error and retries it until the validator answers;
// "ignore" accepts it with a GAL4001 warning. Either way the last accepted
// config keeps serving.
type Validator interface {
	Validate(ctx context.Context, objs []*Object) ([]Finding, error)
}

// ValidatorFunc adapts a function to Validator.
type ValidatorFunc func(ctx context.Context, objs []*Object) ([]Finding, error)

// Validate implements Validator.
func (f ValidatorFunc) Validate(ctx context.Context, objs []*Object) ([]Finding, error) {
	return f(ctx, objs)
}

// HostIndex answers whether the service registry knows a host. Pilot hands
// its registry view to galley with Galley.SetHostIndex, when its sources
// have synced and again whenever the view changes; until then (and in
// `meshd validate`) analysis has no registry and unknown cluster-local
// hosts are only warnings (GAL3004). With a registry they are errors
// (GAL3003).
//
// HasHost must answer from discovery (Kubernetes, Consul, plugins,
// workloads registered at run time), not from galley's own ServiceEntries:
// galley resolves those against the candidate set itself, and an answer
// drawn from the accepted ServiceEntries would let a change that deletes a
// ServiceEntry leave routes to it dangling.
//
// A HostIndex that also has HasWorkload(namespace string, selector
// map[string]string) bool is used for selector checks too (GAL3012,
// GAL3014).
//
// Galley calls it from its own goroutine until the next SetHostIndex, so it
// must be safe for concurrent use; an immutable view is simplest. Each
// SetHostIndex makes galley try pending rejections again; it never blocks.
type HostIndex interface {
	HasHost(host string) bool
}
