package cli

import (
	"fmt"
	"strings"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/config"
	"github.com/spf13/cobra"
)

// ConfigReference renders docs/config-reference.md from the code: the root
// config's defaults and every registered module's Default(). A test fails
// when the committed file differs, so docs and defaults cannot drift apart.
func ConfigReference(reg *core.Registry) string {
	var b strings.Builder
	b.WriteString(`# Configuration reference

<!-- Generated from the code by ` + "`meshd config reference`" + `; do not edit by hand.
     Regenerate with: go test ./cmd/meshd/cli -run TestConfigReference -update -->

meshd reads one YAML file (` + "`meshd serve -c meshd.yaml`" + `), then ` + "`MESHD_*`" + ` environment
variables, then flags; each overrides the one before. Every key below can be set
by its environment variable. Unknown keys are errors that name the key's full
path and line. Durations are Go durations (` + "`100ms`, `15s`, `24h`" + `).

`)
	writeTable(&b, config.Fields(core.DefaultConfig(), ""))
	b.WriteString("\n## Modules\n\nEach module has a section under `modules.<id>`; `enabled` turns it on or off.\n")
	for _, info := range reg.All() {
		fmt.Fprintf(&b, "\n### %s\n\n%s\n\n", info.ID, info.Description)
		fields := []config.Field{{
			Path:    "modules." + string(info.ID) + ".enabled",
			Type:    "bool",
			Default: fmt.Sprint(!info.DisabledByDefault),
			Doc:     "run this module",
		}}
		if info.Config != nil {
			fields = append(fields, config.Fields(info.Config(), "modules."+string(info.ID))...)
		}
		writeTable(&b, fields)
	}
	return b.String()
}

func writeTable(b *strings.Builder, fields []config.Field) {
	b.WriteString("| key | default | env | description |\n|---|---|---|---|\n")
	for _, f := range fields {
		if f.Path == "modules" {
			continue
		}
		def := f.Default
		if def == "" {
			def = `""`
		}
		doc := f.Doc
		if f.Secret {
			doc += " (secret: redacted by `meshd config print`)"
		}
		fmt.Fprintf(b, "| `%s` | `%s` | `%s` | %s |\n", f.Path, def, f.EnvVar(), strings.ReplaceAll(doc, "|", `\|`))
	}
}

func newConfigReferenceCmd(reg *core.Registry) *cobra.Command {
	return &cobra.Command{
		Use:   "reference",
		Short: "Print the configuration reference (docs/config-reference.md) as Markdown",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprint(cmd.OutOrStdout(), ConfigReference(reg))
			return err
		},
	}
}
