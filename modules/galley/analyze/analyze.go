// Package analyze checks a whole config set for problems no single object
// shows, in the spirit of istioctl analyze: references that dangle (hosts,
// subsets, gateways, delegates), objects that conflict (VirtualServices or
// DestinationRules for the same host), routes that can never match, mTLS
// settings that contradict each other and selectors that select nothing.
//
// Analysis assumes each object passed per-object validation; it never
// repeats those checks (route weights, for instance, are validate's job) and
// it tolerates invalid values without panicking.
package analyze

import (
	"fmt"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/galley/api"
)

// HostIndex answers whether a service registry knows a host. Pilot supplies
// its registry at serve time; offline (meshd validate) there is none and
// only ServiceEntries count.
type HostIndex interface {
	HasHost(host string) bool
}

// WorkloadIndex answers whether any known workload in namespace carries all
// the labels of selector. It lets selectors be checked against workloads
// that registered at run time, not only against WorkloadEntries in files.
type WorkloadIndex interface {
	HasWorkload(namespace string, selector map[string]string) bool
}

// DefaultRootNamespace is Istio's default root namespace, where mesh-wide
// policies live.
const DefaultRootNamespace = "istio-system"

// Options configure analysis. The zero value analyzes offline with Istio's
// mesh defaults.
type Options struct {
	// Mesh supplies the cluster domain and the default mTLS mode; empty
	// fields take core.DefaultMeshConfig values.
	Mesh core.MeshConfig
	// RootNamespace holds mesh-wide policies; empty means istio-system.
	RootNamespace string
	// Hosts, when set, is the authority on which hosts exist: unknown hosts
	// are errors. Without it, unknown cluster-local hosts are only warnings
	// because they may be Kubernetes services galley cannot see.
	Hosts HostIndex
	// Workloads, when set, adds run-time workloads to selector checks.
	Workloads WorkloadIndex
}

func (o Options) withDefaults() Options {
	d := core.DefaultMeshConfig()
	if o.Mesh.ClusterDomain == "" {
		o.Mesh.ClusterDomain = d.ClusterDomain
	}
	if o.Mesh.DefaultMTLSMode == "" {
		o.Mesh.DefaultMTLSMode = d.DefaultMTLSMode
	}
	if o.Mesh.TrustDomain == "" {
		o.Mesh.TrustDomain = d.TrustDomain
	}
	if o.Mesh.OutboundTrafficPolicy == "" {
		o.Mesh.OutboundTrafficPolicy = d.OutboundTrafficPolicy
	}
	if o.RootNamespace == "" {
		o.RootNamespace = DefaultRootNamespace
	}
	return o
}

// analyzer is one whole-set check.
type analyzer struct {
	name string
	run  func(*index, *reporter)
}

// analyzers run in this order; each is independent of the others.
var analyzers = []analyzer{
	{"duplicates", checkDuplicates},
	{"destinations", checkDestinations},
	{"gateways", checkGateways},
	{"delegates", checkDelegates},
	{"virtualservice-conflicts", checkVSConflicts},
	{"destinationrule-conflicts", checkDRConflicts},
	{"shadowed-routes", checkShadowedRoutes},
	{"mtls", checkMTLS},
	{"selectors", checkSelectors},
	{"subset-workloads", checkSubsetWorkloads},
}

// Analyze runs every whole-set check over objs and returns the findings,
// unsorted.
func Analyze(objs []*api.Object, opts Options) []api.Finding {
	ix := newIndex(objs, opts.withDefaults())
	r := &reporter{}
	for _, a := range analyzers {
		a.run(ix, r)
	}
	return r.out
}

// reporter collects findings.
type reporter struct {
	out []api.Finding
}

func (r *reporter) add(o *api.Object, code api.Code, sev api.Severity, path, format string, args ...any) {
	r.out = append(r.out, api.Finding{
		Code:     code,
		Severity: sev,
		Object:   o.Key(),
		File:     o.Source.File,
		Line:     o.Line(path),
		Field:    path,
		Message:  fmt.Sprintf(format, args...),
	})
}

func (r *reporter) errf(o *api.Object, code api.Code, path, format string, args ...any) {
	r.add(o, code, api.SeverityError, path, format, args...)
}

func (r *reporter) warnf(o *api.Object, code api.Code, path, format string, args ...any) {
	r.add(o, code, api.SeverityWarning, path, format, args...)
}

func (r *reporter) infof(o *api.Object, code api.Code, path, format string, args ...any) {
	r.add(o, code, api.SeverityInfo, path, format, args...)
}

// where renders an object's location for messages that point at a second
// object.
func where(o *api.Object) string {
	if o.Source.File == "" {
		return string(o.Key())
	}
	return fmt.Sprintf("%s (%s:%d)", o.Key(), o.Source.File, o.Source.Line)
}
