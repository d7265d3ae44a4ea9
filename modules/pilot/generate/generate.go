// Package generate turns pilot's index (services, endpoints, VirtualServices,
// DestinationRules, Sidecars) into the xDS resources that every proxy type
// shares: outbound clusters (CDS), their endpoints (EDS) and HTTP routes
// (RDS virtual hosts). The proxyless gRPC generator (generate/proxyless) and
// the Envoy sidecar and gateway generators (generate/envoy) build their
// listeners around these, so a traffic rule means the same thing whichever
// proxy enforces it.
//
// # API
//
// Everything starts from a Scope: one proxy's view of one index.
//
//	s := generate.NewScope(ix, proxy, generate.Envoy)    // or generate.Proxyless
//	key := generate.Key(ix, proxy)                       // what the builders below read from proxy
//
//	clusters := generate.Clusters(s)                     // CDS: every outbound|PORT|SUBSET|HOST the proxy sees
//	clas := generate.LoadAssignments(s, names)           // EDS: nil names = one per EDS cluster, else only those
//	vhs := generate.VirtualHosts(s, port)                // RDS: a virtual host per HTTP service on port (sidecar route "PORT")
//	vh := generate.VirtualHost(s, svc, port)             // RDS: one service's virtual host
//	vhs := generate.GatewayVirtualHosts(s, gw, server)   // RDS: a gateway server's bound VirtualServices
//	filters := generate.HTTPFilters(flavor)              // HCM http_filters, router last
//
// Cluster names follow Istio (outbound|PORT|SUBSET|HOST); every EDS cluster
// has exactly one ClusterLoadAssignment, possibly empty, so a service
// without endpoints is a valid empty cluster rather than a broken push.
//
// # Flavors
//
// Envoy and grpc-go's xDS client read the same resource types but accept
// different subsets of them. The Flavor switch keeps one translation with
// the differences in one place:
//
//   - route timeouts go in route.timeout for Envoy and in
//     max_stream_duration for grpc-go, which ignores route.timeout;
//   - retries: Envoy gets Istio's default retry policy when a route sets
//     none; grpc-go gets retries only when asked, with retry_on reduced to
//     the gRPC status names it understands and num_retries >= 1;
//   - consistent hashing on a cookie or the source IP, which grpc-go cannot
//     see, hashes on the channel ID for proxyless clients (per-client
//     stickiness, which is what source-IP hashing gives a sidecar); Maglev
//     becomes a ring hash, RANDOM becomes round robin;
//   - outlier detection: grpc-go has no consecutive-error ejection (gRFC
//     A50 has success-rate and failure-percentage ejection only), so
//     "N consecutive errors" becomes "more than half of at least N requests
//     in an interval failed";
//   - TLS: Envoy reads certificates over SDS (default, ROOTCA, file-cert:,
//     file-root: secret names); grpc-go only takes certificate provider
//     instances from its bootstrap, and rejects transport_socket_matches,
//     so auto mTLS is Envoy-only;
//   - header rewrites, mirroring, CORS and WebSocket upgrades are Envoy-only
//     (grpc-go rejects a CORS per-filter config and ignores the rest);
//   - STRICT_DNS and ORIGINAL_DST clusters are Envoy-only; proxyless
//     clients get LOGICAL_DNS for DNS services and nothing for
//     passthrough ones.
//
// Builders never fail: input galley accepted but that cannot be honoured
// (a subset nobody defines, a destination that is not a service) yields a
// route to a cluster that does not exist or an empty cluster, which both
// proxies handle as "no healthy upstream", never a rejected push.
package generate

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// Flavor selects the dialect of xDS a proxy understands.
type Flavor int

// Flavors.
const (
	// Envoy is Envoy as a sidecar or gateway.
	Envoy Flavor = iota
	// Proxyless is grpc-go's (and other gRPC languages') xDS client.
	Proxyless
)

func (f Flavor) String() string {
	if f == Proxyless {
		return "proxyless"
	}
	return "envoy"
}

// FlavorOf returns the flavor of a proxy type.
func FlavorOf(t xdsapi.ProxyType) Flavor {
	if t == xdsapi.Proxyless {
		return Proxyless
	}
	return Envoy
}

