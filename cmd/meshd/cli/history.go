package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/xds/statuscmd"
)

// proxiesTimeout bounds the extra call history makes for proxy counts: the
// list must not wait long on an xds module that does not answer.
const proxiesTimeout = 5 * time.Second

// withProxyCounts makes `meshd config history` (the list, not one
// revision) show how many connected proxies run each revision, read from
// the running meshd's /debug/syncz: a PROXIES column in text, a "proxies"
// field per revision in JSON. Galley's command knows nothing of xds, and
// galley must not depend on it; the two meet here, in the binary that has
// both. With --data-dir (meshd stopped), or when the status cannot be read
// (xds off, meshd not running), history prints what it always did.
func withProxyCounts(cmds []*cobra.Command) []*cobra.Command {
	for _, c := range cmds {
		if c.Name() == "history" && c.RunE != nil {
			wrapHistory(c)
		}
	}
	return cmds
}

func wrapHistory(cmd *cobra.Command) {
	run := cmd.RunE
	cmd.Long += `

Listing revisions of a running meshd also shows PROXIES: how many connected
proxies run each revision for every resource type (meshd status shows each
proxy's revision). It is left out when the proxy status cannot be read.`
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		f := cmd.Flags()
		output, _ := f.GetString("output")
		dataDir, _ := f.GetString("data-dir")
		addr, _ := f.GetString("admin")
		if len(args) > 0 || dataDir != "" || (output != "text" && output != "json") {
			return run(cmd, args)
		}
		out := cmd.OutOrStdout()
		var buf bytes.Buffer
		cmd.SetOut(&buf)
		err := run(cmd, args)
		cmd.SetOut(out)
		if err != nil {
			_, _ = out.Write(buf.Bytes())
			return err
		}
		ctx := cmd.Context()
		if ctx == nil {
			ctx = context.Background()
		}
		statuses, err := statuscmd.Fetch(ctx, addr, proxiesTimeout)
		if err != nil {
			_, err = out.Write(buf.Bytes())
			return err
		}
		counts := statuscmd.ProxiesOn(statuses)
		if output == "json" {
			return addProxiesJSON(out, buf.Bytes(), counts)
		}
		_, err = io.WriteString(out, addProxiesColumn(buf.String(), counts))
		return err
	}
}

// addProxiesColumn inserts a PROXIES column after REVISION into history's
// table. Its cells are padded to one width, so the next column starts
// where TIME starts in the header. Anything else (no revisions yet) is
// returned as it is.
func addProxiesColumn(table string, counts map[uint64]int) string {
	lines := strings.SplitAfter(table, "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "REVISION ") {
		return table
	}
	at := strings.Index(lines[0], "TIME")
	if at < 0 {
		return table
	}
	cells := make([]string, len(lines))
	width := len("PROXIES")
	for i, l := range lines {
		switch {
		case i == 0:
			cells[i] = "PROXIES"
		case len(l) > at:
			rev, _, _ := strings.Cut(strings.TrimSpace(l[:at]), " ")
			n, err := strconv.ParseUint(rev, 10, 64)
			if err != nil {
				return table
			}
			cells[i] = strconv.Itoa(counts[n])
		}
		width = max(width, len(cells[i]))
	}
	var b strings.Builder
	for i, l := range lines {
		if len(l) <= at {
			b.WriteString(l)
			continue
		}
		fmt.Fprintf(&b, "%s%-*s%s", l[:at], width+2, cells[i], l[at:])
	}
	return b.String()
}

// addProxiesJSON adds "proxies" to every revision of history's JSON,
// keeping every other field as galley wrote it.
func addProxiesJSON(w io.Writer, raw []byte, counts map[uint64]int) error {
	var list map[string]json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return fmt.Errorf("read revision list: %w", err)
	}
	var revs []json.RawMessage
	if err := json.Unmarshal(list["revisions"], &revs); err != nil {
		return fmt.Errorf("read revision list: %w", err)
	}
	for i, r := range revs {
		var head struct {
			Revision uint64 `json:"revision"`
		}
		if err := json.Unmarshal(r, &head); err != nil {
			return fmt.Errorf("read revision list: %w", err)
		}
		obj := bytes.TrimSpace(r)
		if len(obj) < 2 || obj[len(obj)-1] != '}' {
			return fmt.Errorf("read revision list: revision %d is not an object", head.Revision)
		}
		sep := ","
		if len(bytes.TrimSpace(obj[1:len(obj)-1])) == 0 {
			sep = ""
		}
		revs[i] = fmt.Appendf(bytes.Clone(obj[:len(obj)-1]), `%s"proxies":%d}`, sep, counts[head.Revision])
	}
	b, err := json.Marshal(revs)
	if err != nil {
		return err
	}
	list["revisions"] = b
	b, err = json.Marshal(list)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err = w.Write(out.Bytes())
	return err
}
