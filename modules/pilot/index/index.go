// Package index is the read-only view pilot's generators share during one
// push: services from the registry and routing config from galley, indexed
// the way Istio scopes them (host names, namespaces, exportTo, Sidecar,
// gateway binding). It is built once per full push and then only read, from
// any goroutine, so generators need no locks.
//
// Istio's scoping rules kept here, so Istio YAML behaves the same:
//   - Short host names expand in the namespace of the object that wrote them
//     (reviews in namespace shop is reviews.shop.svc.<clusterDomain>).
//   - A VirtualService without gateways binds to the mesh; one that lists
//     gateways binds to those ("mesh" names the sidecars and proxyless
//     clients). Gateway names expand in the VirtualService's namespace.
//   - For a proxy in namespace N and a service in namespace S, the
//     DestinationRule is the first found in N, then S, then the root
//     namespace; within each, an exact host beats the longest wildcard.
//   - exportTo hides services, VirtualServices and DestinationRules from
//     other namespaces; a Sidecar's egress hosts narrow what a proxy sees.
package index

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/meshd/meshd/core"
	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
	networking "istio.io/api/networking/v1alpha3"
)

// MeshGateway is the reserved gateway name of sidecars and proxyless clients.
const MeshGateway = "mesh"

// VirtualService is a VirtualService with its host and gateway names expanded.
type VirtualService struct {
	Object *galleyapi.Object
	Spec   *networking.VirtualService
	// Hosts are the expanded host names.
	Hosts []string
	// Gateways are "mesh" or namespace/name.
	Gateways []string
}

// Namespace returns the namespace that wrote the VirtualService.
func (v *VirtualService) Namespace() string { return v.Object.Namespace }

// DestinationRule is a DestinationRule with its host expanded.
type DestinationRule struct {
	Object *galleyapi.Object
	Spec   *networking.DestinationRule
	Host   string
}

// Sidecar is a Sidecar resource.
type Sidecar struct {
	Object *galleyapi.Object
	Spec   *networking.Sidecar
}

// Gateway is a Gateway resource.
type Gateway struct {
	Object *galleyapi.Object
	Spec   *networking.Gateway
}

// Name returns namespace/name, the form VirtualServices bind to.
func (g *Gateway) Name() string { return g.Object.Namespace + "/" + g.Object.Name }

// Index is one push's view.
type Index struct {
	Mesh          core.MeshConfig
	RootNamespace string
	Registry      *registry.View
	Config        *galleyapi.Snapshot
	// Version identifies the inputs: it changes whenever the registry view
	// or the accepted config does.
	Version string

	meshVS      []*VirtualService
	gatewayVS   map[string][]*VirtualService
	drs         map[string][]*DestinationRule // by namespace
	sidecars    map[string][]*Sidecar         // by namespace
	gateways    map[string]*Gateway           // by namespace/name
	gatewayList []*Gateway

	sourceSelectors   []map[string]string
	localitySensitive bool
	failoverLabels    []string

	vsOnce   sync.Once
	vsByHost map[string][]int // exact host -> positions in meshVS
	vsWild   []int            // positions in meshVS of VirtualServices with a wildcard host

	targetsOnce sync.Once
	targets     map[string][]Target // by endpoint address, built on first use
}

