// Package galleycli is `meshd config history|diff|rollback`: galley's
// accepted config revisions, shown and restored from the command line.
//
// The commands talk to a running meshd through its admin API (--admin,
// default 127.0.0.1:15014). history and diff can also read the store of a
// stopped meshd (--data-dir); rollback needs the running server, since it
// changes what galley serves.
package galleycli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshd/meshd/core/admin"

	"github.com/pmezard/go-difflib/difflib"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/meshd/meshd/modules/galley"
	"github.com/meshd/meshd/modules/galley/api"
)

// NewConfigCommands returns history, diff and rollback, for the `meshd
// config` command. proxies, when not nil, adds to history's list how many
// connected proxies run each revision.
func NewConfigCommands(proxies ProxyCounter) []*cobra.Command {
	return []*cobra.Command{historyCmd(proxies), diffCmd(), rollbackCmd()}
}

// ProxyCounter reports how many proxies connected to the meshd at admin run
// each config revision. Galley knows nothing of xds and must not import it;
// the binary, which has both, passes one in.
type ProxyCounter func(ctx context.Context, admin string) (map[uint64]int, error)

// proxiesTimeout bounds the extra call for proxy counts: the list must not
// wait long on an xds module that does not answer.
const proxiesTimeout = 5 * time.Second

// countProxies asks proxies for counts, best effort: with a stopped meshd
// (--data-dir), xds off or the status unreadable, history prints the list
// without them.
func (o *options) countProxies(ctx context.Context, proxies ProxyCounter) map[uint64]int {
	if proxies == nil || o.dataDir != "" {
		return nil
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, proxiesTimeout)
	defer cancel()
	counts, err := proxies(ctx, o.admin)
	if err != nil {
		return nil
	}
	return counts
}

// revisionView is a RevisionInfo as history's JSON shows it: with the
// number of proxies on it when known.
type revisionView struct {
	galley.RevisionInfo
	Proxies *int `json:"proxies,omitempty"`
}

func listView(list *galley.RevisionList, counts map[uint64]int) any {
	if counts == nil {
		return list
	}
	out := struct {
		Current   uint64         `json:"current"`
		Revisions []revisionView `json:"revisions"`
	}{Current: list.Current, Revisions: make([]revisionView, len(list.Revisions))}
	for i, r := range list.Revisions {
		n := counts[r.Revision]
		out.Revisions[i] = revisionView{RevisionInfo: r, Proxies: &n}
	}
	return out
}

type options struct {
	admin   string
	dataDir string
	output  string
}

func (o *options) flags(cmd *cobra.Command, offline bool, outputs string) {
	f := cmd.Flags()
	f.StringVar(&o.admin, "admin", "127.0.0.1:15014", "admin address of the running meshd")
	if offline {
		f.StringVar(&o.dataDir, "data-dir", "", "read the store in this data dir instead of calling the admin API (meshd must be stopped)")
	}
	f.StringVarP(&o.output, "output", "o", "text", "output format: "+outputs)
}

func (o *options) checkOutput(allowed ...string) error {
	for _, a := range allowed {
		if o.output == a {
			return nil
		}
	}
	return fmt.Errorf("--output %q: want %s", o.output, strings.Join(allowed, " or "))
}

// reader is what history and diff read: the admin API or a stopped
// meshd's store.
type reader interface {
	Revisions(limit int) (*galley.RevisionList, error)
	Revision(n uint64, objects bool) (*galley.RevisionDetail, error)
	Diff(from, to uint64) (*galley.Diff, error)
}

func (o *options) reader(ctx context.Context) (reader, func(), error) {
	if o.dataDir != "" {
		h, err := galley.OpenHistory(o.dataDir)
		if err != nil {
			return nil, nil, err
		}
		return h, func() { h.Close() }, nil
	}
	return newClient(ctx, o.admin, 30*time.Second), func() {}, nil
}

func historyCmd(proxies ProxyCounter) *cobra.Command {
	o := &options{}
	var limit int
	cmd := &cobra.Command{
		Use:   "history [REVISION]",
		Short: "List accepted config revisions, or show one",
		Long: `List the accepted config revisions galley keeps (newest first), or show one
revision: what changed in it and, with -o yaml, its whole config as
multi-document YAML that meshd validate and the file source read back.

Listing the revisions of a running meshd also shows PROXIES: how many
connected proxies run each revision for every resource type (meshd status
shows each proxy's). It is left out when the proxy status cannot be read.`,
		Example: `  meshd config history
  meshd config history 12
  meshd config history 12 -o yaml > mesh-at-12.yaml`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, done, err := o.reader(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			w := cmd.OutOrStdout()
			if len(args) == 0 {
				if err := o.checkOutput("text", "json"); err != nil {
					return err
				}
				list, err := r.Revisions(limit)
				if err != nil {
					return err
				}
				counts := o.countProxies(cmd.Context(), proxies)
				if o.output == "json" {
					return writeJSON(w, listView(list, counts))
				}
				return writeList(w, list, counts)
			}
			if err := o.checkOutput("text", "json", "yaml"); err != nil {
				return err
			}
			n, err := parseRev(args[0])
			if err != nil {
				return err
			}
			rev, err := r.Revision(n, o.output != "text")
			if err != nil {
				return err
			}
			switch o.output {
			case "json":
				return writeJSON(w, rev)
			case "yaml":
				return writeYAML(w, rev.Config)
			}
			return writeRevision(w, rev)
		},
	}
	o.flags(cmd, true, "text, json, or yaml for one revision's objects")
	cmd.Flags().IntVar(&limit, "limit", 20, "list at most this many revisions; 0 for all")
	return cmd
}

