package generate

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/security/authn"
)

// TLSModeLabel is the workload label Istio uses to say a workload accepts
// Istio mTLS; auto mTLS sends mTLS only to endpoints that carry it.
const TLSModeLabel = "security.istio.io/tlsMode"

// transportSocketMatchKey is the endpoint metadata filter Envoy matches
// transport_socket_matches against.
const transportSocketMatchKey = "envoy.transport_socket_match"

// LoadAssignments returns the ClusterLoadAssignments for the proxy: one
// per EDS cluster it sees when names is nil, otherwise one for each name
// that is an EDS cluster it sees (other names are left out, which tells the
// xDS server they do not exist for this proxy).
func LoadAssignments(s *Scope, names []string) []*endpointv3.ClusterLoadAssignment {
	if names == nil {
		refs := s.ClusterRefs()
		out := make([]*endpointv3.ClusterLoadAssignment, 0, len(refs))
		for _, r := range refs {
			if r.EDS() {
				out = append(out, LoadAssignment(s, r))
			}
		}
		slices.SortFunc(out, func(a, b *endpointv3.ClusterLoadAssignment) int { return strings.Compare(a.ClusterName, b.ClusterName) })
		return out
	}
	out := make([]*endpointv3.ClusterLoadAssignment, 0, len(names))
	for _, n := range names {
		if r, ok := s.ClusterRef(n); ok && r.EDS() {
			out = append(out, LoadAssignment(s, r))
		}
	}
	return out
}

// LoadAssignment returns the endpoints of one cluster. A cluster without
// endpoints gets an assignment with no localities, which Envoy and grpc-go
// both take as "no healthy upstream" rather than an error.
func LoadAssignment(s *Scope, r ClusterRef) *endpointv3.ClusterLoadAssignment {
	if s.Cache == nil {
		return buildLoadAssignment(s, r)
	}
	cla, v := s.Cache.loadAssignment(s, r)
	s.setVersion(cla, v)
	return cla
}

func buildLoadAssignment(s *Scope, r ClusterRef) *endpointv3.ClusterLoadAssignment {
	eps := index.SubsetEndpoints(r.Service, r.Port.Number, r.Subset)
	return &endpointv3.ClusterLoadAssignment{ClusterName: r.Name, Endpoints: localityGroups(s, r, eps, s.Policy(r))}
}

type localityGroup struct {
	loc      model.Locality
	key      string
	lbs      []*endpointv3.LbEndpoint
	weight   uint64 // sum of endpoint weights
	level    uint32 // failoverPriority level of every endpoint in it
	priority uint32
}