// New builds the index. rootNS is the namespace whose DestinationRules and
// Sidecar apply mesh-wide (Istio's istio-system).
func New(mesh core.MeshConfig, rootNS string, view *registry.View, cfg *galleyapi.Snapshot) *Index {
	ix := &Index{
		Mesh:          mesh,
		RootNamespace: rootNS,
		Registry:      view,
		Config:        cfg,
		gatewayVS:     map[string][]*VirtualService{},
		drs:           map[string][]*DestinationRule{},
		sidecars:      map[string][]*Sidecar{},
		gateways:      map[string]*Gateway{},
	}
	var viewVersion uint64
	if view != nil {
		viewVersion = view.Version
	}
	ix.Version = fmt.Sprintf("c%d.r%d", cfg.Revision(), viewVersion)
	for o := range cfg.All(galleyapi.KindVirtualService) {
		spec, ok := o.Spec.(*networking.VirtualService)
		if !ok {
			continue
		}
		vs := &VirtualService{Object: o, Spec: spec}
		for _, h := range spec.GetHosts() {
			vs.Hosts = append(vs.Hosts, ix.ExpandHost(h, o.Namespace))
		}
		gws := spec.GetGateways()
		if len(gws) == 0 {
			gws = []string{MeshGateway}
		}
		ix.addSourceSelectors(spec)
		for _, g := range gws {
			name := ix.gatewayName(g, o.Namespace)
			vs.Gateways = append(vs.Gateways, name)
			if name == MeshGateway {
				ix.meshVS = append(ix.meshVS, vs)
			} else {
				ix.gatewayVS[name] = append(ix.gatewayVS[name], vs)
			}
		}
	}
	for o := range cfg.All(galleyapi.KindDestinationRule) {
		spec, ok := o.Spec.(*networking.DestinationRule)
		if !ok {
			continue
		}
		ix.drs[o.Namespace] = append(ix.drs[o.Namespace], &DestinationRule{Object: o, Spec: spec, Host: ix.ExpandHost(spec.GetHost(), o.Namespace)})
		if !ix.localitySensitive && usesLocality(spec) {
			ix.localitySensitive = true
		}
		ix.addFailoverLabels(spec)
	}
	for o := range cfg.All(galleyapi.KindSidecar) {
		if spec, ok := o.Spec.(*networking.Sidecar); ok {
			ix.sidecars[o.Namespace] = append(ix.sidecars[o.Namespace], &Sidecar{Object: o, Spec: spec})
		}
	}
	for o := range cfg.All(galleyapi.KindGateway) {
		if spec, ok := o.Spec.(*networking.Gateway); ok {
			g := &Gateway{Object: o, Spec: spec}
			ix.gateways[g.Name()] = g
			ix.gatewayList = append(ix.gatewayList, g)
		}
	}
	return ix
}

// addSourceSelectors records the distinct sourceLabels selectors of a
// VirtualService's HTTP, TCP and TLS matches (Envoy sidecars apply the
// last two).
func (ix *Index) addSourceSelectors(spec *networking.VirtualService) {
	add := func(sel map[string]string) {
		if len(sel) > 0 && !slices.ContainsFunc(ix.sourceSelectors, func(s map[string]string) bool { return maps.Equal(s, sel) }) {
			ix.sourceSelectors = append(ix.sourceSelectors, sel)
		}
	}
	for _, r := range spec.GetHttp() {
		for _, m := range r.GetMatch() {
			add(m.GetSourceLabels())
		}
	}
	for _, r := range spec.GetTcp() {
		for _, m := range r.GetMatch() {
			add(m.GetSourceLabels())
		}
	}
	for _, r := range spec.GetTls() {
		for _, m := range r.GetMatch() {
			add(m.GetSourceLabels())
		}
	}
}

// SourceSelectors returns the distinct sourceLabels selectors that route
// matches (HTTP, TCP, TLS) use, in a stable order. Routes built for a proxy depend on
// its labels only through these, so a generator key needs only which of
// them a proxy's labels match, not the labels themselves: proxies that
// differ in unrelated labels keep sharing one generated set.
func (ix *Index) SourceSelectors() []map[string]string { return ix.sourceSelectors }

// LocalitySensitive reports whether any DestinationRule enables
// locality-aware load balancing (locality settings or outlier detection, which
// is what turns on Istio's locality failover). Only then do endpoints depend on
// the proxy's own locality, so only then must a generator key include it.
func (ix *Index) LocalitySensitive() bool { return ix.localitySensitive }