func diffCmd() *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "diff [FROM [TO]]",
		Short: "Show what changed between two config revisions",
		Long: `Show what changed between two accepted config revisions, object by object,
as unified diffs of their YAML. TO defaults to the latest revision and FROM
to the one before TO.`,
		Example: `  meshd config diff          # the latest change
  meshd config diff 10       # from 10 to now
  meshd config diff 10 12`,
		Args: cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.checkOutput("text", "json"); err != nil {
				return err
			}
			var from, to uint64
			var err error
			if len(args) > 0 {
				if from, err = parseRev(args[0]); err != nil {
					return err
				}
			}
			if len(args) > 1 {
				if to, err = parseRev(args[1]); err != nil {
					return err
				}
			}
			r, done, err := o.reader(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			d, err := r.Diff(from, to)
			if err != nil {
				return err
			}
			if o.output == "json" {
				return writeJSON(cmd.OutOrStdout(), d)
			}
			return writeDiff(cmd.OutOrStdout(), d)
		},
	}
	o.flags(cmd, true, "text or json")
	return cmd
}

func rollbackCmd() *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "rollback REVISION",
		Short: "Serve the config of an earlier revision again, as a new revision",
		Long: `Roll the accepted config back to an earlier revision: galley makes a new
revision with exactly that revision's objects and serves it at once.

The files on disk are not touched. What each file holds now is "held": galley
does not apply it again, not at the next read and not after a restart, until
the file changes. A file edited after the rollback is validated and accepted
as usual. Fix or revert the files soon, so that disk and mesh agree again
(meshd config diff shows what the rollback undid).`,
		Example: `  meshd config rollback 12`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.checkOutput("text", "json"); err != nil {
				return err
			}
			n, err := parseRev(args[0])
			if err != nil {
				return err
			}
			c := newClient(cmd.Context(), o.admin, time.Minute)
			var res galley.RollbackResult
			if err := c.do(http.MethodPost, "/config/rollback?to="+strconv.FormatUint(n, 10), &res); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if o.output == "json" {
				return writeJSON(w, &res)
			}
			if res.Added+res.Updated+res.Removed == 0 {
				fmt.Fprintf(w, "revision %d already serves the config of revision %d; nothing to do\n", res.Revision, res.To)
			} else {
				fmt.Fprintf(w, "rolled back to revision %d as revision %d: %d added, %d updated, %d removed\n", res.To, res.Revision, res.Added, res.Updated, res.Removed)
				fmt.Fprintln(w, "the current content of every file is held until it changes")
			}
			for _, f := range res.Findings {
				fmt.Fprintln(w, f.String())
			}
			return nil
		},
	}
	o.flags(cmd, false, "text or json")
	return cmd
}

func parseRev(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("revision %q: want a positive number", s)
	}
	return n, nil
}

// client calls galley's admin API.
type client struct {
	ctx context.Context
	c   *admin.Client
}

func newClient(ctx context.Context, addr string, timeout time.Duration) *client {
	if ctx == nil {
		ctx = context.Background()
	}
	return &client{ctx: ctx, c: admin.NewClient(addr, timeout, "galley").WithHint("for a stopped one use --data-dir")}
}

func (c *client) do(method, path string, out any) error {
	return c.c.Do(c.ctx, method, path, nil, out)
}

func (c *client) Revisions(limit int) (*galley.RevisionList, error) {
	var out galley.RevisionList
	err := c.do(http.MethodGet, "/config/revisions?limit="+strconv.Itoa(limit), &out)
	return &out, err
}

func (c *client) Revision(n uint64, objects bool) (*galley.RevisionDetail, error) {
	var out galley.RevisionDetail
	err := c.do(http.MethodGet, fmt.Sprintf("/config/revisions/%d?objects=%t", n, objects), &out)
	return &out, err
}

func (c *client) Diff(from, to uint64) (*galley.Diff, error) {
	q := url.Values{}
	if from > 0 {
		q.Set("from", strconv.FormatUint(from, 10))
	}
	if to > 0 {
		q.Set("to", strconv.FormatUint(to, 10))
	}
	var out galley.Diff
	err := c.do(http.MethodGet, "/config/diff?"+q.Encode(), &out)
	return &out, err
}

func writeJSON(w io.Writer, v any) error { return admin.PrintJSON(w, v) }