// Scope is one proxy's view of an index: the namespace it sees from, the
// Sidecar that narrows it, and the labels and locality that routing and
// endpoint rules may depend on. It caches what several builders need, so
// build one per generation and do not share it between goroutines.
type Scope struct {
	Index *index.Index
	// Flavor is the proxy's dialect.
	Flavor Flavor
	// Namespace the proxy runs in; it decides visibility and which
	// DestinationRules apply.
	Namespace string
	// Labels are the proxy's workload labels, for sourceLabels matches.
	Labels map[string]string
	// Locality is the proxy's own locality, for locality-aware endpoints.
	Locality model.Locality
	// Network is the proxy's network (node metadata NETWORK), which
	// failoverPriority may compare endpoints' networks with.
	Network string
	// Sidecar narrows the services a sidecar or proxyless client sees; nil
	// for gateways and where no Sidecar applies.
	Sidecar *index.Sidecar
	// Gateway is true for gateway proxies: VirtualServices bound to
	// gateways are theirs, not the mesh's.
	Gateway bool
	// Cache, when set, is where clusters and endpoints are looked up before
	// they are built, and where built ones are kept for other scopes.
	Cache *Cache
	// MTLSCapable says the proxy can originate auto mTLS. Envoy always can
	// (the node agent serves its certificates). A proxyless client can when
	// it has a workload identity (NAMESPACE and SERVICE_ACCOUNT), which
	// means it runs with the agent's bootstrap and the certificate provider
	// instance auto mTLS names; grpc-go rejects clusters naming a provider
	// its bootstrap lacks, so clients without an identity get plaintext.
	MTLSCapable bool

	services []*model.Service
	refs     []ClusterRef
	byName   map[string]int
	policies map[policyKey]*networking.TrafficPolicy
	mtls     map[mtlsKey][]byte
	versions map[proto.Message]string
}

func (s *Scope) setVersion(m proto.Message, v string) {
	if s.versions == nil {
		s.versions = map[proto.Message]string{}
	}
	s.versions[m] = v
}

// Version returns the version of a message this scope took from its
// Cache, or "" for one it built without. Two equal non-empty versions mean
// the same message, so the xds server may reuse its earlier encoding
// (xdsapi.Resource.Version).
func (s *Scope) Version(m proto.Message) string { return s.versions[m] }

// NewScope returns p's view of ix in flavor f. p may be nil in tests and
// benchmarks (a sidecar in "default" with no labels).
func NewScope(ix *index.Index, p *xdsapi.Proxy, f Flavor) *Scope {
	s := &Scope{Index: ix, Flavor: f, Namespace: "default", MTLSCapable: f == Envoy}
	if p != nil {
		s.MTLSCapable = f == Envoy || p.Identity != ""
		if p.Namespace != "" {
			s.Namespace = p.Namespace
		}
		w := proxyWorkload(p)
		s.Labels, s.Locality, s.Network = w.labels, w.locality, w.network
		s.Gateway = p.Type == xdsapi.Gateway
	}
	if !s.Gateway {
		s.Sidecar = ix.SidecarFor(s.Namespace, s.Labels)
	}
	return s
}

// Key returns the part of a generator key that covers everything this
// package reads from a proxy: its type (flavor, gateway or not), namespace,
// the Sidecar that applies to it, which sourceLabels selectors its labels
// match, its locality when some DestinationRule makes endpoints depend
// on it, and its values of the labels failoverPriority rules name.
// Generators that read more (listeners read a sidecar's IP and labels)
// append their own parts.
func Key(ix *index.Index, p *xdsapi.Proxy) string {
	var b strings.Builder
	b.Grow(64)
	b.WriteString(string(p.Type))
	b.WriteByte('|')
	ns := p.Namespace
	if ns == "" {
		ns = "default"
	}
	b.WriteString(ns)
	if p.Type == xdsapi.Proxyless && p.Identity != "" {
		b.WriteString("|mtls") // Scope.MTLSCapable
	}
	if p.Type != xdsapi.Gateway {
		if sc := ix.SidecarFor(ns, p.Labels); sc != nil {
			b.WriteString("|sc=")
			b.WriteString(sc.Object.Namespace)
			b.WriteByte('/')
			b.WriteString(sc.Object.Name)
		}
	}
	if sels := ix.SourceSelectors(); len(sels) > 0 {
		b.WriteString("|src=")
		for _, sel := range sels {
			if model.LabelsMatch(sel, p.Labels) {
				b.WriteByte('1')
			} else {
				b.WriteByte('0')
			}
		}
	}
	if ix.LocalitySensitive() {
		if l := p.Node.GetLocality(); l != nil {
			b.WriteString("|loc=")
			b.WriteString(l.GetRegion())
			b.WriteByte('/')
			b.WriteString(l.GetZone())
			b.WriteByte('/')
			b.WriteString(l.GetSubZone())
		}
	}
	if labels := ix.FailoverPriorityLabels(); len(labels) > 0 {
		// Only the named labels: proxies that differ in others keep
		// sharing one generated set. Topology labels resolve to the
		// proxy's locality and network, as endpoints compare them.
		w := proxyWorkload(p)
		b.WriteString("|fp=")
		for _, l := range labels {
			writeKeyValue(&b, w.label(l))
		}
	}
	return b.String()
}

// Services returns the services the proxy sees, sorted by host name.
func (s *Scope) Services() []*model.Service {
	if s.services == nil {
		s.services = s.Index.Services(s.Namespace, s.Sidecar)
		if s.services == nil {
			s.services = []*model.Service{}
		}
	}
	return s.services
}

// Service returns the service with host name host that the proxy sees.
func (s *Scope) Service(host string) *model.Service {
	svcs := s.Services()
	i, ok := slices.BinarySearchFunc(svcs, host, func(svc *model.Service, h string) int { return strings.Compare(svc.Hostname, h) })
	if !ok {
		return nil
	}
	return svcs[i]
}

