// Package validatecmd implements `meshd validate`: check Istio config files
// offline, without a running server, and report findings as text or JSON.
package validatecmd

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/galley"
	"github.com/meshd/meshd/modules/galley/api"

	"github.com/meshd/meshd/core/admin"
)

// Exit codes of meshd validate.
const (
	ExitClean    = 0 // no errors (warnings allowed unless --strict)
	ExitErrors   = 1 // at least one error
	ExitWarnings = 2 // warnings only, with --strict
)

// ExitError ends `meshd validate` with a non-zero exit code. Findings are
// already printed when it is returned, so its message is empty unless
// something else went wrong; the caller prints a non-empty message and exits
// with ExitCode, and never needs os.Exit inside the command.
type ExitError = core.ExitError

// options are the command's flags.
type options struct {
	output        string
	strict        bool
	namespace     string
	rootNamespace string
	clusterDomain string
	mtlsMode      string
	load          MeshLoader
}

// MeshLoader returns the mesh settings of a meshd config: the file given
// with -c (or MESHD_CONFIG) and the MESHD_MESH_* environment, over the
// defaults. The CLI supplies it, since reading meshd.yaml is its job.
type MeshLoader func(cmd *cobra.Command) (core.MeshConfig, error)

// NewValidateCommand returns the `validate` command with Istio's mesh
// defaults and no config file.
func NewValidateCommand() *cobra.Command { return NewValidateCommandWithMesh(nil) }

// NewValidateCommandWithMesh returns the `validate` command. With load,
// it takes -c/--config, and the mesh section of that config (or of
// MESHD_CONFIG) supplies the root namespace, cluster domain and default mTLS
// mode, so `meshd validate` judges files the way `meshd serve` with that
// config does; the flags still override it, for offline use.
func NewValidateCommandWithMesh(load MeshLoader) *cobra.Command {
	mesh := core.DefaultMeshConfig()
	o := &options{load: load}
	cmd := &cobra.Command{
		Use:   "validate FILE|DIR...",
		Short: "Check Istio config files offline: schema, field rules and whole-set analysis",
		Long: `Validate decodes Istio config (VirtualService, DestinationRule, Gateway,
ServiceEntry, WorkloadEntry, WorkloadGroup, Sidecar, PeerAuthentication,
AuthorizationPolicy, RequestAuthentication) from files and directory trees of
.yaml, .yml and .json files ("-" reads standard input), checks every object
with Istio's field rules, and analyzes the set as a whole: dangling hosts,
subsets, gateways and delegates, conflicting VirtualServices and
DestinationRules, shadowed routes, mTLS contradictions and selectors that
match nothing. It needs no running server.

Exit status: 0 when there are no errors, 1 when there are errors, 2 when there
are only warnings and --strict is given.`,
		Example: `  meshd validate examples/bookstore
  meshd validate -o json --strict config/ extra.yaml`,
		Args: cobra.MinimumNArgs(1),
		// Findings are the output; usage text after them would only bury
		// them, and the caller prints the error.
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.meshDefaults(cmd); err != nil {
				return &ExitError{Code: ExitErrors, Err: fmt.Errorf("validate: %w", err)}
			}
			return run(cmd.InOrStdin(), cmd.OutOrStdout(), args, o)
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&o.output, "output", "o", "text", "output format: text or json")
	fs.BoolVar(&o.strict, "strict", false, "exit 2 when there are warnings but no errors")
	fs.StringVarP(&o.namespace, "namespace", "n", api.DefaultNamespace, "namespace of objects that do not name one")
	// With a config, the mesh flags default to its mesh section; their
	// own default shows "" so that the help says where it comes from.
	meshFlag := func(dst *string, name, def, usage string) {
		if load == nil {
			fs.StringVar(dst, name, def, usage)
			return
		}
		fs.StringVar(dst, name, "", usage+" (default: the meshd config's mesh section, else "+def+")")
	}
	if load != nil {
		fs.StringP("config", "c", "", "meshd config file whose mesh section sets the defaults of the flags below; env MESHD_CONFIG")
	}
	meshFlag(&o.rootNamespace, "root-namespace", mesh.RootNamespace, "namespace that holds mesh-wide policies")
	meshFlag(&o.clusterDomain, "cluster-domain", mesh.ClusterDomain, "DNS suffix short host names expand with")
	meshFlag(&o.mtlsMode, "default-mtls-mode", mesh.DefaultMTLSMode, "mTLS mode where no PeerAuthentication applies: STRICT, PERMISSIVE or DISABLE")
	return cmd
}

