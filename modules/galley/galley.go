// Package galley is meshd's config ingestion and validation: it decodes
// Istio YAML into istio.io/api types, validates each object with Istio's
// field rules and analyzes the whole set for dangling references and
// conflicts.
//
// This file is the library entry point shared by `meshd validate` and the
// serve-time module: Checker runs decode, validate, analyze and any external
// validators with one set of options and returns sorted findings. The module
// itself (module.go) and its accept/reject engine (engine.go) build on it.
package galley

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/galley/analyze"
	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
	"github.com/meshd/meshd/modules/galley/validate"
)

// Options configure a Checker. The zero value checks offline with Istio's
// defaults.
type Options struct {
	// Mesh holds mesh-wide settings (cluster domain, default mTLS mode);
	// empty fields take core.DefaultMeshConfig values.
	Mesh core.MeshConfig
	// DefaultNamespace is given to objects without metadata.namespace;
	// empty means "default".
	DefaultNamespace string
	// RootNamespace holds mesh-wide policies; empty means istio-system.
	RootNamespace string
	// Hosts, when set, is the service registry that decides which hosts
	// exist (pilot's, at serve time).
	Hosts analyze.HostIndex
	// Workloads, when set, adds run-time workloads to selector checks.
	Workloads analyze.WorkloadIndex
	// Validators run over every checked set besides the built-in rules.
	Validators []NamedValidator
	// ValidatorTimeout bounds each validator call; zero means 10 s.
	ValidatorTimeout time.Duration
	// FailurePolicy says what a validator that fails (returns an error,
	// panics or times out) does to the set: FailClosed (the default)
	// reports a GAL4001 error, FailOpen a GAL4001 warning.
	FailurePolicy FailurePolicy
}

// NamedValidator is an external validator and the name its findings and
// failures are reported under.
type NamedValidator struct {
	Name      string
	Validator api.Validator
}

// FailurePolicy says what a failing validator does to a change.
type FailurePolicy string

// Failure policies.
const (
	// FailClosed rejects the change (GAL4001 error); the module retries
	// it until the validator answers.
	FailClosed FailurePolicy = "fail"
	// FailOpen accepts the change without the validator's checks (GAL4001
	// warning).
	FailOpen FailurePolicy = "ignore"
)

// DefaultValidatorTimeout bounds a validator call when Options leave it 0.
const DefaultValidatorTimeout = 10 * time.Second

// Checker validates config sets. It is safe for concurrent use.
type Checker struct {
	opts Options
	dec  *decode.Decoder
}

// New returns a Checker with opts.
func New(opts Options) *Checker {
	return &Checker{
		opts: opts,
		dec:  decode.New(decode.Options{DefaultNamespace: opts.DefaultNamespace}),
	}
}

// Result is the outcome of checking files: the objects that decoded cleanly,
// those that did not, and every finding, sorted by file and line.
type Result struct {
	Objects []*api.Object
	// Rejected objects failed to decode; they are decoded as far as
	// possible but must not be accepted.
	Rejected []*api.Object
	Findings []api.Finding
	Files    []string
}

// Counts tallies the findings by severity.
func (r Result) Counts() api.Counts {
	return api.CountFindings(r.Findings)
}

// Check validates objs one by one, then analyzes them as a set, and returns
// the findings sorted by file and line.
func (c *Checker) Check(objs []*api.Object) []api.Finding {
	return c.CheckContext(context.Background(), objs)
}

// CheckContext is Check with ctx for the external validators.
func (c *Checker) CheckContext(ctx context.Context, objs []*api.Object) []api.Finding {
	f := validate.Objects(objs)
	f = append(f, analyze.Analyze(objs, c.analyzeOptions())...)
	f = append(f, c.runValidators(ctx, objs)...)
	return api.SortFindings(f)
}

// CheckChange checks a change to part of an accepted set: changed objects
// are validated one by one (unchanged ones passed before), and the whole
// candidate set, unchanged plus changed, is analyzed and given to the
// external validators. rejected are objects of the change that failed to
// decode: they take part in analysis only, so that references to them
// resolve, and analysis findings about them are dropped (their decode
// findings already say what is wrong).
func (c *Checker) CheckChange(ctx context.Context, changed, rejected, unchanged []*api.Object) []api.Finding {
	findings := validate.Objects(changed)
	set := make([]*api.Object, 0, len(unchanged)+len(changed)+len(rejected))
	set = append(append(set, unchanged...), changed...)
	findings = append(findings, c.analyzeWithRejected(set, rejected)...)
	findings = append(findings, c.runValidators(ctx, set)...)
	return api.SortFindings(findings)
}

// Check is Checker.Check with opts, for one-off use.
func Check(objs []*api.Object, opts Options) []api.Finding {
	return New(opts).Check(objs)
}

