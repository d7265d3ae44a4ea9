// Package authn resolves PeerAuthentication for pilot's generators: the
// mTLS mode a workload port accepts (STRICT, PERMISSIVE or DISABLE), with
// Istio's precedence, and what that means for clients (automatic mTLS).
// It reads only the index and accepted config, so the shared cluster and
// endpoint builders can import it without importing the rest of security.
//
// Precedence, as in Istio:
//
//   - a workload-level policy (a selector matching the workload's labels,
//     in the workload's namespace) wins over the namespace-level policy (no
//     selector, in the namespace), which wins over the mesh-level policy
//     (no selector, in the root namespace), which wins over
//     mesh.defaultMTLSMode;
//   - portLevelMtls of the workload-level policy overrides its mode for
//     that workload port;
//   - UNSET (or no mtls at all) inherits from the next level up, so a port
//     that says UNSET gets the workload's mode, which may itself come from
//     the namespace or the mesh;
//   - when several policies compete at one level, the first by namespace
//     and name wins (Istio takes the oldest; galley orders by name);
//   - selectors of root-namespace policies select root-namespace workloads
//     only, so only a policy without a selector is mesh-wide.
//
// Policies that name targets (targetRef, targetRefs) are for waypoints and
// Kubernetes Gateways, which meshd does not configure; they are ignored.
package authn

import (
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	security "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/core"
	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
)

// Mode is an mTLS mode.
type Mode uint8

// Modes. Unset only appears inside a policy; effective modes never are.
const (
	Unset Mode = iota
	Disable
	Permissive
	Strict
)

func (m Mode) String() string {
	switch m {
	case Disable:
		return "DISABLE"
	case Permissive:
		return "PERMISSIVE"
	case Strict:
		return "STRICT"
	}
	return "UNSET"
}

// ParseMode reads a mode name (case-insensitive); anything else is Unset.
func ParseMode(s string) Mode {
	switch strings.ToUpper(s) {
	case core.MTLSDisable:
		return Disable
	case core.MTLSPermissive:
		return Permissive
	case core.MTLSStrict:
		return Strict
	}
	return Unset
}

// AcceptsMTLS reports whether a port in this mode takes mTLS connections.
func (m Mode) AcceptsMTLS() bool { return m == Permissive || m == Strict }

func fromProto(m security.PeerAuthentication_MutualTLS_Mode) Mode {
	switch m {
	case security.PeerAuthentication_MutualTLS_DISABLE:
		return Disable
	case security.PeerAuthentication_MutualTLS_PERMISSIVE:
		return Permissive
	case security.PeerAuthentication_MutualTLS_STRICT:
		return Strict
	}
	return Unset
}

// TLSModeLabel is the workload label saying a workload accepts Istio mTLS
// (the sidecar injector and meshd's agent set it); auto mTLS trusts it.
const TLSModeLabel = "security.istio.io/tlsMode"

// InMesh reports whether a workload's labels say it speaks Istio mTLS.
func InMesh(labels map[string]string) bool { return labels[TLSModeLabel] == "istio" }

// peerAuth is one PeerAuthentication.
type peerAuth struct {
	obj  *galleyapi.Object
	spec *security.PeerAuthentication
	mode Mode
}

// Policies is the PeerAuthentication config of one accepted snapshot,
// indexed for lookups by workload. It is immutable and safe for
// concurrent use.
type Policies struct {
	defaultMode Mode
	root        string
	trustDomain string
	meshWide    *peerAuth
	namespace   map[string]*peerAuth
	workload    map[string][]*peerAuth
	digest      uint64
}

