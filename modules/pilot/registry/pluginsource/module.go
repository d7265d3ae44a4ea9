package pluginsource

import (
	"errors"
	"fmt"
	"strings"

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
	ins, err := plugin.Lookup(ctx, Kind)
	if err != nil || len(ins) == 0 {
		return err
	}
	add, err := core.Dep[adder](ctx, pilotID)
	if errors.Is(err, core.ErrModuleDisabled) {
		names := make([]string, len(ins))
		for i, in := range ins {
			names[i] = in.Name()
		}
		return fmt.Errorf("modules.plugins declares discovery plugins (%s) but pilot is disabled", strings.Join(names, ", "))
	}
	if err != nil {
		return err
	}
	for _, in := range ins {
		if err := add.AddSource(in.Name(), New(in)); err != nil {
			return plugin.Error(in.Name(), fmt.Errorf("%w (rename the plugin in modules.plugins)", err))
		}
	}
	m.instances = ins
	return nil
}

// Ready is always nil: a discovery plugin that is down leaves pilot serving
// the last state it reported; Degraded says so.
func (m *Module) Ready() error { return nil }

// Degraded describes the discovery plugins that are down, or returns "".
func (m *Module) Degraded() string { return plugin.Degraded(m.instances) }
