package pluginsource_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/meshd/meshd/core/plugin/plugintest"
	"github.com/meshd/meshd/modules/pilot/registry"
	"github.com/meshd/meshd/modules/pilot/registry/pluginsource"
	"github.com/meshd/meshd/modules/pilot/registry/pluginsource/sourcetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The same suite, in process and across the shims.
func TestConformanceInProcess(t *testing.T) {
	sourcetest.Run(t, func(_ *testing.T, src registry.Source) registry.Source { return src })
}

func TestConformanceShims(t *testing.T) {
	sourcetest.Run(t, func(t *testing.T, src registry.Source) registry.Source {
		return plugintest.Dispense(t, pluginsource.Kind, pluginsource.Plugin(src)).(registry.Source)
	})
}
