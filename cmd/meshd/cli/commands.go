package cli

import (
	"github.com/spf13/cobra"

	"github.com/meshd/meshd/agent"
	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/plugin/plugincmd"
	"github.com/meshd/meshd/modules/citadel/cacmd"
	"github.com/meshd/meshd/modules/galley/galleycli"
	"github.com/meshd/meshd/modules/galley/validatecmd"
	"github.com/meshd/meshd/xds/statuscmd"
)

// moduleCommands returns the subcommands that modules contribute (validate,
// status, ca, ...). They are listed here, explicitly, rather than registered
// from init(), so the command tree is visible in one place.
func moduleCommands() []*cobra.Command {
	return []*cobra.Command{
		validatecmd.NewValidateCommandWithMesh(meshFromConfig),
		plugincmd.NewPluginsCommand(),
		statuscmd.NewStatusCommand(),
		cacmd.NewCommand(),
		agent.NewAgentCommand(),
	}
}

// moduleConfigCommands returns the subcommands that modules add under
// `meshd config` (history, diff, rollback). history also counts the
// proxies on each revision (history.go).
func moduleConfigCommands() []*cobra.Command {
	return galleycli.NewConfigCommands(proxyCounts)
}

// meshFromConfig returns the mesh section of the effective config (-c or
// MESHD_CONFIG, then MESHD_MESH_*), for commands that judge config offline.
func meshFromConfig(cmd *cobra.Command) (core.MeshConfig, error) {
	l, err := loadConfig(cmd.Flags(), core.DefaultRegistry())
	if err != nil {
		return core.MeshConfig{}, err
	}
	return l.Root.Mesh, nil
}