// FailoverPriorityLabels returns the distinct labels DestinationRules name
// in failoverPriority without a fixed value ("label=value" compares
// endpoints with the value, not with the proxy), in a stable order.
// Endpoints built for a proxy depend on its labels only through these, so
// a generator key needs the proxy's values of these and no other labels.
func (ix *Index) FailoverPriorityLabels() []string { return ix.failoverLabels }

func (ix *Index) addFailoverLabels(dr *networking.DestinationRule) {
	add := func(lb *networking.LoadBalancerSettings) {
		for _, l := range lb.GetLocalityLbSetting().GetFailoverPriority() {
			if !strings.ContainsRune(l, '=') && !slices.Contains(ix.failoverLabels, l) {
				ix.failoverLabels = append(ix.failoverLabels, l)
			}
		}
	}
	policies := []*networking.TrafficPolicy{dr.GetTrafficPolicy()}
	for _, s := range dr.GetSubsets() {
		policies = append(policies, s.GetTrafficPolicy())
	}
	for _, tp := range policies {
		add(tp.GetLoadBalancer())
		for _, pl := range tp.GetPortLevelSettings() {
			add(pl.GetLoadBalancer())
		}
	}
}

func usesLocality(dr *networking.DestinationRule) bool {
	policies := []*networking.TrafficPolicy{dr.GetTrafficPolicy()}
	for _, s := range dr.GetSubsets() {
		policies = append(policies, s.GetTrafficPolicy())
	}
	for _, tp := range policies {
		if tp.GetOutlierDetection() != nil || tp.GetLoadBalancer().GetLocalityLbSetting() != nil {
			return true
		}
		for _, pl := range tp.GetPortLevelSettings() {
			if pl.GetOutlierDetection() != nil || pl.GetLoadBalancer().GetLocalityLbSetting() != nil {
				return true
			}
		}
	}
	return false
}

// ExpandHost turns a short host name into the FQDN it means in namespace
// ns. Names with a dot and wildcards are kept as written.
func (ix *Index) ExpandHost(host, ns string) string {
	if host == "" || strings.ContainsRune(host, '.') || strings.HasPrefix(host, "*") {
		return host
	}
	return host + "." + ns + ".svc." + ix.Mesh.ClusterDomain
}

func (ix *Index) gatewayName(g, ns string) string {
	if g == MeshGateway {
		return MeshGateway
	}
	if strings.ContainsRune(g, '/') {
		return g
	}
	// Istio also accepts gateway.namespace.svc.cluster.local style names.
	if name, rest, ok := strings.Cut(g, "."); ok {
		return strings.SplitN(rest, ".", 2)[0] + "/" + name
	}
	return ns + "/" + g
}

// HostMatches reports whether host matches pattern, where pattern may be a
// wildcard (*.example.com, or * for everything).
func HostMatches(pattern, host string) bool {
	switch {
	case pattern == "*" || pattern == host:
		return true
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(host, pattern[1:])
	}
	return false
}

func exportedTo(exportTo []string, owner, ns string) bool {
	if len(exportTo) == 0 {
		return true
	}
	for _, e := range exportTo {
		switch e {
		case "*":
			return true
		case ".":
			if owner == ns {
				return true
			}
		default:
			if e == ns {
				return true
			}
		}
	}
	return false
}

// SidecarFor returns the Sidecar that applies to a workload in ns with
// labels: one selecting it in its namespace, else the namespace's default
// (no selector), else the root namespace's default. Nil when none does.
func (ix *Index) SidecarFor(ns string, labels map[string]string) *Sidecar {
	var dflt *Sidecar
	for _, sc := range ix.sidecars[ns] {
		sel := sc.Spec.GetWorkloadSelector().GetLabels()
		if len(sel) == 0 {
			if dflt == nil {
				dflt = sc
			}
			continue
		}
		if model.LabelsMatch(sel, labels) {
			return sc
		}
	}
	if dflt != nil {
		return dflt
	}
	for _, sc := range ix.sidecars[ix.RootNamespace] {
		if len(sc.Spec.GetWorkloadSelector().GetLabels()) == 0 {
			return sc
		}
	}
	return nil
}

