package pluginvalidator

import (
	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/plugin"
	"github.com/meshd/meshd/modules/galley/api"
)

func init() { core.Register(new(Module)) }

// ModuleID is the module that hands validator plugins to galley.
const ModuleID core.ModuleID = "galley-plugins"

const galleyID core.ModuleID = "galley"

// adder is the part of api.Galley this module uses.
type adder interface {
	AddValidator(name string, v api.Validator) error
}

// Module adds each validator plugin (modules.plugins, kind validator) to
// galley's checks, named after the plugin. It does nothing when no
// validator plugin is declared.
type Module struct {
	instances []*plugin.Instance
}

// Interface guards.
var (
	_ core.Provisioner = (*Module)(nil)
	_ core.Readier     = (*Module)(nil)
)

// MeshModule implements core.Module.
func (*Module) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{
		ID:          ModuleID,
		New:         func() core.Module { return new(Module) },
		Uses:        []core.ModuleID{plugin.ID, galleyID},
		Description: "adds the validator plugins of modules.plugins to galley's config checks",
	}
}

// Provision adds the validators. Galley must run when validator plugins
// are declared.
func (m *Module) Provision(ctx *core.Context) error {
	ins, err := plugin.Attach(ctx, Kind, galleyID, func(g adder, in *plugin.Instance) error {
		return g.AddValidator(in.Name(), New(in))
	})
	m.instances = ins
	return err
}

// Ready is always nil: while a validator plugin is down, galley keeps the
// last accepted config (or applies its failure policy); Degraded says so.
func (m *Module) Ready() error { return nil }

// Degraded describes the validator plugins that are down, or returns "".
func (m *Module) Degraded() string { return plugin.Degraded(m.instances) }
