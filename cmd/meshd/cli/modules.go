package cli

// The modules compiled into meshd. Each registers itself from init();
// these imports are all it takes to include one.
import (
	_ "github.com/meshd/meshd/core/plugin"
	_ "github.com/meshd/meshd/modules/citadel"
	_ "github.com/meshd/meshd/modules/citadel/kubeauth"
	_ "github.com/meshd/meshd/modules/citadel/pluginsigner"
	_ "github.com/meshd/meshd/modules/galley"
	_ "github.com/meshd/meshd/modules/galley/kubesource"
	_ "github.com/meshd/meshd/modules/galley/pluginvalidator"
	_ "github.com/meshd/meshd/modules/pilot"
	_ "github.com/meshd/meshd/modules/pilot/autoregister"
	_ "github.com/meshd/meshd/modules/pilot/registry/consul"
	_ "github.com/meshd/meshd/modules/pilot/registry/kube"
	_ "github.com/meshd/meshd/modules/pilot/registry/pluginsource"
	_ "github.com/meshd/meshd/modules/telemetry"
	_ "github.com/meshd/meshd/modules/telemetry/pluginsink"
	_ "github.com/meshd/meshd/xds"
)
