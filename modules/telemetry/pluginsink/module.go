package pluginsink

import (
	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/plugin"
	"github.com/meshd/meshd/modules/telemetry/api"
)

func init() { core.Register(new(Module)) }

// ModuleID is the module that hands sink plugins to telemetry.
const ModuleID core.ModuleID = "telemetry-plugins"

// Module adds each sink plugin (modules.plugins, kind sink) to telemetry's
// access-log sinks, named after the plugin. It does nothing when no sink
// plugin is declared.
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
		Uses:        []core.ModuleID{plugin.ID, api.ID},
		Description: "adds the sink plugins of modules.plugins to telemetry's access-log sinks",
	}
}

// Provision adds the sinks. Telemetry must run when sink plugins are
// declared.
func (m *Module) Provision(ctx *core.Context) error {
	ins, err := plugin.Attach(ctx, Kind, api.ID, func(reg api.SinkRegistry, in *plugin.Instance) error {
		return reg.AddSink(in.Name(), New(in))
	})
	m.instances = ins
	return err
}

// Ready is always nil: a sink plugin that is down loses the records of its
// downtime (counted as dropped) and nothing else; Degraded says so.
func (m *Module) Ready() error { return nil }

// Degraded describes the sink plugins that are down, or returns "".
func (m *Module) Degraded() string { return plugin.Degraded(m.instances) }
