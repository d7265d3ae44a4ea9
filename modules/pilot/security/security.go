// Package security turns Istio's security config into what proxies
// enforce: PeerAuthentication modes on inbound listeners (through
// package authn), AuthorizationPolicy as RBAC filters, RequestAuthentication
// as Envoy's JWT filter, CUSTOM policies as ext_authz calls to the
// providers in mesh.extensionProviders, and mesh.rateLimits as local rate
// limit filters. It serves two kinds of proxies:
//
//   - Envoy sidecars and gateways, through the envoy package's extension
//     points (envoy.Security adapts the functions here): TLS inspector and
//     filter chains per mTLS mode, HTTP filters on connection managers,
//     network filters on TCP chains;
//   - proxyless gRPC servers (xds.NewGRPCServer), which ask for server-side
//     listeners by name (gRFC A36); ServerListener builds them with the
//     subset of RBAC grpc-go evaluates.
//
// What a target cannot evaluate fails closed, never open: an ALLOW rule
// that needs such an attribute is dropped (it never allows), a DENY rule
// loses only that attribute (it denies at least as much as written). The
// same capability table (Evaluable) drives galley's warnings, so what a
// user is told matches what is generated. docs/security.md maps the YAML
// to the output.
package security

import (
	"slices"
	"strings"
	"sync/atomic"

	security "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/core"
	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/security/authn"
)

// Policy is an AuthorizationPolicy.
type Policy struct {
	Object *galleyapi.Object
	Spec   *security.AuthorizationPolicy
}

// Name is namespace/name.
func (p Policy) Name() string { return p.Object.Namespace + "/" + p.Object.Name }

// JWTPolicy is a RequestAuthentication.
type JWTPolicy struct {
	Object *galleyapi.Object
	Spec   *security.RequestAuthentication
}

// Workload is the side of a connection that enforces policy: a sidecar's
// own workload, a gateway, or a proxyless server.
type Workload struct {
	Namespace string
	Labels    map[string]string
}

// Config is the security config of one accepted snapshot and mesh config,
// indexed by namespace. It is immutable and safe for concurrent use.
type Config struct {
	Mesh  core.MeshConfig
	Root  string
	Authn *authn.Policies

	authz map[string][]Policy    // by namespace, namespace/name order
	jwt   map[string][]JWTPolicy // by namespace
}

// cached is the Config of the index built last: every generator of a
// push reads the same index, so one entry is enough. Readers load it
// without locking; a miss builds a new one.
type cached struct {
	snap *galleyapi.Snapshot
	mesh core.MeshConfig
	root string
	val  *Config
}

var last atomic.Pointer[cached]

// For returns the Config of ix's accepted config, computed once per
// snapshot.
func For(ix *index.Index) *Config {
	if c := last.Load(); c != nil && c.snap == ix.Config && c.mesh == ix.Mesh && c.root == ix.RootNamespace {
		return c.val
	}
	c := &cached{snap: ix.Config, mesh: ix.Mesh, root: ix.RootNamespace, val: New(ix.Mesh, ix.RootNamespace, ix.Config)}
	last.Store(c)
	return c.val
}

// New indexes snap's security config.
func New(mesh core.MeshConfig, root string, snap *galleyapi.Snapshot) *Config {
	c := &Config{
		Mesh:  mesh,
		Root:  root,
		Authn: authn.New(mesh, root, snap),
		authz: map[string][]Policy{},
		jwt:   map[string][]JWTPolicy{},
	}
	if snap == nil {
		return c
	}
	for o := range snap.All(galleyapi.KindAuthorizationPolicy) {
		if spec, ok := o.Spec.(*security.AuthorizationPolicy); ok && spec.GetTargetRef() == nil && len(spec.GetTargetRefs()) == 0 {
			c.authz[o.Namespace] = append(c.authz[o.Namespace], Policy{o, spec})
		}
	}
	for o := range snap.All(galleyapi.KindRequestAuthentication) {
		if spec, ok := o.Spec.(*security.RequestAuthentication); ok && spec.GetTargetRef() == nil && len(spec.GetTargetRefs()) == 0 {
			c.jwt[o.Namespace] = append(c.jwt[o.Namespace], JWTPolicy{o, spec})
		}
	}
	return c
}

