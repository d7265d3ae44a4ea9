package plugins_test

import (
	"strings"
	"sync"
	"testing"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/plugin"
	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/pilot/registry"
	"github.com/meshd/meshd/modules/pilot/registry/pluginsource"
)

// fakePilot stands in for pilot: it takes registry sources.
type fakePilot struct {
	mu      sync.Mutex
	sources map[string]registry.Source
}

var thePilot = &fakePilot{}

func (*fakePilot) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{ID: "pilot", New: func() core.Module { return thePilot }}
}

func (p *fakePilot) AddSource(name string, src registry.Source) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sources == nil {
		p.sources = map[string]registry.Source{}
	}
	p.sources[name] = src
	return nil
}

// TestPilotPluginsModule: in a host, pilot-plugins hands each discovery
// plugin to pilot's registry.Adder, and refuses a discovery plugin when
// pilot is off.
func TestPilotPluginsModule(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs plugin binaries")
	}
	pc := declare(t, "csv", plugin.KindDiscovery, "csv-source", map[string]any{"file": "/nonexistent.csv"})
	for _, withPilot := range []bool{true, false} {
		reg := core.NewRegistry()
		for _, m := range []core.Module{new(plugin.Module), new(pluginsource.Module)} {
			if err := reg.Add(m); err != nil {
				t.Fatal(err)
			}
		}
		if withPilot {
			if err := reg.Add(thePilot); err != nil {
				t.Fatal(err)
			}
		}
		st, err := store.Open(t.TempDir(), store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		cfg := core.DefaultConfig()
		cfg.DataDir = t.TempDir()
		cfg.Modules = map[string]map[string]any{"plugins": {"plugins": []any{map[string]any{
			"name": pc.Name, "kind": pc.Kind, "path": pc.Path, "sha256": pc.SHA256, "config": pc.Config,
		}}}}
		host, err := core.NewHost(core.HostOptions{Config: cfg, Registry: reg, Store: st})
		if err != nil {
			t.Fatal(err)
		}
		err = host.Provision()
		if withPilot {
			if err != nil {
				t.Fatal(err)
			}
			thePilot.mu.Lock()
			_, ok := thePilot.sources["csv"]
			thePilot.mu.Unlock()
			if !ok {
				t.Error("pilot was not given the plugin's source")
			}
		} else if err == nil || !strings.Contains(err.Error(), "modules.plugins declares discovery plugins (csv) but pilot is disabled") {
			t.Errorf("without pilot: %v", err)
		}
		if err := host.Cleanup(); err != nil {
			t.Error(err)
		}
		st.Close()
	}
}
