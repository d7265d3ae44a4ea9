// Package core is the spine of meshd: the module registry and host, the
// per-module context, lifecycle hooks, root configuration and readiness. It
// imports nothing else of meshd; modules import it, never the other way round.
//
// A module declares itself with one method (MeshModule) and registers from
// init(). The host decodes each enabled module's config section strictly over
// its defaults, provisions modules in dependency order, runs every Runner under
// one context, and cleans up in reverse order.
package core

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// ModuleID names a module and keys its config section (modules.<id>). IDs
// are lowercase letters, digits and dashes. A module that extends another
// is named after it with a dash (pilot-plugins extends pilot), which is what
// Namespace returns. Dots are not allowed: config keys are dotted paths, so
// a dotted ID would nest inside its parent's section.
type ModuleID string

var moduleIDPattern = regexp.MustCompile(`^[a-z][a-z0-9]*(-[a-z0-9]+)*$`)

// Namespace returns the module an extension module extends ("pilot" for
// pilot-plugins), or "" for a top-level module.
func (id ModuleID) Namespace() string {
	i := strings.IndexByte(string(id), '-')
	if i < 0 {
		return ""
	}
	return string(id[:i])
}

// ModuleInfo is what a module tells the registry about itself.
type ModuleInfo struct {
	// ID is the unique module ID and the key of its config section
	// (modules.<id> in meshd.yaml).
	ID ModuleID
	// New returns a pointer to a new, empty module. It must have no side
	// effects: the registry calls it to list modules and to print defaults,
	// not only to run them. All setup belongs in Provision.
	New func() Module
	// Requires lists modules that must be provisioned before this one and
	// cleaned up after it. A required module that is disabled is an error.
	Requires []ModuleID
	// Uses lists modules this one works with when they are enabled (pilot
	// adds telemetry's access-log config when telemetry runs). They are
	// provisioned first if enabled; Context.Dep returns ErrModuleDisabled
	// for those that are not.
	Uses []ModuleID
	// Config returns a pointer to this module's config filled with its
	// defaults, or nil when the module takes no config. The host decodes the
	// module's section strictly over it and hands it out via Context.Config.
	Config func() any
	// Description is one line for `meshd modules list`.
	Description string
	// DisabledByDefault keeps the module off unless modules.<id>.enabled is true.
	DisabledByDefault bool
}

// Module is implemented by every meshd module.
type Module interface {
	MeshModule() ModuleInfo
}

// Registry holds module registrations. The process-wide registry is filled
// from init() functions through Register; tests build their own.
type Registry struct {
	mu      sync.RWMutex
	modules map[ModuleID]ModuleInfo
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{modules: map[ModuleID]ModuleInfo{}}
}

// Add registers a module. Registration mistakes are programmer errors, so
// they are returned for Register to panic on.
func (r *Registry) Add(m Module) error {
	info := m.MeshModule()
	switch {
	case info.ID == "":
		return fmt.Errorf("module %T: empty ID", m)
	case info.New == nil:
		return fmt.Errorf("module %s: nil New", info.ID)
	case !moduleIDPattern.MatchString(string(info.ID)):
		return fmt.Errorf("module %q: ID must be lowercase letters, digits and dashes", info.ID)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.modules[info.ID]; dup {
		return fmt.Errorf("module %s: already registered", info.ID)
	}
	r.modules[info.ID] = info
	return nil
}

// Get returns the registration of id.
func (r *Registry) Get(id ModuleID) (ModuleInfo, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	info, ok := r.modules[id]
	return info, ok
}

// All returns every registration sorted by ID, so output built from it is
// deterministic.
func (r *Registry) All() []ModuleInfo {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]ModuleInfo, 0, len(r.modules))
	for _, info := range r.modules {
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b ModuleInfo) int { return strings.Compare(string(a.ID), string(b.ID)) })
	return out
}

var defaultRegistry = NewRegistry()

// Register adds m to the process-wide registry. Call it from init(); it
// panics on a duplicate or malformed registration, which is a programmer error.
func Register(m Module) {
	if err := defaultRegistry.Add(m); err != nil {
		panic("core.Register: " + err.Error())
	}
}

// DefaultRegistry returns the process-wide registry filled by Register.
func DefaultRegistry() *Registry { return defaultRegistry }

// Order returns ids and everything they require in dependency order
// (requirements first). It fails on an unknown ID, a cycle, or a requirement
// that is not in enabled (when enabled is non-nil).
func (r *Registry) Order(ids []ModuleID) ([]ModuleInfo, error) {
	const (
		unvisited = iota
		visiting
		done
	)
	state := map[ModuleID]int{}
	inSet := map[ModuleID]bool{}
	for _, id := range ids {
		inSet[id] = true
	}
	var out []ModuleInfo
	var visit func(id ModuleID, path []ModuleID) error
	visit = func(id ModuleID, path []ModuleID) error {
		switch state[id] {
		case done:
			return nil
		case visiting:
			cycle := append(slices.Clone(path[slices.Index(path, id):]), id)
			parts := make([]string, len(cycle))
			for i, c := range cycle {
				parts[i] = string(c)
			}
			return fmt.Errorf("%w: %s", ErrDependencyCycle, strings.Join(parts, " -> "))
		}
		info, ok := r.Get(id)
		if !ok {
			if len(path) > 0 {
				return fmt.Errorf("module %s requires unknown module %s", path[len(path)-1], id)
			}
			return fmt.Errorf("unknown module %s", id)
		}
		if !inSet[id] {
			return fmt.Errorf("module %s requires %s, which is disabled", path[len(path)-1], id)
		}
		state[id] = visiting
		deps := slices.Clone(info.Requires)
		for _, u := range info.Uses {
			if inSet[u] {
				deps = append(deps, u)
			}
		}
		slices.Sort(deps)
		deps = slices.Compact(deps)
		for _, dep := range deps {
			if err := visit(dep, append(path, id)); err != nil {
				return err
			}
		}
		state[id] = done
		out = append(out, info)
		return nil
	}
	sorted := slices.Clone(ids)
	slices.Sort(sorted)
	for _, id := range sorted {
		if err := visit(id, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}
