// Package cacmd is the `meshd ca` command: inspect and operate citadel, the
// certificate authority.
//
// Every subcommand talks to a running meshd through its admin API
// (--admin, default 127.0.0.1:15014), or, with --data-dir, opens the store
// of a stopped meshd directly. The store's file lock makes --data-dir fail
// clearly while meshd runs, so the two can never race. `meshd ca verify`
// needs neither: it checks a chain against a bundle file.
package cacmd

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshd/meshd/core/admin"
	"github.com/meshd/meshd/modules/citadel"
	"github.com/meshd/meshd/modules/citadel/ca"
	"github.com/spf13/cobra"
)

type options struct {
	admin   string
	dataDir string
	output  string
}

// NewCommand returns `meshd ca` and its subcommands.
func NewCommand() *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Inspect and operate the certificate authority: status, rotation, join tokens, issued certificates",
		Long: `Inspect and operate citadel, meshd's certificate authority.

The commands use the admin API of a running meshd (--admin), or the store of
a stopped one (--data-dir). The admin API can mint join tokens: keep it on
loopback.`,
		Args: cobra.NoArgs,
	}
	f := cmd.PersistentFlags()
	f.StringVar(&o.admin, "admin", "127.0.0.1:15014", "admin address of the running meshd")
	f.StringVar(&o.dataDir, "data-dir", "", "open the store in this data dir instead of calling the admin API (meshd must be stopped)")
	f.StringVarP(&o.output, "output", "o", "text", "output format: text or json")
	cmd.AddCommand(statusCmd(o), rotateCmd(o), rootsCmd(o), tokenCmd(o), certsCmd(o), verifyCmd())
	return cmd
}

// operations picks the backend: the store with --data-dir, else the admin
// API.
func (o *options) operations() (citadel.Operations, func(), error) {
	if o.output != "text" && o.output != "json" {
		return nil, nil, fmt.Errorf("--output %q: want text or json", o.output)
	}
	if o.dataDir != "" {
		off, err := citadel.OpenOffline(o.dataDir)
		if err != nil {
			return nil, nil, err
		}
		return off, func() { off.Close() }, nil
	}
	return newAdminClient(o.admin), func() {}, nil
}

// run runs f with the backend and prints its result as JSON or with text.
func (o *options) run(cmd *cobra.Command, f func(context.Context, citadel.Operations) (any, error), text func(io.Writer, any)) error {
	ops, done, err := o.operations()
	if err != nil {
		return err
	}
	defer done()
	v, err := f(cmd.Context(), ops)
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	if o.output == "json" {
		if b, ok := v.([]byte); ok {
			return json.NewEncoder(w).Encode(string(b))
		}
		return admin.PrintJSON(w, v)
	}
	text(w, v)
	return nil
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func statusCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the CA: mode, rotation phase, trusted roots and their expiry, proxies trusting each",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, func(ctx context.Context, ops citadel.Operations) (any, error) { return ops.Status(ctx) }, printStatus)
		},
	}
}

func printStatus(w io.Writer, v any) {
	s := v.(*citadel.Status)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "mode:\t%s\n", s.Mode)
	fmt.Fprintf(tw, "trust domain:\t%s\n", s.TrustDomain)
	phase := fmt.Sprintf("%s since %s", s.Phase, fmtTime(s.Since))
	if s.Reason != "" {
		phase += " (" + s.Reason + ")"
	}
	if s.Force {
		phase += ", forced"
	}
	fmt.Fprintf(tw, "rotation phase:\t%s\n", phase)
	if s.Requested {
		fmt.Fprintf(tw, "rotation requested:\tyes, starts when meshd starts\n")
	}
	if s.Phase == citadel.PhaseStaged {
		fmt.Fprintf(tw, "switching by:\t%s at the latest\n", fmtTime(s.AckDeadline))
	}
	if s.PendingOldLeaves != nil {
		fmt.Fprintf(tw, "old-root leaves still live:\t%d\n", *s.PendingOldLeaves)
	}
	fmt.Fprintf(tw, "bundle version:\t%d\n", s.BundleVersion)
	if !s.LastRotation.IsZero() {
		fmt.Fprintf(tw, "last rotation:\t%s\n", fmtTime(s.LastRotation))
	}
	if s.Proxies != nil {
		fmt.Fprintf(tw, "proxies (SDS):\t%d connected, %d on the current bundle, %d not acknowledged yet\n",
			s.Proxies.Connected, s.Proxies.Current, s.Proxies.Unknown)
	} else {
		fmt.Fprintf(tw, "proxies (SDS):\tunknown (read from the store; meshd is not running)\n")
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROOT\tROLE\tSIGNS\tNOT AFTER\tPROXIES\tSUBJECT")
	for _, r := range s.Roots {
		proxies := "-"
		if r.Proxies != nil {
			proxies = fmt.Sprint(*r.Proxies)
		}
		signs := "no"
		if r.Signing {
			signs = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Role, signs, fmtTime(r.NotAfter), proxies, r.Subject)
	}
	tw.Flush()
}