// ClusterRef is one outbound cluster: a service port, optionally narrowed
// to a DestinationRule subset.
type ClusterRef struct {
	// Name is outbound|PORT|SUBSET|HOST.
	Name    string
	Service *model.Service
	Port    model.Port
	// Subset is the DestinationRule subset, nil for the whole service.
	Subset *networking.Subset
	// Rule is the DestinationRule that applies, or nil.
	Rule *index.DestinationRule
}

// SubsetName returns the subset's name, "" for the whole service.
func (r ClusterRef) SubsetName() string { return r.Subset.GetName() }

// EDS reports whether the cluster's endpoints come over EDS (rather than
// DNS or the original destination).
func (r ClusterRef) EDS() bool {
	return r.Service.Resolution == model.ResolutionStatic && !isPassthrough(r)
}

func isPassthrough(r ClusterRef) bool {
	return r.Service.Resolution == model.ResolutionNone || strings.HasPrefix(r.Service.Hostname, "*")
}

// ClusterRefs returns every outbound cluster the proxy sees: for each
// visible service and port the whole-service cluster and one per subset of
// the DestinationRule that applies, in service, port, subset order.
func (s *Scope) ClusterRefs() []ClusterRef {
	if s.refs != nil {
		return s.refs
	}
	s.refs = []ClusterRef{}
	s.byName = map[string]int{}
	for _, svc := range s.Services() {
		dr := s.Index.DestinationRule(s.Namespace, svc.Namespace, svc.Hostname)
		for _, p := range svc.Ports {
			s.addRef(ClusterRef{Name: index.ClusterName(p.Number, "", svc.Hostname), Service: svc, Port: p, Rule: dr})
			if dr == nil {
				continue
			}
			for _, sub := range dr.Spec.GetSubsets() {
				if sub.GetName() == "" {
					continue
				}
				s.addRef(ClusterRef{Name: index.ClusterName(p.Number, sub.GetName(), svc.Hostname), Service: svc, Port: p, Subset: sub, Rule: dr})
			}
		}
	}
	return s.refs
}

func (s *Scope) addRef(r ClusterRef) {
	if _, dup := s.byName[r.Name]; dup {
		return // a DestinationRule naming one subset twice; galley warns
	}
	s.byName[r.Name] = len(s.refs)
	s.refs = append(s.refs, r)
}

// ClusterRef returns the outbound cluster named name, if the proxy sees it.
func (s *Scope) ClusterRef(name string) (ClusterRef, bool) {
	s.ClusterRefs()
	i, ok := s.byName[name]
	if !ok {
		return ClusterRef{}, false
	}
	return s.refs[i], true
}

// destination resolves a VirtualService destination written in namespace
// ns for traffic that arrived on port: its cluster name and service (nil
// when the host is not a service the proxy sees). The port is the one the
// destination names, else the service's only port, else the port the
// traffic arrived on, as in Istio.
func (s *Scope) destination(d *networking.Destination, ns string, port uint32) (string, *model.Service) {
	host := s.Index.ExpandHost(d.GetHost(), ns)
	svc := s.Service(host)
	p := d.GetPort().GetNumber()
	if p == 0 {
		if svc != nil && len(svc.Ports) == 1 {
			p = svc.Ports[0].Number
		} else {
			p = port
		}
	}
	return index.ClusterName(p, d.GetSubset(), host), svc
}

// HostAliases returns the names a client in the scope's namespace may use
// for svc on port; see hostAliases.
func HostAliases(s *Scope, svc *model.Service, port uint32) []string { return s.hostAliases(svc, port) }

// hostAliases returns the names a client may use for svc on port from the
// proxy's namespace: the FQDN, and for Kubernetes-style names
// (name.ns.svc.<domain>) the shorter name.ns.svc, name.ns and, in the
// service's own namespace, name; each bare and with :port, plus the
// service's addresses.
func (s *Scope) hostAliases(svc *model.Service, port uint32) []string {
	ps := ":" + strconv.FormatUint(uint64(port), 10)
	out := []string{svc.Hostname, svc.Hostname + ps}
	suffix := ".svc." + s.Index.Mesh.ClusterDomain
	if base, ok := strings.CutSuffix(svc.Hostname, suffix); ok {
		if name, ns, ok := strings.Cut(base, "."); ok && !strings.Contains(ns, ".") {
			out = append(out, base+".svc", base+".svc"+ps, base, base+ps)
			if ns == s.Namespace {
				out = append(out, name, name+ps)
			}
		}
	}
	for _, a := range svc.Addresses {
		if !strings.Contains(a, "/") { // a CIDR is no domain
			out = append(out, a, a+ps)
		}
	}
	return out
}

// sortedKeys returns m's keys in order, so output built from maps is stable.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func compareRefs(a, b ClusterRef) int {
	return cmp.Compare(a.Name, b.Name)
}