// egressAllows reports whether a Sidecar's egress hosts ("ns/host",
// "./host", "*/host", "~/host") admit a service of namespace svcNS and host
// for a proxy in ns.
func egressAllows(sc *Sidecar, ns, svcNS, host string) bool {
	listeners := sc.Spec.GetEgress()
	if len(listeners) == 0 {
		return true
	}
	for _, l := range listeners {
		if EgressHostsAllow(l.GetHosts(), ns, svcNS, host) {
			return true
		}
	}
	return false
}

// Services returns the services a proxy in ns sees: those exported to ns,
// narrowed by sc when not nil. When several namespaces define the same host,
// the proxy's own namespace wins, else the first namespace in order.
func (ix *Index) Services(ns string, sc *Sidecar) []*model.Service {
	if ix.Registry == nil {
		return nil
	}
	var out []*model.Service
	for i := 0; i < len(ix.Registry.Services); {
		host := ix.Registry.Services[i].Hostname
		j := i
		for j < len(ix.Registry.Services) && ix.Registry.Services[j].Hostname == host {
			j++
		}
		var pick *model.Service
		for _, s := range ix.Registry.Services[i:j] {
			if !s.VisibleTo(ns) || (sc != nil && !egressAllows(sc, ns, s.Namespace, s.Hostname)) {
				continue
			}
			if pick == nil || s.Namespace == ns {
				pick = s
			}
		}
		if pick != nil {
			out = append(out, pick)
		}
		i = j
	}
	return out
}

// Service returns the service with host name host that a proxy in ns sees.
func (ix *Index) Service(ns, host string) *model.Service {
	var pick *model.Service
	for _, s := range ix.Registry.ByHost(host) {
		if !s.VisibleTo(ns) {
			continue
		}
		if pick == nil || s.Namespace == ns {
			pick = s
		}
	}
	return pick
}

// MeshVirtualServices returns the mesh-bound VirtualServices visible in ns
// whose hosts match host, first the one that routes it: exact host matches
// before wildcards, then the proxy's own namespace, then creation order
// (namespace, name).
func (ix *Index) MeshVirtualServices(ns, host string) []*VirtualService {
	var out []*VirtualService
	for _, i := range ix.meshCandidates(host) {
		if vs := ix.meshVS[i]; vs.routes(ns, host) {
			out = append(out, vs)
		}
	}
	slices.SortStableFunc(out, func(a, b *VirtualService) int {
		return cmp.Or(
			cmp.Compare(rankHost(a.Hosts, host), rankHost(b.Hosts, host)),
			boolRank(a.Namespace() != ns, b.Namespace() != ns),
		)
	})
	return out
}

// VirtualServiceFor returns the VirtualService that routes host for a
// proxy in ns on the mesh, or nil: the first of MeshVirtualServices, found
// in one pass without building and sorting the list, since route
// generation asks this for every host of every proxy group.
func (ix *Index) VirtualServiceFor(ns, host string) *VirtualService {
	var best *VirtualService
	bestRank, bestElsewhere := 0, false
	for _, i := range ix.meshCandidates(host) {
		vs := ix.meshVS[i]
		if !vs.routes(ns, host) {
			continue
		}
		// The order of MeshVirtualServices: exact host matches win over
		// wildcards, then the proxy's own namespace, then creation order.
		rank, elsewhere := rankHost(vs.Hosts, host), vs.Namespace() != ns
		if best == nil || rank < bestRank || rank == bestRank && bestElsewhere && !elsewhere {
			best, bestRank, bestElsewhere = vs, rank, elsewhere
		}
	}
	return best
}

// routes reports whether vs is visible to a proxy in ns and names host.
func (vs *VirtualService) routes(ns, host string) bool {
	if !exportedTo(vs.Spec.GetExportTo(), vs.Namespace(), ns) {
		return false
	}
	for _, h := range vs.Hosts {
		if HostMatches(h, host) {
			return true
		}
	}
	return false
}