func rotateCmd(o *options) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Start a root rotation (self-signed root), or with --force skip the waits of a running one",
		Long: `Start a rotation of the self-signed root. The next root joins the trust
bundle; once connected proxies acknowledge it (or modules.citadel.rotation.ackTimeout
passes) it signs; once no unrenewed leaf of the old root is left, the old root
leaves the bundle. Run again with --force to skip the remaining waits.

Against a stopped meshd (--data-dir) the request is stored and starts when meshd
starts. A plugged-in CA is rotated through its files (docs/ca.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, func(ctx context.Context, ops citadel.Operations) (any, error) { return ops.Rotate(ctx, force) }, printStatus)
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "skip the waits for proxy acknowledgements and leaf renewal (proxies or workloads not yet on the new root may fail)")
	return cmd
}

func rootsCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "roots",
		Short: "Print the trust bundle (every trusted root, PEM)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, func(ctx context.Context, ops citadel.Operations) (any, error) { return ops.Roots(ctx) },
				func(w io.Writer, v any) { w.Write(v.([]byte)) })
		},
	}
}

func tokenCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage join tokens, with which a VM gets its first certificate", Args: cobra.NoArgs}
	var req citadel.TokenRequest
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a join token bound to one identity; its secret is shown only now",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if req.Identity == "" {
				return errors.New("--identity is required (spiffe://<td>/ns/<ns>/sa/<sa>, ns/<ns>/sa/<sa> or <ns>/<sa>)")
			}
			return o.run(cmd, func(ctx context.Context, ops citadel.Operations) (any, error) { return ops.CreateToken(ctx, req) },
				func(w io.Writer, v any) {
					t := v.(*citadel.NewToken)
					fmt.Fprintf(w, "%s\n\nid:        %s\nidentity:  %s\nexpires:   %s\nuses:      %s\n\nThe token above is shown only once; meshd keeps only its hash.\n",
						t.Token, t.ID, t.Identity, fmtTime(t.Expires), uses(t.MaxUses))
				})
		},
	}
	create.Flags().StringVar(&req.Identity, "identity", "", "identity the token may obtain")
	create.Flags().DurationVar(&req.TTL, "ttl", 24*time.Hour, "how long the token is valid")
	create.Flags().IntVar(&req.Uses, "uses", 1, "certificates the token may obtain; 0 for any number until it expires")

	var all bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List join tokens (active ones; --all for expired, used-up and revoked too)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, func(ctx context.Context, ops citadel.Operations) (any, error) { return ops.ListTokens(ctx, all) },
				func(w io.Writer, v any) {
					tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "ID\tIDENTITY\tSTATE\tUSED\tEXPIRES\tLAST USED")
					for _, t := range v.([]citadel.TokenInfo) {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%s\t%s\t%s\n", t.ID, t.Identity, t.State, t.Used, uses(t.MaxUses), fmtTime(t.Expires), fmtTime(t.LastUsed))
					}
					tw.Flush()
				})
		},
	}
	list.Flags().BoolVar(&all, "all", false, "include tokens that can no longer be used")

	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a join token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, _, _ := strings.Cut(args[0], ".") // accept the whole token too
			return o.run(cmd, func(ctx context.Context, ops citadel.Operations) (any, error) {
				return map[string]string{"revoked": id}, ops.RevokeToken(ctx, id)
			}, func(w io.Writer, _ any) { fmt.Fprintf(w, "revoked %s\n", id) })
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func uses(n int) string {
	if n == 0 {
		return "unlimited"
	}
	return fmt.Sprint(n)
}

func certsCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "certs", Short: "Inspect the ledger of issued certificates", Args: cobra.NoArgs}
	var f citadel.CertFilter
	list := &cobra.Command{
		Use:   "list",
		Short: "List issued certificates, newest first (unexpired ones; --all for every record kept)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.Identity != "" && !strings.HasPrefix(f.Identity, "spiffe://") && !strings.HasPrefix(f.Identity, "dns:") {
				return fmt.Errorf("--identity %q: give the full SPIFFE ID", f.Identity)
			}
			return o.run(cmd, func(ctx context.Context, ops citadel.Operations) (any, error) { return ops.ListCerts(ctx, f) },
				func(w io.Writer, v any) {
					tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "SERIAL\tIDENTITY\tISSUED\tNOT AFTER\tROOT\tAUTHENTICATOR\tCALLER")
					for _, c := range v.([]citadel.CertInfo) {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Serial, c.Identity, fmtTime(c.Issued), fmtTime(c.NotAfter), c.Root, c.Authenticator, c.Caller)
					}
					tw.Flush()
				})
		},
	}
	list.Flags().StringVar(&f.Identity, "identity", "", "only this identity (full SPIFFE ID)")
	list.Flags().BoolVar(&f.All, "all", false, "include expired certificates")
	list.Flags().IntVar(&f.Limit, "limit", 100, "show at most this many; 0 for all")
	cmd.AddCommand(list)
	return cmd
}

func verifyCmd() *cobra.Command {
	var bundleFile, trustDomain string
	cmd := &cobra.Command{
		Use:   "verify CHAIN.pem",
		Short: "Check a workload certificate chain against a trust bundle and print its SPIFFE ID",
		Long: `Check that the first certificate of CHAIN.pem (followed by any intermediates)
