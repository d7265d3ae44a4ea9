// Package statuscmd is `meshd status`: the sync state of every connected
// proxy, read from a running meshd's /debug/syncz, as a table like
// `istioctl proxy-status`.
package statuscmd

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshd/meshd/core"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/xds/api"

	coreadmin "github.com/meshd/meshd/core/admin"
)

// ExitError carries the process exit code; the root command turns it into
// the exit status instead of the command calling os.Exit itself.
type ExitError = core.ExitError

// NewStatusCommand returns `meshd status`. It exits 1 when any proxy has
// NACKED config, so scripts and CI can gate on it.
func NewStatusCommand() *cobra.Command {
	var admin, output string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "status [proxy-id-substring]",
		Short: "Show the xDS sync state and config revision of connected proxies (exit 1 if any NACKED)",
		Long: `Reads /debug/syncz from a running meshd and prints one line per xDS stream:
its proxy, the proxy type, the config revision it runs, and for each
resource type SYNCED (the last response was acknowledged), STALE (sent, not
acknowledged yet), NACKED (the proxy rejected it and runs its last good
config) or NOT SENT. Rejections are listed under the table with the proxy's
error detail.

REVISION is the galley config revision (meshd config history) whose
resources the stream acknowledged: "12" when every type runs revision 12;
"12 (LDS 11, EDS -)" when types differ, giving the highest and then each
type on another revision ("-": nothing acknowledged yet). A line under the
table counts proxies on the latest accepted revision, behind it, and
NACKed. -o json prints every stream's status, with revisionSent and
revisionAcked per type.

The exit status is 1 when any proxy is NACKED, and 2 when the status
cannot be read.`,
		Args:          cobra.MaximumNArgs(1),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			statuses, err := Fetch(cmd.Context(), admin, timeout)
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			if len(args) == 1 {
				statuses = slices.DeleteFunc(statuses, func(s api.ProxyStatus) bool { return !strings.Contains(s.ID, args[0]) })
			}
			w := cmd.OutOrStdout()
			switch output {
			case "json":
				if err := coreadmin.PrintJSON(w, statuses); err != nil {
					return err
				}
			case "table", "":
				latest := latestRevision(cmd.Context(), admin, timeout, statuses)
				if err := Table(w, statuses, latest); err != nil {
					return err
				}
			default:
				return fmt.Errorf("--output %q: want table or json", output)
			}
			if n := nacked(statuses); n > 0 {
				return &ExitError{Code: 1, Err: fmt.Errorf("%d of %d proxies have NACKED config", n, len(statuses))}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&admin, "admin", "127.0.0.1:15014", "address of meshd's admin server")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for meshd")
	return cmd
}

func nacked(statuses []api.ProxyStatus) int {
	n := 0
	for _, s := range statuses {
		if slices.ContainsFunc(s.Types, func(t api.TypeStatus) bool { return t.State == api.Nacked }) {
			n++
		}
	}
	return n
}

// columns are the types shown, in push order; other types a proxy watches
// get a column after these.
var columns = []string{api.ClusterType, api.ListenerType, api.EndpointType, api.RouteType, api.SecretType}

// Table writes statuses as a table, a summary against the latest accepted
// config revision (0: unknown), then the detail of every NACK.
func Table(w io.Writer, statuses []api.ProxyStatus, latest uint64) error {
	cols := slices.Clone(columns)
	for _, s := range statuses {
		for _, t := range s.Types {
			if !slices.Contains(cols, t.TypeURL) {
				cols = append(cols, t.TypeURL)
			}
		}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	hdr := []string{"NAME", "TYPE", "IDENTITY", "REVISION"}
	for _, c := range cols {
		hdr = append(hdr, strings.ToUpper(api.ShortType(c)))
	}
	fmt.Fprintln(tw, strings.Join(hdr, "\t"))
	var nacks []string
	for _, s := range statuses {
		name := s.ID
		if multi(statuses, s.ID) {
			name = s.ConnID
		}
		id := s.Identity
		switch {
		case id == "":
			id = "-"
		case !s.IdentityVerified:
			id += " (claimed)"
		}
		row := []string{name, string(s.Type), id, revisionCell(s, cols)}
		for _, c := range cols {
			state := "-"
			for _, t := range s.Types {
				if t.TypeURL == c {
					state = string(t.State)
					if t.State == api.Nacked && t.LastNack != nil {
						nacks = append(nacks, fmt.Sprintf("%s %s version %s: %s%s", name, strings.ToUpper(api.ShortType(c)),
							t.LastNack.Version, oneLine(t.LastNack.Message), resources(t.LastNack.Resources)))
					}
				}
			}
			row = append(row, state)
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(statuses) > 0 {
		fmt.Fprintln(w, "\n"+Summarize(statuses, latest).String())
	}
	if len(nacks) > 0 {
		fmt.Fprintln(w, "\nNACKED (each proxy keeps its last good config):")
		for _, n := range nacks {
			fmt.Fprintln(w, "  "+n)
		}
	}
	if len(statuses) == 0 {
		fmt.Fprintln(w, "no proxies connected")
	}
	return nil
}

func multi(statuses []api.ProxyStatus, id string) bool {
	n := 0
	for _, s := range statuses {
		if s.ID == id {
			n++
		}
	}
	return n > 1
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

func resources(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return " (resources: " + strings.Join(names, ", ") + ")"
}
