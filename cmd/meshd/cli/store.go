package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/admin"
	"github.com/meshd/meshd/core/store"
	"github.com/spf13/cobra"
)

// Exit codes of `meshd store`: 0 done, exitFailure when it could not be
// done (meshd running, admin API down, I/O), exitUsage for a bad command
// line or a file that is not a usable snapshot.
const (
	exitFailure = 1
	exitUsage   = 2
)

func usageErr(format string, args ...any) error {
	return &core.ExitError{Code: exitUsage, Err: fmt.Errorf(format, args...)}
}

func failure(err error) error {
	return &core.ExitError{Code: exitFailure, Err: err}
}

// snapshotErr sorts a VerifySnapshot or Restore error into bad input (the
// file is missing, not a snapshot, or from a newer meshd) and failure.
func snapshotErr(err error) error {
	if errors.Is(err, store.ErrInvalidSnapshot) || errors.Is(err, store.ErrNewerSchema) || errors.Is(err, fs.ErrNotExist) {
		return &core.ExitError{Code: exitUsage, Err: err}
	}
	return failure(err)
}

// exactArgs is cobra.ExactArgs with the usage exit code.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErr("want %s, got %d arguments", what, len(args))
		}
		return nil
	}
}

func newStoreCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Back up and restore the store (meshd.db): snapshot, inspect, restore",
		Long: `Back up and restore meshd.db, which holds the CA root key, issued
certificate records, join tokens and every accepted config revision.

Do not copy meshd.db while meshd runs: the copy can be torn. Ask the running
meshd for a snapshot instead (meshd store snapshot); it is consistent while
meshd keeps writing. Restore with meshd stopped (meshd store restore).

Snapshots contain the CA root key: keep them as private as the data dir.

Exit status: 0 done, 1 failed, 2 bad usage or an unusable snapshot file.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErr("unknown command %q for \"meshd store\"; want snapshot, inspect or restore", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErr("%w", err) })
	cmd.AddCommand(storeSnapshotCmd(), storeInspectCmd(), storeRestoreCmd())
	return cmd
}

func storeSnapshotCmd() *cobra.Command {
	var (
		addr    string
		offline bool
		dataDir string
		out     string
		format  string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Write a consistent snapshot of the store: by the running meshd, or with --offline from a stopped one",
		Long: `Write a consistent snapshot of the store.

By default the running meshd (--admin) writes it into <dataDir>/snapshots
(mode 0700; files 0600, named meshd-<UTC time>.db) and keeps the newest
store.snapshots.keep of them. The snapshot is not sent over the admin API:
it holds the CA key. The answer says where it is, its size and SHA-256.
Copy it off the machine from there.

With --offline --data-dir DIR --file FILE it reads the store of a stopped meshd
directly and writes FILE (0600, atomically). That fails while a meshd runs
on DIR.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "text" && format != "json" {
				return usageErr("-o %q: want text or json", format)
			}
			if !offline {
				if out != "" || dataDir != "" {
					return usageErr("--file and --data-dir need --offline: a running meshd writes its snapshots into <dataDir>/snapshots; copy one from there")
				}
				return snapshotOnline(cmd, addr, timeout, format)
			}
			if dataDir == "" || out == "" {
				return usageErr("--offline needs --data-dir DIR (the stopped meshd's data dir) and --file FILE")
			}
			return snapshotOffline(cmd, dataDir, out, format)
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "admin", "127.0.0.1:15014", "admin address of the running meshd")
	f.DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for the running meshd to write the snapshot")
	f.BoolVar(&offline, "offline", false, "read the store of a stopped meshd directly instead of asking a running one")
	f.StringVar(&dataDir, "data-dir", "", "with --offline: the data dir of the stopped meshd")
	f.StringVar(&out, "file", "", "with --offline: the snapshot file to write")
	f.StringVarP(&format, "output", "o", "text", "output format: text or json")
	return cmd
}

func snapshotOnline(cmd *cobra.Command, addr string, timeout time.Duration, format string) error {
	c := admin.NewClient(addr, timeout, "").WithHint("for a stopped one use --offline --data-dir DIR --file FILE")
	var resp core.SnapshotResponse
	if err := c.Do(cmd.Context(), "POST", "/store/snapshot", nil, &resp); err != nil {
		return failure(fmt.Errorf("store snapshot: %w", err))
	}
	return printResult(cmd.OutOrStdout(), format, resp, func(w io.Writer) {
		printSnapshotFile(w, &resp.SnapshotFile)
		if n := len(resp.Removed); n > 0 {
			fmt.Fprintf(w, "removed:  %d older snapshot(s), keeping store.snapshots.keep\n", n)
		}
	})
}