chains to a root of the bundle, is valid now, and is a workload certificate with
exactly one SPIFFE ID. Get the bundle with 'meshd ca roots'.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if bundleFile == "" {
				return errors.New("--bundle is required (get one with 'meshd ca roots > roots.pem')")
			}
			id, leaf, err := verifyFiles(args[0], bundleFile, trustDomain, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "OK %s (serial %032x, expires %s)\n", id, leaf.SerialNumber, fmtTime(leaf.NotAfter))
			return nil
		},
	}
	cmd.Flags().StringVar(&bundleFile, "bundle", "", "trust bundle, PEM")
	cmd.Flags().StringVar(&trustDomain, "trust-domain", "", "also require this trust domain")
	return cmd
}

func verifyFiles(chainFile, bundleFile, trustDomain string, now time.Time) (string, *x509.Certificate, error) {
	chainPEM, err := os.ReadFile(chainFile)
	if err != nil {
		return "", nil, err
	}
	bundlePEM, err := os.ReadFile(bundleFile)
	if err != nil {
		return "", nil, err
	}
	chain, err := ca.ParseCertsPEM(chainPEM)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", chainFile, err)
	}
	roots, err := ca.ParseCertsPEM(bundlePEM)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", bundleFile, err)
	}
	rootPool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	leaf := chain[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: rootPool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return "", nil, fmt.Errorf("chain does not verify: %w", err)
	}
	if leaf.IsCA || len(leaf.URIs) != 1 {
		return "", nil, fmt.Errorf("not a workload certificate: CA=%v, %d URI SANs", leaf.IsCA, len(leaf.URIs))
	}
	id := leaf.URIs[0].String()
	td, _, _, err := ca.ParseSPIFFEID(id)
	if err != nil {
		return "", nil, err
	}
	if trustDomain != "" && td != trustDomain {
		return "", nil, fmt.Errorf("identity %s is not in trust domain %s", id, trustDomain)
	}
	return id, leaf, nil
}
