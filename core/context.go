package core

import (
	"fmt"
	"log/slog"
	"net/http"
	"slices"

	"github.com/meshd/meshd/core/bus"
	"github.com/meshd/meshd/core/store"
	"github.com/prometheus/client_golang/prometheus"
)

// Context is the one handle a module receives in Provision. Everything a
// module needs from the host comes through it, so modules hold no globals.
type Context struct {
	id   ModuleID
	info ModuleInfo
	host *Host
	cfg  any
	log  *slog.Logger
}

// ID returns the module's ID.
func (c *Context) ID() ModuleID { return c.id }

// Logger returns a logger tagged with module=<id>.
func (c *Context) Logger() *slog.Logger { return c.log }

// Config returns the module's decoded config: the pointer its
// ModuleInfo.Config returned, filled from its section. Nil when the module
// takes no config.
func (c *Context) Config() any { return c.cfg }

// Mesh returns the mesh-wide settings.
func (c *Context) Mesh() MeshConfig { return c.host.cfg.Mesh }

// DataDir returns the data dir, for modules that keep files beside the store.
func (c *Context) DataDir() string { return c.host.cfg.DataDir }

// Bus returns the event bus.
func (c *Context) Bus() *bus.Bus { return c.host.bus }

// Store returns the module's own tree in the store, modules/<id>.
func (c *Context) Store() *store.Namespace { return c.host.store.Module(string(c.id)) }

// Metrics returns the registry every meshd metric goes to; /metrics serves it.
func (c *Context) Metrics() prometheus.Registerer { return c.host.metrics }

// HandleAdmin adds a route to the admin HTTP server (pattern as in
// http.ServeMux, e.g. "GET /debug/syncz"). Call it from Provision.
func (c *Context) HandleAdmin(pattern string, h http.Handler) {
	c.host.admin.Handle(pattern, h)
}

// Dep returns a provisioned module this one declared in Requires or Uses.
// Modules assert the result to an interface from the dependency's api
// package. For a module in Uses that is disabled it returns an error
// wrapping ErrModuleDisabled.
func (c *Context) Dep(id ModuleID) (Module, error) {
	required := slices.Contains(c.info.Requires, id)
	if !required && !slices.Contains(c.info.Uses, id) {
		return nil, fmt.Errorf("module %s: %s is not in its Requires or Uses", c.id, id)
	}
	m, ok := c.host.instance(id)
	if !ok {
		if !required {
			return nil, fmt.Errorf("module %s: %s: %w", c.id, id, ErrModuleDisabled)
		}
		return nil, fmt.Errorf("module %s: dependency %s is not provisioned", c.id, id)
	}
	return m, nil
}

// Dep is the typed form of Context.Dep: it returns dependency id as T.
func Dep[T any](c *Context, id ModuleID) (T, error) {
	var zero T
	m, err := c.Dep(id)
	if err != nil {
		return zero, err
	}
	t, ok := m.(T)
	if !ok {
		return zero, fmt.Errorf("module %s: dependency %s (%T) does not implement %T", c.id, id, m, (*T)(nil))
	}
	return t, nil
}

// ConfigAs returns the module config as *T, the type its ModuleInfo.Config
// returns.
func ConfigAs[T any](c *Context) (*T, error) {
	cfg, ok := c.cfg.(*T)
	if !ok {
		return nil, fmt.Errorf("module %s: config is %T, not *%T", c.id, c.cfg, *new(T))
	}
	return cfg, nil
}