// New indexes the PeerAuthentications of snap. root is the root
// namespace.
func New(mesh core.MeshConfig, root string, snap *galleyapi.Snapshot) *Policies {
	p := &Policies{
		defaultMode: ParseMode(mesh.DefaultMTLSMode),
		root:        root,
		trustDomain: mesh.TrustDomain,
		namespace:   map[string]*peerAuth{},
		workload:    map[string][]*peerAuth{},
	}
	if p.defaultMode == Unset {
		p.defaultMode = Permissive
	}
	h := fnv.New64a()
	h.Write([]byte(p.defaultMode.String()))
	if snap != nil {
		for o := range snap.All(galleyapi.KindPeerAuthentication) {
			spec, ok := o.Spec.(*security.PeerAuthentication)
			if !ok {
				continue
			}
			h.Write([]byte(o.Namespace + "/" + o.Name + "/" + strconv.FormatUint(objectHash(o), 36) + "|"))
			pa := &peerAuth{obj: o, spec: spec, mode: fromProto(spec.GetMtls().GetMode())}
			switch {
			case len(spec.GetSelector().GetMatchLabels()) > 0:
				p.workload[o.Namespace] = append(p.workload[o.Namespace], pa)
			case o.Namespace == root:
				if p.meshWide == nil {
					p.meshWide = pa
				}
				if p.namespace[o.Namespace] == nil {
					p.namespace[o.Namespace] = pa
				}
			default:
				if p.namespace[o.Namespace] == nil {
					p.namespace[o.Namespace] = pa
				}
			}
		}
	}
	p.digest = h.Sum64()
	return p
}

func objectHash(o *galleyapi.Object) uint64 {
	if o.Hash != 0 {
		return o.Hash
	}
	// Objects built in tests carry no hash; the identity of their spec
	// still tells one PeerAuthentication from another within a process.
	h := fnv.New64a()
	h.Write([]byte(o.Namespace + "/" + o.Name))
	return h.Sum64()
}

// cached is the Policies of the index built last: every generator of a
// push reads the same index, so one entry is enough. Readers load it
// without locking; a miss builds a new one.
type cached struct {
	snap *galleyapi.Snapshot
	mesh core.MeshConfig
	root string
	val  *Policies
}

var last atomic.Pointer[cached]

// For returns the Policies of ix's accepted config, computed once per
// snapshot.
func For(ix *index.Index) *Policies {
	if c := last.Load(); c != nil && c.snap == ix.Config && c.mesh == ix.Mesh && c.root == ix.RootNamespace {
		return c.val
	}
	c := &cached{snap: ix.Config, mesh: ix.Mesh, root: ix.RootNamespace, val: New(ix.Mesh, ix.RootNamespace, ix.Config)}
	last.Store(c)
	return c.val
}

// Digest changes whenever any PeerAuthentication or the default mode
// does: caches of output that depends on modes key by it.
func (p *Policies) Digest() uint64 { return p.digest }

// Source says where an effective mode came from, for debug views and
// errors: a PeerAuthentication, or nil for mesh.defaultMTLSMode.
type Source struct {
	Object *galleyapi.Object
	// Port is true when the mode comes from portLevelMtls.
	Port bool
}

func (s Source) String() string {
	if s.Object == nil {
		return "mesh.defaultMTLSMode"
	}
	out := "PeerAuthentication " + s.Object.Namespace + "/" + s.Object.Name
	if s.Port {
		out += " (portLevelMtls)"
	}
	return out
}

// workloadPolicy returns the workload-level policy of a workload: the
// first in namespace/name order whose selector matches.
func (p *Policies) workloadPolicy(ns string, labels map[string]string) *peerAuth {
	for _, pa := range p.workload[ns] {
		if model.LabelsMatch(pa.spec.GetSelector().GetMatchLabels(), labels) {
			return pa
		}
	}
	return nil
}

// Mode returns the effective mode of a workload in ns with labels on port
// (the port the workload listens on; 0 for the workload as a whole).
func (p *Policies) Mode(ns string, labels map[string]string, port uint32) Mode {
	m, _ := p.Resolve(ns, labels, port)
	return m
}

// Resolve is Mode, also saying which policy decided.
func (p *Policies) Resolve(ns string, labels map[string]string, port uint32) (Mode, Source) {
	if wl := p.workloadPolicy(ns, labels); wl != nil {
		if port != 0 {
			if pl, ok := wl.spec.GetPortLevelMtls()[port]; ok {
				if m := fromProto(pl.GetMode()); m != Unset {
					return m, Source{Object: wl.obj, Port: true}
				}
			}
		}
		if wl.mode != Unset {
			return wl.mode, Source{Object: wl.obj}
		}
	}
	return p.namespaceMode(ns)
}