func reason(r galley.RevisionInfo) string {
	if r.Reason == galley.ReasonRollback {
		return fmt.Sprintf("rollback to %d", r.RollbackTo)
	}
	return r.Reason
}

func changes(r galley.RevisionInfo) string {
	var parts []string
	for _, p := range []struct {
		sign string
		n    int
	}{{"+", r.Added}, {"~", r.Updated}, {"-", r.Removed}} {
		if p.n > 0 {
			parts = append(parts, p.sign+strconv.Itoa(p.n))
		}
	}
	return strings.Join(parts, " ")
}

// writeList prints the revisions as a table, with a PROXIES column when
// counts is not nil.
func writeList(w io.Writer, list *galley.RevisionList, counts map[uint64]int) error {
	if len(list.Revisions) == 0 {
		_, err := fmt.Fprintln(w, "no accepted revisions yet")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	proxiesHead := ""
	if counts != nil {
		proxiesHead = "PROXIES\t"
	}
	fmt.Fprintf(tw, "REVISION\t%sTIME\tREASON\tOBJECTS\tCHANGES\tORIGINS\n", proxiesHead)
	for _, r := range list.Revisions {
		cur := ""
		if r.Revision == list.Current {
			cur = " *"
		}
		proxies := ""
		if counts != nil {
			proxies = strconv.Itoa(counts[r.Revision]) + "\t"
		}
		fmt.Fprintf(tw, "%d%s\t%s%s\t%s\t%d\t%s\t%s\n", r.Revision, cur, proxies, r.Time.Local().Format(time.DateTime), reason(r), r.Objects, changes(r), trim(r.Origins, 3))
	}
	return tw.Flush()
}

func trim(s []string, n int) string {
	if len(s) <= n {
		return strings.Join(s, ", ")
	}
	return strings.Join(s[:n], ", ") + fmt.Sprintf(", ... (%d more)", len(s)-n)
}

func writeRevision(w io.Writer, r *galley.RevisionDetail) error {
	var b strings.Builder
	fmt.Fprintf(&b, "revision %d  %s  %s\n", r.Revision, r.Time.Local().Format(time.DateTime), reason(r.RevisionInfo))
	fmt.Fprintf(&b, "objects %d  digest %s\n", r.Objects, r.Digest)
	for _, c := range r.Changes {
		sign := map[string]string{galley.OpAdd: "+", galley.OpUpdate: "~", galley.OpRemove: "-"}[c.Op]
		fmt.Fprintf(&b, "%s %s  (%s)\n", sign, c.Key, c.Origin)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// toYAML renders an object's canonical JSON as YAML.
func toYAML(raw json.RawMessage) (string, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", err
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return b.String(), enc.Close()
}

func writeYAML(w io.Writer, objs []galley.ObjectView) error {
	var b strings.Builder
	for i, o := range objs {
		if i > 0 {
			b.WriteString("---\n")
		}
		y, err := toYAML(o.Object)
		if err != nil {
			return fmt.Errorf("%s: %w", o.Key, err)
		}
		fmt.Fprintf(&b, "# %s (%s)\n%s", o.Key, where(o), y)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func where(o galley.ObjectView) string {
	if o.File != "" && o.Line > 0 {
		return fmt.Sprintf("%s:%d", o.File, o.Line)
	}
	return o.Origin
}

// lines splits text into lines that keep their newline.
func lines(text string) []string {
	if text == "" {
		return nil
	}
	return difflib.SplitLines(strings.TrimSuffix(text, "\n"))
}

func writeDiff(w io.Writer, d *galley.Diff) error {
	var b strings.Builder
	fmt.Fprintf(&b, "revision %d -> %d: %d added, %d changed, %d removed\n", d.From, d.To, len(d.Added), len(d.Changed), len(d.Removed))
	type item struct {
		key      api.Key
		from, to *galley.ObjectView
	}
	var items []item
	for i := range d.Removed {
		items = append(items, item{key: d.Removed[i].Key, from: &d.Removed[i]})
	}
	for i := range d.Changed {
		items = append(items, item{key: d.Changed[i].Key, from: &d.Changed[i].From, to: &d.Changed[i].To})
	}
	for i := range d.Added {
		items = append(items, item{key: d.Added[i].Key, to: &d.Added[i]})
	}
	for _, it := range items {
		var a, c string
		fromName, toName := "/dev/null", "/dev/null"
		if it.from != nil {
			y, err := toYAML(it.from.Object)
			if err != nil {
				return err
			}
			a, fromName = y, fmt.Sprintf("%s@%d (%s)", it.key, d.From, where(*it.from))
		}
		if it.to != nil {
			y, err := toYAML(it.to.Object)
			if err != nil {
				return err
			}
			c, toName = y, fmt.Sprintf("%s@%d (%s)", it.key, d.To, where(*it.to))
		}
		text, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
			A: lines(a), B: lines(c),
			FromFile: fromName, ToFile: toName, Context: 3,
		})
		if err != nil {
			return err
		}
		b.WriteString(text)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
