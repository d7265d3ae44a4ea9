package pluginsink_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/meshd/meshd/core/plugin/plugintest"
	"github.com/meshd/meshd/modules/telemetry/api"
	"github.com/meshd/meshd/modules/telemetry/pluginsink"
	"github.com/meshd/meshd/modules/telemetry/pluginsink/sinktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformanceInProcess(t *testing.T) {
	sinktest.Run(t, func(_ *testing.T, s api.Sink) api.Sink { return s })
}

func TestConformanceShims(t *testing.T) {
	sinktest.Run(t, func(t *testing.T, s api.Sink) api.Sink {
		return plugintest.Dispense(t, pluginsink.Kind, pluginsink.Plugin(s)).(api.Sink)
	})
}