// namespaceMode is the mode of a namespace as a whole: its own
// namespace-wide policy, else the mesh's, else the default.
func (p *Policies) namespaceMode(ns string) (Mode, Source) {
	if pa := p.namespace[ns]; pa != nil && pa.mode != Unset {
		return pa.mode, Source{Object: pa.obj}
	}
	if p.meshWide != nil && p.meshWide.mode != Unset {
		return p.meshWide.mode, Source{Object: p.meshWide.obj}
	}
	return p.defaultMode, Source{}
}

// Applying returns the PeerAuthentications that decide a workload's
// modes (workload, namespace and mesh level), for generator keys: two
// workloads with the same list get the same modes.
func (p *Policies) Applying(ns string, labels map[string]string) []*galleyapi.Object {
	var out []*galleyapi.Object
	if wl := p.workloadPolicy(ns, labels); wl != nil {
		out = append(out, wl.obj)
	}
	if pa := p.namespace[ns]; pa != nil {
		out = append(out, pa.obj)
	}
	if p.meshWide != nil && p.meshWide != p.namespace[ns] {
		out = append(out, p.meshWide.obj)
	}
	return out
}

// EndpointNamespace is the namespace an endpoint's workload runs in: its
// identity's, else its service's.
func EndpointNamespace(svc *model.Service, e *model.Endpoint) string {
	if e.Namespace != "" {
		return e.Namespace
	}
	return svc.Namespace
}

// EndpointAccepts reports whether auto mTLS may send mTLS to an endpoint:
// it is in the mesh (TLSModeLabel) and its PeerAuthentication on its port
// does not DISABLE mTLS.
func (p *Policies) EndpointAccepts(svc *model.Service, e *model.Endpoint) bool {
	if !InMesh(e.Labels) {
		return false
	}
	return p.Mode(EndpointNamespace(svc, e), e.Labels, e.Port) != Disable
}

// SPIFFEID is the identity of an endpoint's workload:
// spiffe://<trust domain>/ns/<namespace>/sa/<service account>, the
// service account "default" when it names none (Kubernetes' default).
func (p *Policies) SPIFFEID(svc *model.Service, e *model.Endpoint) string {
	sa := e.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	return "spiffe://" + p.trustDomain + "/ns/" + EndpointNamespace(svc, e) + "/sa/" + sa
}

// NamespaceIdentityPrefix is the prefix of every identity in ns.
func (p *Policies) NamespaceIdentityPrefix(ns string) string {
	return "spiffe://" + p.trustDomain + "/ns/" + ns + "/"
}

// Upstream is what auto mTLS decides for a cluster whose DestinationRule
// says nothing about TLS.
type Upstream struct {
	// MTLS says clients originate Istio mTLS.
	MTLS bool
	// SANs are the identities the server may present, exact (the
	// endpoints' SPIFFE IDs), or empty when Prefix is set instead.
	SANs []string
	// Prefix is the namespace identity prefix used when no endpoint is
	// known yet.
	Prefix string
}

// Key renders u for cache keys.
func (u Upstream) Key() string {
	if !u.MTLS {
		return ""
	}
	return "m|" + u.Prefix + "|" + strings.Join(u.SANs, ",")
}

// AutoUpstream decides auto mTLS for a client that cannot choose per
// endpoint (proxyless gRPC: one TLS setting per cluster). The cluster's
// destination must be a mesh service (not MESH_EXTERNAL) whose endpoints
// come over EDS; then mTLS is used when every known endpoint accepts it,
// with the endpoints' identities as the SANs to verify. A cluster without
// endpoints yet uses mTLS with the namespace's identity prefix unless the
// namespace disables mTLS, so a server that registers after its clients
// is not sent plaintext it may refuse.
func (p *Policies) AutoUpstream(svc *model.Service, endpoints []*model.Endpoint, eds bool) Upstream {
	if svc.MeshExternal || !eds {
		return Upstream{}
	}
	if len(endpoints) == 0 {
		if m, _ := p.namespaceMode(svc.Namespace); m == Disable {
			return Upstream{}
		}
		return Upstream{MTLS: true, Prefix: p.NamespaceIdentityPrefix(svc.Namespace)}
	}
	sans := make([]string, 0, 1)
	for _, e := range endpoints {
		if !p.EndpointAccepts(svc, e) {
			return Upstream{}
		}
		sans = append(sans, p.SPIFFEID(svc, e))
	}
	slices.Sort(sans)
	return Upstream{MTLS: true, SANs: slices.Compact(sans)}
}