// meshDefaults fills the mesh flags the user left unset from the meshd
// config.
func (o *options) meshDefaults(cmd *cobra.Command) error {
	if o.load == nil {
		return nil
	}
	mesh, err := o.load(cmd)
	if err != nil {
		return err
	}
	fs := cmd.Flags()
	for _, f := range []struct {
		flag string
		dst  *string
		v    string
	}{
		{"root-namespace", &o.rootNamespace, mesh.RootNamespace},
		{"cluster-domain", &o.clusterDomain, mesh.ClusterDomain},
		{"default-mtls-mode", &o.mtlsMode, mesh.DefaultMTLSMode},
	} {
		if !fs.Changed(f.flag) {
			*f.dst = f.v
		}
	}
	return nil
}

func run(stdin io.Reader, stdout io.Writer, args []string, o *options) error {
	if o.output != "text" && o.output != "json" {
		return &ExitError{Code: ExitErrors, Err: fmt.Errorf("validate: unknown output format %q; use text or json", o.output)}
	}
	mode := strings.ToUpper(o.mtlsMode)
	switch mode {
	case core.MTLSStrict, core.MTLSPermissive, core.MTLSDisable:
	default:
		return &ExitError{Code: ExitErrors, Err: fmt.Errorf("validate: --default-mtls-mode %q must be STRICT, PERMISSIVE or DISABLE", o.mtlsMode)}
	}
	mesh := core.DefaultMeshConfig()
	mesh.ClusterDomain = o.clusterDomain
	mesh.DefaultMTLSMode = mode
	mesh.RootNamespace = o.rootNamespace
	checker := galley.New(galley.Options{
		Mesh:             mesh,
		DefaultNamespace: o.namespace,
		RootNamespace:    o.rootNamespace,
	})

	res, err := check(checker, stdin, args)
	if err != nil {
		return &ExitError{Code: ExitErrors, Err: fmt.Errorf("validate: %w", err)}
	}
	counts := res.Counts()
	if o.output == "json" {
		err = writeJSON(stdout, res, counts)
	} else {
		err = writeText(stdout, res, counts)
	}
	if err != nil {
		return &ExitError{Code: ExitErrors, Err: fmt.Errorf("validate: write output: %w", err)}
	}
	switch {
	case counts.Errors > 0:
		return &ExitError{Code: ExitErrors}
	case counts.Warnings > 0 && o.strict:
		return &ExitError{Code: ExitWarnings}
	}
	return nil
}

// stdinName names standard input in findings.
const stdinName = "<stdin>"

// check decodes and checks the paths, reading "-" from stdin. Files and
// stdin are checked as one set so references between them resolve.
func check(c *galley.Checker, stdin io.Reader, args []string) (galley.Result, error) {
	var paths []string
	var stdinData []byte
	useStdin := false
	for _, a := range args {
		if a == "-" {
			if useStdin {
				continue
			}
			b, err := io.ReadAll(stdin)
			if err != nil {
				return galley.Result{}, fmt.Errorf("read standard input: %w", err)
			}
			stdinData, useStdin = b, true
			continue
		}
		paths = append(paths, a)
	}
	if !useStdin {
		return c.CheckPaths(paths...), nil
	}
	return c.CheckSources(paths, map[string][]byte{stdinName: stdinData}), nil
}

// summary renders the closing line of text output.
func summary(res galley.Result, counts api.Counts) string {
	objects := fmt.Sprintf("%d %s", len(res.Objects), plural(len(res.Objects), "object"))
	if n := len(res.Rejected); n > 0 {
		objects += fmt.Sprintf(" (%d more rejected)", n)
	}
	objects += fmt.Sprintf(" in %d %s", len(res.Files), plural(len(res.Files), "file"))
	if len(res.Findings) == 0 {
		return objects + ": no problems found"
	}
	return fmt.Sprintf("%d %s, %d %s, %d %s; %s",
		counts.Errors, plural(counts.Errors, "error"),
		counts.Warnings, plural(counts.Warnings, "warning"),
		counts.Infos, plural(counts.Infos, "info"),
		objects)
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

func writeText(w io.Writer, res galley.Result, counts api.Counts) error {
	var b strings.Builder
	for _, f := range res.Findings {
		b.WriteString(f.String())
		b.WriteByte('\n')
	}
	b.WriteString(summary(res, counts))
	b.WriteByte('\n')
	_, err := io.WriteString(w, b.String())
	return err
}

// jsonReport is the -o json document.
type jsonReport struct {
	Files    []string      `json:"files"`
	Objects  int           `json:"objects"`
	Rejected int           `json:"rejected"`
	Summary  api.Counts    `json:"summary"`
	Findings []api.Finding `json:"findings"`
}

func writeJSON(w io.Writer, res galley.Result, counts api.Counts) error {
	rep := jsonReport{
		Files:    res.Files,
		Objects:  len(res.Objects),
		Rejected: len(res.Rejected),
		Summary:  counts,
		Findings: res.Findings,
	}
	if rep.Files == nil {
		rep.Files = []string{}
	}
	if rep.Findings == nil {
		rep.Findings = []api.Finding{}
	}
	if err := admin.PrintJSON(w, rep); err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	return nil
}
