package pluginsigner

import (
	"errors"
	"fmt"
	"strings"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/plugin"
	"github.com/meshd/meshd/modules/citadel/api"
)

func init() { core.Register(new(Module)) }

// ModuleID is the module that hands the signer plugin to citadel.
const ModuleID core.ModuleID = "citadel-plugins"

const citadelID core.ModuleID = "citadel"

// Module gives citadel the signer plugin (modules.plugins, kind signer),
// if one is declared; at most one may be.
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
		Uses:        []core.ModuleID{plugin.ID, citadelID},
		Description: "hands the signer plugin of modules.plugins to citadel as its CA",
	}
}

// Provision sets citadel's signer.
func (m *Module) Provision(ctx *core.Context) error {
	ins, err := plugin.Lookup(ctx, Kind)
	if err != nil || len(ins) == 0 {
		return err
	}
	names := make([]string, len(ins))
	for i, in := range ins {
		names[i] = in.Name()
	}
	if len(ins) > 1 {
		return fmt.Errorf("modules.plugins declares %d signer plugins (%s); citadel has one CA, declare one", len(ins), strings.Join(names, ", "))
	}
	reg, err := core.Dep[api.SignerRegistry](ctx, citadelID)
	switch {
	case errors.Is(err, core.ErrModuleDisabled):
		return fmt.Errorf("modules.plugins declares signer plugin %s but citadel is disabled", names[0])
	case err != nil:
		return fmt.Errorf("signer plugin %s: citadel in this build does not take an external signer: %w", names[0], err)
	}
	if err := reg.SetSigner(ins[0].Name(), New(ins[0])); err != nil {
		return plugin.Error(ins[0].Name(), err)
	}
	m.instances = ins
	return nil
}

// Ready is always nil: while the signer plugin is down, CSRs fail with
// Unavailable and workloads keep their current certificates; Degraded says
// so.
func (m *Module) Ready() error { return nil }

// Degraded describes the signer plugin when it is down, or returns "".
func (m *Module) Degraded() string { return plugin.Degraded(m.instances) }