func rankHost(hosts []string, host string) int {
	best := 3
	for _, h := range hosts {
		switch {
		case h == host:
			return 0
		case h != "*" && HostMatches(h, host):
			best = min(best, 1)
		case h == "*":
			best = min(best, 2)
		}
	}
	return best
}

func boolRank(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}

// GatewayVirtualServices returns the VirtualServices bound to gateway
// (namespace/name).
func (ix *Index) GatewayVirtualServices(gateway string) []*VirtualService {
	return ix.gatewayVS[gateway]
}

// DestinationRule returns the DestinationRule for host as seen by a proxy in
// ns, for a service owned by svcNS, or nil.
func (ix *Index) DestinationRule(ns, svcNS, host string) *DestinationRule {
	for _, look := range []string{ns, svcNS, ix.RootNamespace} {
		var best *DestinationRule
		for _, dr := range ix.drs[look] {
			if !exportedTo(dr.Spec.GetExportTo(), look, ns) || !HostMatches(dr.Host, host) {
				continue
			}
			if dr.Spec.GetWorkloadSelector() != nil {
				continue // workload-scoped rules apply to their workloads only
			}
			if best == nil || specificity(dr.Host) > specificity(best.Host) {
				best = dr
			}
		}
		if best != nil {
			return best
		}
	}
	return nil
}

func specificity(pattern string) int {
	if !strings.HasPrefix(pattern, "*") {
		return 1 << 20
	}
	return len(pattern)
}

// Subset returns the named subset of a DestinationRule, or nil.
func (dr *DestinationRule) Subset(name string) *networking.Subset {
	if dr == nil {
		return nil
	}
	for _, s := range dr.Spec.GetSubsets() {
		if s.GetName() == name {
			return s
		}
	}
	return nil
}

// Gateway returns a Gateway by namespace/name.
func (ix *Index) Gateway(name string) *Gateway { return ix.gateways[name] }

// GatewaysFor returns the Gateways whose selector matches a gateway proxy's
// labels, in namespace/name order.
func (ix *Index) GatewaysFor(labels map[string]string) []*Gateway {
	var out []*Gateway
	for _, g := range ix.gatewayList {
		if sel := g.Spec.GetSelector(); len(sel) > 0 && model.LabelsMatch(sel, labels) {
			out = append(out, g)
		}
	}
	return out
}

// ClusterName is Istio's outbound cluster name, outbound|PORT|SUBSET|HOST.
func ClusterName(port uint32, subset, host string) string {
	return "outbound|" + strconv.FormatUint(uint64(port), 10) + "|" + subset + "|" + host
}

// InboundClusterName is Istio's inbound cluster name for a workload port.
func InboundClusterName(port uint32) string {
	return fmt.Sprintf("inbound|%d||", port)
}

// ParseClusterName splits an outbound cluster name.
func ParseClusterName(name string) (port uint32, subset, host string, ok bool) {
	parts := strings.SplitN(name, "|", 4)
	if len(parts) != 4 || parts[0] != "outbound" {
		return 0, "", "", false
	}
	var p uint32
	if _, err := fmt.Sscanf(parts[1], "%d", &p); err != nil {
		return 0, "", "", false
	}
	return p, parts[2], parts[3], true
}

// SubsetEndpoints returns the endpoints of svc on port that a subset's
// labels select (all endpoints when subset is nil), healthy or not.
func SubsetEndpoints(svc *model.Service, port uint32, subset *networking.Subset) []*model.Endpoint {
	eps := svc.EndpointsFor(port)
	if subset == nil || len(subset.GetLabels()) == 0 {
		return eps
	}
	out := eps[:0:0]
	for _, e := range eps {
		if model.LabelsMatch(subset.GetLabels(), e.Labels) {
			out = append(out, e)
		}
	}
	return out
}
