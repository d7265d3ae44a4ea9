// Package cli is the meshd command line. Commands are built by functions, so
// every invocation (and every test) gets a fresh tree with its own viper.
package cli

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/meshd/meshd/core"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// Build information, injected with -ldflags "-X github.com/meshd/meshd/cmd/meshd/cli.version=v1.2.3 -X ...commit=abc".
var (
	version = "dev"
	commit  = ""
)

// Version returns the build version ("dev" unless injected).
func Version() string { return version }

// exitCoder is implemented by errors that carry a process exit code, such as
// `meshd validate` finding errors or `meshd status` finding NACKs.
type exitCoder interface{ ExitCode() int }

// Main runs the CLI and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	root := NewRootCmd(stdout, stderr, core.DefaultRegistry())
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ec exitCoder
	if errors.As(err, &ec) {
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(stderr, "meshd:", msg)
		}
		return ec.ExitCode()
	}
	fmt.Fprintln(stderr, "meshd:", err)
	return 1
}

// NewRootCmd builds the command tree.
func NewRootCmd(stdout, stderr io.Writer, reg *core.Registry) *cobra.Command {
	root := &cobra.Command{
		Use:           "meshd",
		Short:         "meshd is a service-mesh control plane: Pilot, Citadel, Galley and telemetry in one binary",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(
		newServeCmd(reg),
		newVersionCmd(),
		newConfigCmd(reg),
		newModulesCmd(reg),
		newStoreCmd(),
	)
	root.AddCommand(moduleCommands()...)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the meshd version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := commit
			if c == "" {
				if bi, ok := debug.ReadBuildInfo(); ok {
					for _, s := range bi.Settings {
						if s.Key == "vcs.revision" {
							c = s.Value
						}
					}
				}
			}
			if c == "" {
				c = "unknown"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "meshd %s (commit %s, %s, %s/%s)\n", version, c, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}

func newConfigCmd(reg *core.Registry) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Inspect configuration"}
	print := &cobra.Command{
		Use:   "print",
		Short: "Print the effective config (file, then MESHD_* environment, then flags), secrets redacted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := loadConfig(cmd.Flags(), reg)
			if err != nil {
				return err
			}
			enc := yaml.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent(2)
			defer enc.Close()
			return enc.Encode(l.effective(reg))
		},
	}
	addConfigFlags(print.Flags())
	cmd.AddCommand(print, newConfigReferenceCmd(reg))
	cmd.AddCommand(moduleConfigCommands()...)
	return cmd
}

func newModulesCmd(reg *core.Registry) *cobra.Command {
	cmd := &cobra.Command{Use: "modules", Short: "Inspect modules"}
	list := &cobra.Command{
		Use:   "list",
		Short: "List compiled-in modules, whether the config enables them, and what they require",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := loadConfig(cmd.Flags(), reg)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "MODULE\tENABLED\tREQUIRES\tDESCRIPTION")
			for _, info := range reg.All() {
				req := make([]string, len(info.Requires))
				for i, r := range info.Requires {
					req[i] = string(r)
				}
				reqs := strings.Join(req, ",")
				if reqs == "" {
					reqs = "-"
				}
				fmt.Fprintf(tw, "%s\t%t\t%s\t%s\n", info.ID, slices.Contains(l.Enabled, info.ID), reqs, info.Description)
			}
			return tw.Flush()
		},
	}
	addConfigFlags(list.Flags())
	cmd.AddCommand(list)
	return cmd
}
