package kube

import (
	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/pilot/registry"
)

func init() { core.Register(new(Module)) }

// ModuleID is the module that adds the Kubernetes source to pilot.
const ModuleID core.ModuleID = "pilot-kubernetes"

// Module adds a Kubernetes discovery source to pilot's registry, under the
// name "kubernetes" (list it in modules.pilot.registries to set its
// precedence). It is off unless modules.pilot-kubernetes.enabled
// is true.
type Module struct{}

var _ core.Provisioner = (*Module)(nil)

// MeshModule implements core.Module.
func (*Module) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{
		ID:                ModuleID,
		New:               func() core.Module { return new(Module) },
		Requires:          []core.ModuleID{"pilot"},
		Config:            func() any { c := Default(); return &c },
		DisabledByDefault: true,
		Description:       "discovery from Kubernetes: Services, EndpointSlices, Pods and Nodes through informers",
	}
}

// Provision builds the source and hands it to pilot.
func (m *Module) Provision(ctx *core.Context) error {
	cfg, err := core.ConfigAs[Config](ctx)
	if err != nil {
		return err
	}
	src, err := NewFromConfig(*cfg, Options{Log: ctx.Logger(), ClusterDomain: ctx.Mesh().ClusterDomain})
	if err != nil {
		return err
	}
	add, err := core.Dep[registry.Adder](ctx, "pilot")
	if err != nil {
		return err
	}
	return add.AddSource(SourceName, src)
}
