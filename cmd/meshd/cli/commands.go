package cli

import (
	"github.com/spf13/cobra"

	"github.com/meshd/meshd/core/plugin/plugincmd"
	"github.com/meshd/meshd/modules/galley/validatecmd"
	"github.com/meshd/meshd/xds/statuscmd"
)

// moduleCommands returns the subcommands that modules contribute (validate,
// status, ca, ...). They are listed here, explicitly, rather than registered
// from init(), so the command tree is visible in one place.
func moduleCommands() []*cobra.Command {
	return []*cobra.Command{
		validatecmd.NewValidateCommand(),
		plugincmd.NewPluginsCommand(),
		statuscmd.NewStatusCommand(),
	}
}
