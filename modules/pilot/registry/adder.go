package registry

import "errors"

// Adder takes discovery sources. The pilot module implements it: a module
// that discovers services (Kubernetes, Consul, a plugin) requires pilot and
// adds its source from Provision,
//
//	add, err := core.Dep[registry.Adder](ctx, "pilot")
//	err = add.AddSource("consul", src)
//
// and pilot runs it, restarts it with backoff when it fails, merges it by
// the precedence in modules.pilot.registries, and holds the first push
// until every source has reported once.
type Adder interface {
	AddSource(name string, src Source) error
}

// ErrStarted is returned by Aggregate.Add once the aggregate runs: Run
// starts the sources it knows then and no others.
var ErrStarted = errors.New("registry sources must be added before the aggregate runs (from Provision)")