func snapshotOffline(cmd *cobra.Command, dataDir, out, format string) error {
	if _, err := os.Stat(filepath.Join(dataDir, store.FileName)); err != nil {
		return usageErr("no meshd store in %s: %w", dataDir, err)
	}
	// Read-only: the snapshot leaves the stopped meshd's store as it is,
	// and the shared lock still fails while a meshd holds the data dir.
	st, err := store.Open(dataDir, store.Options{ReadOnly: true, LockTimeout: 500 * time.Millisecond})
	if errors.Is(err, store.ErrLocked) {
		return failure(fmt.Errorf("%w; meshd is running, so drop --offline to ask it for a snapshot", err))
	}
	if err != nil {
		return failure(err)
	}
	defer st.Close()
	sf, err := st.WriteSnapshotFile(out)
	if err != nil {
		return failure(err)
	}
	// A damaged store gives a damaged copy: say so now, not at restore.
	if _, err := store.VerifySnapshot(out); errors.Is(err, store.ErrInvalidSnapshot) {
		return failure(fmt.Errorf("snapshot written to %s, but it does not verify (is the store damaged?): %w", out, err))
	}
	return printResult(cmd.OutOrStdout(), format, sf, func(w io.Writer) { printSnapshotFile(w, sf) })
}

func printSnapshotFile(w io.Writer, sf *store.SnapshotFile) {
	fmt.Fprintf(w, "snapshot: %s\nbytes:    %d\nsha256:   %s\nschema:   %d\n", sf.Path, sf.Bytes, sf.SHA256, sf.Schema)
}

func printResult(w io.Writer, format string, v any, text func(io.Writer)) error {
	if format == "json" {
		return admin.PrintJSON(w, v)
	}
	text(w)
	return nil
}

func storeInspectCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Verify a snapshot file and summarise it: schema, creation time, module trees and their key counts",
		Long: `Verify a snapshot file offline and summarise it.

The file must be a complete bbolt file that passes bbolt's consistency check,
with a store schema this meshd knows. Compare the SHA-256 with the one
'meshd store snapshot' printed to check a copy.`,
		Args: exactArgs(1, "one snapshot FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return usageErr("--output %q: want text or json", output)
			}
			sum, err := store.VerifySnapshot(args[0])
			if err != nil {
				return snapshotErr(err)
			}
			return printResult(cmd.OutOrStdout(), output, sum, func(w io.Writer) { printSummary(w, sum) })
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

func printSummary(w io.Writer, s *store.SnapshotSummary) {
	created := "-"
	if !s.Created.IsZero() {
		created = s.Created.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(w, "snapshot: %s\nbytes:    %d\nsha256:   %s\nschema:   %d\ncreated:  %s (when the store was first created)\n\n",
		s.Path, s.Bytes, s.SHA256, s.Schema, created)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MODULE\tSCHEMA\tKEYS")
	for _, m := range s.Modules {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", m.ID, m.Schema, m.Keys)
	}
	tw.Flush()
}

func storeRestoreCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "restore FILE --data-dir DIR",
		Short: "Make a snapshot the store of a stopped meshd; the current meshd.db is kept beside it",
		Long: `Make a snapshot the store of a stopped meshd.

The snapshot is verified, copied into DIR as meshd.db (0600) by an atomic
rename, and the current meshd.db, if any, is kept as
meshd.db.before-restore-<UTC time>. It refuses while a meshd runs on DIR.

CA keys encrypted with modules.citadel.keyEncryptionKeyFile need that same
key file on the restored meshd.`,
		Args: exactArgs(1, "one snapshot FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dataDir == "" {
				return usageErr("--data-dir is required: the data dir of the stopped meshd to restore into")
			}
			res, err := store.Restore(dataDir, args[0], store.RestoreOptions{})
			if err != nil {
				return snapshotErr(err)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "restored %s from %s (sha256 %s, schema %d)\n", res.Path, args[0], res.Snapshot.SHA256, res.Snapshot.Schema)
			if res.Previous != "" {
				fmt.Fprintf(w, "the previous store is kept as %s\n", res.Previous)
			}
			fmt.Fprintf(w, "start meshd with dataDir %s to use it\n", dataDir)
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "data dir of the stopped meshd (required)")
	return cmd
}
