// Package plugincmd is `meshd plugins list`: every plugin a running meshd
// hosts, with its kind, version, state and restarts, read from the admin
// API's /debug/plugins.
package plugincmd

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/meshd/meshd/core"
	coreadmin "github.com/meshd/meshd/core/admin"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/core/plugin"
)

// ExitError carries the process exit code: `meshd plugins list` exits 1
// when a plugin is down, so scripts can gate on it.
type ExitError = core.ExitError

// NewPluginsCommand returns `meshd plugins` with its `list` subcommand.
func NewPluginsCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "plugins", Short: "Inspect the plugins a running meshd hosts"}
	cmd.AddCommand(newListCommand())
	return cmd
}

func newListCommand() *cobra.Command {
	var admin, output string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List plugins with kind, version, state and restarts (exit 1 if any is down)",
		Long: `Reads /debug/plugins from a running meshd and prints one line per plugin
declared in modules.plugins: its name, kind, the plugin's own name and
version, its state (up, starting, down, stopped), how often it was
restarted, and its process ID. A plugin that is down is listed with the
reason under the table.

The exit status is 1 when any plugin is not up.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sts, err := fetch(admin, timeout)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			switch output {
			case "json":
				if err := coreadmin.PrintJSON(w, sts); err != nil {
					return err
				}
			case "table", "":
				if err := Table(w, sts, time.Now()); err != nil {
					return err
				}
			default:
				return fmt.Errorf("--output %q: want table or json", output)
			}
			down := 0
			for _, s := range sts {
				if s.State != plugin.StateUp {
					down++
				}
			}
			if down > 0 {
				return &ExitError{Code: 1, Err: fmt.Errorf("%d of %d plugins are not up", down, len(sts))}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&admin, "admin", "127.0.0.1:15014", "address of meshd's admin server")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for meshd")
	return cmd
}

func fetch(addr string, timeout time.Duration) ([]plugin.Status, error) {
	var out []plugin.Status
	err := coreadmin.NewClient(addr, timeout, "plugins").Do(context.Background(), http.MethodGet, "/debug/plugins", nil, &out)
	return out, err
}

// Table writes statuses as a table, then why each plugin that is not up is
// down.
func Table(w io.Writer, sts []plugin.Status, now time.Time) error {
	if len(sts) == 0 {
		_, err := fmt.Fprintln(w, "no plugins (declare them under modules.plugins.plugins)")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tPLUGIN\tVERSION\tSTATE\tRESTARTS\tPID\tSINCE")
	var notes []string
	for _, s := range sts {
		pid := "-"
		if s.PID > 0 {
			pid = fmt.Sprint(s.PID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", s.Name, s.Kind, dash(s.Plugin), dash(s.Version), s.State, s.Restarts, pid, age(now, s.Since))
		if s.State != plugin.StateUp && s.LastError != "" {
			notes = append(notes, fmt.Sprintf("%s: %s", s.Name, s.LastError))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintln(w, n)
		}
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func age(now, since time.Time) string {
	if since.IsZero() {
		return "-"
	}
	d := now.Sub(since).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String()
}
