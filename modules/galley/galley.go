// Package galley is meshd's config ingestion and validation: it decodes
// Istio YAML into istio.io/api types, validates each object with Istio's
// field rules and analyzes the whole set for dangling references and
// conflicts.
//
// This file is the library entry point shared by `meshd validate` and the
// serve-time module: Checker runs decode, validate and analyze with one set
// of options and returns sorted findings.
package galley

import (
	"slices"

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
}

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
	f := validate.Objects(objs)
	f = append(f, analyze.Analyze(objs, c.analyzeOptions())...)
	return api.SortFindings(f)
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
	all := d.Objects
	rejected := make(map[api.Key]bool, len(d.Rejected))
	if len(d.Rejected) > 0 {
		all = append(append(make([]*api.Object, 0, len(d.Objects)+len(d.Rejected)), d.Objects...), d.Rejected...)
		for _, o := range d.Rejected {
			rejected[o.Key()] = true
		}
	}
	for _, f := range analyze.Analyze(all, c.analyzeOptions()) {
		if rejected[f.Object] && f.Code != api.CodeDuplicateObject {
			continue
		}
		findings = append(findings, f)
	}
	return Result{
		Objects:  d.Objects,
		Rejected: d.Rejected,
		Findings: api.SortFindings(findings),
		Files:    d.Files,
	}
}

func (c *Checker) analyzeOptions() analyze.Options {
	return analyze.Options{
		Mesh:          c.opts.Mesh,
		RootNamespace: c.opts.RootNamespace,
		Hosts:         c.opts.Hosts,
		Workloads:     c.opts.Workloads,
	}
}