// CheckPaths decodes files and directory trees and checks the result.
// Objects that failed to decode are not validated (their decode findings
// say what is wrong) but still take part in analysis, so that other objects
// referring to them do not get misleading "not found" findings; analysis
// findings about them are dropped for the same reason.
func (c *Checker) CheckPaths(paths ...string) Result {
	return c.checkDecoded(c.dec.LoadPaths(paths...))
}

// CheckBytes decodes one file's content and checks it; file names it in
// findings.
func (c *Checker) CheckBytes(file string, data []byte) Result {
	return c.CheckSources(nil, map[string][]byte{file: data})
}

// CheckSources checks files and directory trees together with in-memory
// sources (name to content, such as standard input) as one set, so that
// references between them resolve.
func (c *Checker) CheckSources(paths []string, sources map[string][]byte) Result {
	var d decode.Result
	if len(paths) > 0 {
		d = c.dec.LoadPaths(paths...)
	}
	names := make([]string, 0, len(sources))
	for name := range sources {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		one := c.dec.Decode(name, sources[name])
		one.Files = []string{name}
		d.Merge(one)
	}
	return c.checkDecoded(d)
}

func (c *Checker) checkDecoded(d decode.Result) Result {
	findings := d.Findings
	findings = append(findings, validate.Objects(d.Objects)...)
	findings = append(findings, c.analyzeWithRejected(d.Objects, d.Rejected)...)
	findings = append(findings, c.runValidators(context.Background(), d.Objects)...)
	return Result{
		Objects:  d.Objects,
		Rejected: d.Rejected,
		Findings: api.SortFindings(findings),
		Files:    d.Files,
	}
}

// analyzeWithRejected analyzes objs together with rejected and drops the
// findings about rejected objects, except duplicates.
func (c *Checker) analyzeWithRejected(objs, rejected []*api.Object) []api.Finding {
	if len(rejected) == 0 {
		return analyze.Analyze(objs, c.analyzeOptions())
	}
	all := append(append(make([]*api.Object, 0, len(objs)+len(rejected)), objs...), rejected...)
	bad := make(map[api.Key]bool, len(rejected))
	for _, o := range rejected {
		bad[o.Key()] = true
	}
	var out []api.Finding
	for _, f := range analyze.Analyze(all, c.analyzeOptions()) {
		if bad[f.Object] && f.Code != api.CodeDuplicateObject {
			continue
		}
		out = append(out, f)
	}
	return out
}

// runValidators runs the external validators over objs, one after the
// other, each under the validator timeout. A validator's findings get the
// file and line of the object they name and its name in front of the
// message; a failure becomes one GAL4001 finding.
func (c *Checker) runValidators(ctx context.Context, objs []*api.Object) []api.Finding {
	if len(c.opts.Validators) == 0 {
		return nil
	}
	timeout := c.opts.ValidatorTimeout
	if timeout <= 0 {
		timeout = DefaultValidatorTimeout
	}
	byKey := make(map[api.Key]*api.Object, len(objs))
	for _, o := range objs {
		byKey[o.Key()] = o
	}
	var out []api.Finding
	for _, nv := range c.opts.Validators {
		fs, err := callValidator(ctx, nv.Validator, objs, timeout)
		if err != nil {
			sev, then := api.SeverityError, "the change waits for it and is retried"
			if c.opts.FailurePolicy == FailOpen {
				sev, then = api.SeverityWarning, "config was checked without it"
			}
			out = append(out, api.Finding{
				Code:     api.CodeValidatorFailed,
				Severity: sev,
				Message:  fmt.Sprintf("validator %q failed: %v; %s", nv.Name, err, then),
			})
			continue
		}
		for _, f := range fs {
			if f.Severity < api.SeverityError || f.Severity > api.SeverityInfo {
				f.Severity = api.SeverityError
			}
			if o, ok := byKey[f.Object]; ok && f.File == "" {
				f.File = o.Source.File
				f.Line = o.Line(f.Field)
			}
			f.Message = nv.Name + ": " + f.Message
			out = append(out, f)
		}
	}
	return out
}

// callValidator calls v under a timeout and turns a panic into an error, so
// that an in-process validator cannot take galley down.
func callValidator(ctx context.Context, v api.Validator, objs []*api.Object, timeout time.Duration) (fs []api.Finding, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	fs, err = v.Validate(ctx, objs)
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("no answer within %s", timeout)
	}
	return fs, err
}

func (c *Checker) analyzeOptions() analyze.Options {
	return analyze.Options{
		Mesh:          c.opts.Mesh,
		RootNamespace: c.opts.RootNamespace,
		Hosts:         c.opts.Hosts,
		Workloads:     c.opts.Workloads,
	}
}