// localityGroups groups endpoints by locality. Every group has a locality
// (possibly empty) and a non-zero weight, since grpc-go silently drops a
// locality without weight and rejects a group without locality. Locality
// weights are the sum of endpoint weights unless a distribute rule sets
// them; priorities implement locality failover when the policy asks for it.
//
// failoverPriority ranks endpoints rather than localities, so with it a
// group is a locality and a failoverPriority level: one locality may be
// listed once per level, each in its own priority, which grpc-go accepts
// (it rejects a locality listed twice in one priority).
func localityGroups(s *Scope, r ClusterRef, eps []*model.Endpoint, tp *networking.TrafficPolicy) []*endpointv3.LocalityLbEndpoints {
	if len(eps) == 0 {
		return nil
	}
	lb := tp.GetLoadBalancer()
	ll := lb.GetLocalityLbSetting()
	rule := distributeRule(s, lb)
	// As in Istio, failover needs outlier detection: without it nothing
	// ever marks the preferred endpoints unhealthy, and traffic would
	// stay on them however they fail.
	failover := rule == nil && tp.GetOutlierDetection() != nil && localityLBEnabled(lb)
	var byLabels []priorityLabel
	if failover && len(ll.GetFailoverPriority()) > 0 {
		byLabels = priorityLabels(ll.GetFailoverPriority(), s.workload())
	}
	var groups []*localityGroup
	var seen map[string]bool // for long lists; short ones are scanned
	if len(eps) > 16 {
		seen = make(map[string]bool, len(eps))
	}
	for i, e := range eps {
		// grpc-go rejects an assignment listing one address twice.
		if seen != nil {
			addr := e.Address + ":" + strconv.FormatUint(uint64(e.Port), 10)
			if seen[addr] {
				continue
			}
			seen[addr] = true
		} else if duplicate(eps[:i], e) {
			continue
		}
		var level uint32
		if byLabels != nil {
			level = labelLevel(byLabels, workload{labels: e.Labels, locality: e.Locality, network: e.Network})
		}
		var g *localityGroup
		for _, x := range groups {
			if x.loc == e.Locality && x.level == level {
				g = x
				break
			}
		}
		if g == nil {
			g = &localityGroup{loc: e.Locality, key: e.Locality.String(), level: level}
			groups = append(groups, g)
		}
		g.lbs = append(g.lbs, lbEndpoint(s, r, e))
		g.weight += uint64(e.LBWeight())
	}
	slices.SortFunc(groups, func(a, b *localityGroup) int {
		return cmp.Or(strings.Compare(a.key, b.key), cmp.Compare(a.level, b.level))
	})

	var weights []uint32
	switch {
	case rule != nil:
		weights = distribute(rule, groups)
	case byLabels != nil:
		// Istio: the failoverPriority level decides; with failover rules
		// too, the locality level orders endpoints within each level.
		byLocality := len(ll.GetFailover()) > 0 && s.Locality.Region != ""
		to := failoverTo(s, ll)
		for _, g := range groups {
			g.priority = g.level * localityLevels
			if byLocality {
				g.priority += localityLevel(s.Locality, g.loc, to)
			}
		}
		squeeze(groups)
	case failover && s.Locality.Region != "":
		to := failoverTo(s, ll)
		for _, g := range groups {
			g.priority = localityLevel(s.Locality, g.loc, to)
		}
		squeeze(groups)
	}

	out := make([]*endpointv3.LocalityLbEndpoints, 0, len(groups))
	for i, g := range groups {
		w := g.weight
		if weights != nil {
			w = uint64(weights[i])
			if w == 0 {
				continue // not a destination of the distribute rule
			}
		}
		out = append(out, &endpointv3.LocalityLbEndpoints{
			Locality:            &corev3.Locality{Region: g.loc.Region, Zone: g.loc.Zone, SubZone: g.loc.Subzone},
			LbEndpoints:         g.lbs,
			LoadBalancingWeight: wrapperspb.UInt32(uint32(min(max(w, 1), 1<<31))),
			Priority:            g.priority,
		})
	}
	return out
}

// weightOne is the weight of most endpoints, shared.
var weightOne = wrapperspb.UInt32(1)

// tlsModeIstio is the endpoint metadata auto mTLS matches, shared.
var tlsModeIstio = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
	transportSocketMatchKey: {Fields: map[string]*structpb.Value{"tlsMode": structpb.NewStringValue("istio")}},
}}

// duplicate reports whether an earlier endpoint has e's address and port.
func duplicate(before []*model.Endpoint, e *model.Endpoint) bool {
	for i := len(before) - 1; i >= 0; i-- {
		b := before[i]
		if b.Address == e.Address && b.Port == e.Port {
			return true
		}
	}
	return false
}

func lbEndpoint(s *Scope, r ClusterRef, e *model.Endpoint) *endpointv3.LbEndpoint {
	w := weightOne
	if e.LBWeight() != 1 {
		w = wrapperspb.UInt32(e.LBWeight())
	}
	lb := &endpointv3.LbEndpoint{
		HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: SocketAddress(e.Address, e.Port),
		}},
		LoadBalancingWeight: w,
	}
	switch e.Health {
	case model.Unhealthy:
		lb.HealthStatus = corev3.HealthStatus_UNHEALTHY
	case model.Draining:
		lb.HealthStatus = corev3.HealthStatus_DRAINING
	default:
		lb.HealthStatus = corev3.HealthStatus_HEALTHY
	}
	// Auto mTLS sends mTLS to endpoints in the mesh whose
	// PeerAuthentication does not disable it on their port.
	if s.Flavor == Envoy && e.Labels[TLSModeLabel] == "istio" && authn.For(s.Index).EndpointAccepts(r.Service, e) {
		lb.Metadata = tlsModeIstio
	}
	return lb
}