// ServiceDisabled reports whether auto mTLS is off for a whole service
// for clients that choose per endpoint (Envoy's transport socket match):
// the service's namespace, or the mesh, disables mTLS and no workload
// policy of the namespace turns it back on. Endpoints are then sent
// plaintext whatever their labels say; otherwise EndpointAccepts decides
// per endpoint.
func (p *Policies) ServiceDisabled(svc *model.Service) bool {
	if m, _ := p.namespaceMode(svc.Namespace); m != Disable {
		return false
	}
	for _, wl := range p.workload[svc.Namespace] {
		if wl.mode.AcceptsMTLS() {
			return false
		}
		for _, pl := range wl.spec.GetPortLevelMtls() {
			if fromProto(pl.GetMode()).AcceptsMTLS() {
				return false
			}
		}
	}
	return true
}

// MeshAddresses returns the addresses of every workload the index knows
// to be in the mesh (labelled with TLSModeLabel): endpoints of registry
// services and WorkloadEntries. A proxyless server in PERMISSIVE mode
// requires mTLS from these and accepts plaintext from other addresses,
// since gRPC cannot tell TLS from plaintext on one filter chain.
func MeshAddresses(ix *index.Index) []string {
	if ix == nil {
		return nil
	}
	seen := map[string]bool{}
	if ix.Registry != nil {
		for _, s := range ix.Registry.Services {
			for _, e := range s.Endpoints {
				if InMesh(e.Labels) {
					seen[e.Address] = true
				}
			}
		}
	}
	if ix.Config != nil {
		for o := range ix.Config.All(galleyapi.KindWorkloadEntry) {
			if w, ok := o.Spec.(interface {
				GetAddress() string
				GetLabels() map[string]string
			}); ok && InMesh(w.GetLabels()) && w.GetAddress() != "" {
				seen[w.GetAddress()] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for a := range seen {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

// IdentitiesChanged reports whether an endpoint change of a service
// changes what auto mTLS decides for its clusters: which endpoints are in
// the mesh, their identities (namespace, service account), their labels
// (which PeerAuthentications select them), or whether it has endpoints at
// all. Clusters then need regenerating, not only their endpoints.
func IdentitiesChanged(old, cur *model.Service) bool {
	if (len(old.Endpoints) == 0) != (len(cur.Endpoints) == 0) {
		return true
	}
	set := func(s *model.Service) map[string]bool {
		m := make(map[string]bool, 1)
		for _, e := range s.Endpoints {
			k := EndpointNamespace(s, e) + "/" + e.ServiceAccount + "/" + strconv.FormatBool(InMesh(e.Labels)) + "/" + strconv.FormatUint(uint64(e.Port), 10)
			keys := make([]string, 0, len(e.Labels))
			for lk, lv := range e.Labels {
				keys = append(keys, lk+"="+lv)
			}
			slices.Sort(keys)
			m[k+"/"+strings.Join(keys, ",")] = true
		}
		return m
	}
	a, b := set(old), set(cur)
	if len(a) != len(b) {
		return true
	}
	for k := range a {
		if !b[k] {
			return true
		}
	}
	return false
}

// MeshAddressesChanged reports whether an endpoint change of a service
// changes the addresses of its in-mesh endpoints, which proxyless
// servers in PERMISSIVE mode match clients by (see MeshAddresses).
func MeshAddressesChanged(old, cur *model.Service) bool {
	addrs := func(s *model.Service) []string {
		var out []string
		for _, e := range s.Endpoints {
			if InMesh(e.Labels) {
				out = append(out, e.Address)
			}
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	return !slices.Equal(addrs(old), addrs(cur))
}
