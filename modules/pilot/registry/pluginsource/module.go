package pluginsource

import (
	"fmt"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/plugin"
	"github.com/meshd/meshd/modules/pilot/registry"
)

func init() { core.Register(new(Module)) }

// ModuleID is the module that hands discovery plugins to pilot.
const ModuleID core.ModuleID = "pilot-plugins"

// pilotID is pilot's module ID.
const pilotID core.ModuleID = "pilot"

// adder is pilot's registry.Adder.
type adder interface {
	AddSource(name string, src registry.Source) error
}

// Module adds each discovery plugin (modules.plugins, kind discovery) to
// pilot's registry as a source named after the plugin. It does nothing
// when no discovery plugin is declared.
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
		Uses:        []core.ModuleID{plugin.ID, pilotID},
		Description: "adds the discovery plugins of modules.plugins to pilot's service registry",
	}
}

// Provision adds the sources. Pilot must run when discovery plugins are
// declared.
func (m *Module) Provision(ctx *core.Context) error {
	ins, err := plugin.Attach(ctx, Kind, pilotID, func(a adder, in *plugin.Instance) error {
		if err := a.AddSource(in.Name(), New(in)); err != nil {
			return fmt.Errorf("%w (rename the plugin in modules.plugins)", err)
		}
		return nil
	})
	m.instances = ins
	return err
}

// Ready is always nil: a discovery plugin that is down leaves pilot serving
// the last state it reported; Degraded says so.
func (m *Module) Ready() error { return nil }

// Degraded describes the discovery plugins that are down, or returns "".
func (m *Module) Degraded() string { return plugin.Degraded(m.instances) }