// SocketAddress returns a TCP socket address.
func SocketAddress(addr string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       addr,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// distributeRule returns the first locality distribute rule whose "from"
// matches the proxy's locality, or nil when none does.
func distributeRule(s *Scope, lb *networking.LoadBalancerSettings) *networking.LocalityLoadBalancerSetting_Distribute {
	if !localityLBEnabled(lb) {
		return nil
	}
	for _, d := range lb.GetLocalityLbSetting().GetDistribute() {
		if LocalityMatches(d.GetFrom(), s.Locality) {
			return d
		}
	}
	return nil
}

// distribute applies a distribute rule: each "to" entry's weight is
// shared by the localities it matches in proportion to their endpoint
// counts, and localities no entry matches get no traffic.
func distribute(rule *networking.LocalityLoadBalancerSetting_Distribute, groups []*localityGroup) []uint32 {
	weights := make([]uint32, len(groups))
	taken := make([]bool, len(groups))
	for _, to := range sortedKeys(rule.GetTo()) {
		w := rule.GetTo()[to]
		var idx []int
		total := 0
		for i, g := range groups {
			if !taken[i] && LocalityMatches(to, g.loc) {
				idx = append(idx, i)
				total += len(g.lbs)
			}
		}
		for _, i := range idx {
			taken[i] = true
			if w > 0 {
				weights[i] = max(1, uint32(uint64(w)*uint64(len(groups[i].lbs))/uint64(total)))
			}
		}
	}
	return weights
}

// localityLevels is the number of locality failover levels (localityLevel
// returns 0 to 4).
const localityLevels = 5

// failoverTo returns the region a failover rule names for the proxy's
// region, or "".
func failoverTo(s *Scope, ll *networking.LocalityLoadBalancerSetting) string {
	for _, f := range ll.GetFailover() {
		if f.GetFrom() == s.Locality.Region {
			return f.GetTo()
		}
	}
	return ""
}

// localityLevel is Istio's locality failover level of locality l for a
// proxy in p: 0 in the same subzone, 1 in the same zone, 2 in the same
// region, 3 in the region failover names (to), 4 anywhere else.
func localityLevel(p, l model.Locality, to string) uint32 {
	switch {
	case l.Region == p.Region && l.Zone == p.Zone && l.Subzone == p.Subzone:
		return 0
	case l.Region == p.Region && l.Zone == p.Zone:
		return 1
	case l.Region == p.Region:
		return 2
	case to != "" && l.Region == to:
		return 3
	default:
		return 4
	}
}

// squeeze renumbers the groups' priorities 0, 1, 2, ... in their order,
// leaving out unused levels: grpc-go rejects an assignment whose
// priorities have gaps.
func squeeze(groups []*localityGroup) {
	used := make([]uint32, 0, localityLevels)
	for _, g := range groups {
		if !slices.Contains(used, g.priority) {
			used = append(used, g.priority)
		}
	}
	slices.SortFunc(used, cmp.Compare)
	for _, g := range groups {
		g.priority = uint32(slices.Index(used, g.priority))
	}
}

// LocalityMatches reports whether locality l matches pattern, Istio's
// region/zone/subzone form where "*" matches anything from that level down
// and a missing level matches any value.
func LocalityMatches(pattern string, l model.Locality) bool {
	if pattern == "" {
		return false
	}
	parts := strings.SplitN(pattern, "/", 3)
	have := []string{l.Region, l.Zone, l.Subzone}
	for i, p := range parts {
		if p == "*" {
			return true
		}
		if p != have[i] {
			return false
		}
	}
	return true
}
