package consul

import (
	"encoding/json"
	"net/http"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/pilot/registry"
)

func init() { core.Register(new(Module)) }

// ModuleID is the module that adds the Consul source to pilot.
const ModuleID core.ModuleID = "pilot-consul"

// Module adds a Consul discovery source to pilot's registry, under the name
// "consul" (list it in modules.pilot.registries to set its precedence). It
// is off unless modules.pilot-consul.enabled is true. It serves
// GET /debug/consulz: each blocking-query watch with its index, query,
// change and error counts.
type Module struct {
	src *Source
}

var _ core.Provisioner = (*Module)(nil)

// MeshModule implements core.Module.
func (*Module) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{
		ID:                ModuleID,
		New:               func() core.Module { return new(Module) },
		Requires:          []core.ModuleID{"pilot"},
		Config:            func() any { c := Default(); return &c },
		DisabledByDefault: true,
		Description:       "discovery from a Consul catalog with blocking queries (services, health, tags and meta)",
	}
}

// Provision builds the source and hands it to pilot.
func (m *Module) Provision(ctx *core.Context) error {
	cfg, err := core.ConfigAs[Config](ctx)
	if err != nil {
		return err
	}
	m.src, err = New(*cfg, Options{Log: ctx.Logger(), Metrics: ctx.Metrics()})
	if err != nil {
		return err
	}
	add, err := core.Dep[registry.Adder](ctx, "pilot")
	if err != nil {
		return err
	}
	if err := add.AddSource(SourceName, m.src); err != nil {
		return err
	}
	ctx.HandleAdmin("GET /debug/consulz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(struct {
			Address string        `json:"address"`
			Watches []WatchStatus `json:"watches"`
		}{cfg.Address, m.src.Status()})
	}))
	return nil
}