// selects reports whether a policy written in ns with selector applies to
// w: in w's namespace with no selector or a matching one, or in the root
// namespace with no selector (every workload) or a matching one (matching
// workloads of every namespace), as Istio scopes AuthorizationPolicy and
// RequestAuthentication.
func (c *Config) selects(ns string, selector map[string]string, w Workload) bool {
	if ns != w.Namespace && ns != c.Root {
		return false
	}
	return model.LabelsMatch(selector, w.Labels)
}

// Applicable are the AuthorizationPolicies that apply to a workload, by
// action, each in namespace/name order (the workload's namespace first,
// then the root namespace).
type Applicable struct {
	Custom, Audit, Deny, Allow []Policy
}

// Empty reports whether no policy applies.
func (a Applicable) Empty() bool {
	return len(a.Custom)+len(a.Audit)+len(a.Deny)+len(a.Allow) == 0
}

// AuthorizationPolicies returns the policies that apply to w.
func (c *Config) AuthorizationPolicies(w Workload) Applicable {
	var out Applicable
	for _, ns := range c.lookup(w.Namespace) {
		for _, p := range c.authz[ns] {
			if !c.selects(ns, p.Spec.GetSelector().GetMatchLabels(), w) {
				continue
			}
			switch p.Spec.GetAction() {
			case security.AuthorizationPolicy_CUSTOM:
				out.Custom = append(out.Custom, p)
			case security.AuthorizationPolicy_AUDIT:
				out.Audit = append(out.Audit, p)
			case security.AuthorizationPolicy_DENY:
				out.Deny = append(out.Deny, p)
			default:
				out.Allow = append(out.Allow, p)
			}
		}
	}
	return out
}

// RequestAuthentications returns the RequestAuthentications that apply
// to w.
func (c *Config) RequestAuthentications(w Workload) []JWTPolicy {
	var out []JWTPolicy
	for _, ns := range c.lookup(w.Namespace) {
		for _, p := range c.jwt[ns] {
			if c.selects(ns, p.Spec.GetSelector().GetMatchLabels(), w) {
				out = append(out, p)
			}
		}
	}
	return out
}

// RateLimits returns the mesh.rateLimits that select w on port (0: any
// port).
func (c *Config) RateLimits(w Workload, port uint32) []core.RateLimit {
	var out []core.RateLimit
	for _, r := range c.Mesh.LocalRateLimits() {
		if !c.selects(r.Namespace, r.Selector, w) {
			continue
		}
		if port != 0 && len(r.Ports) > 0 && !slices.Contains(r.Ports, port) {
			continue
		}
		out = append(out, r)
	}
	return out
}

func (c *Config) lookup(ns string) []string {
	if ns == c.Root {
		return []string{ns}
	}
	return []string{ns, c.Root}
}

// KeyPart returns the part of a generator key that covers what this
// package reads from a proxy: which PeerAuthentications,
// AuthorizationPolicies, RequestAuthentications and rate limits select
// its workload. Proxies that differ only in labels no policy looks at keep
// sharing one generated set. Empty when nothing selects the workload
// beyond the namespace and mesh defaults.
func (c *Config) KeyPart(w Workload) string {
	var b strings.Builder
	for _, o := range c.Authn.Applying(w.Namespace, w.Labels) {
		b.WriteString("pa=")
		b.WriteString(o.Namespace + "/" + o.Name + ",")
	}
	a := c.AuthorizationPolicies(w)
	for _, list := range [][]Policy{a.Custom, a.Audit, a.Deny, a.Allow} {
		for _, p := range list {
			b.WriteString("ap=")
			b.WriteString(p.Name() + ",")
		}
	}
	for _, p := range c.RequestAuthentications(w) {
		b.WriteString("ra=" + p.Object.Namespace + "/" + p.Object.Name + ",")
	}
	for _, r := range c.RateLimits(w, 0) {
		b.WriteString("rl=" + r.Name + ",")
	}
	return b.String()
}
