package generate

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/meshd/meshd/modules/pilot/model"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// TestLabelLevel checks the failoverPriority level of single endpoints:
// the number of labels left after the leading ones they match.
func TestLabelLevel(t *testing.T) {
	r1z1 := model.Locality{Region: "r1", Zone: "z1", Subzone: "s1"}
	proxy := workload{
		labels:   map[string]string{"version": "v1", "team": "a", "tier": "gold"},
		locality: r1z1,
		network:  "n1",
	}
	three := []string{"version", "team", "tier"}
	topo := []string{LabelRegion, LabelZone, LabelSubzone}
	tests := []struct {
		name    string
		entries []string
		proxy   workload
		ep      workload
		want    uint32
	}{
		{"all match", three, proxy, workload{labels: map[string]string{"version": "v1", "team": "a", "tier": "gold"}}, 0},
		{"first two match", three, proxy, workload{labels: map[string]string{"version": "v1", "team": "a", "tier": "silver"}}, 1},
		{"first only", three, proxy, workload{labels: map[string]string{"version": "v1", "team": "b", "tier": "gold"}}, 2},
		{"none", three, proxy, workload{labels: map[string]string{"version": "v2", "team": "a", "tier": "gold"}}, 3},
		{"missing label does not match a set one", three, proxy, workload{labels: map[string]string{"team": "a"}}, 3},
		{"a label both lack matches", []string{"absent", "version"}, proxy, workload{labels: map[string]string{"version": "v1"}}, 0},
		{"region, zone and subzone from localities", topo, proxy, workload{locality: r1z1}, 0},
		{"other subzone", topo, proxy, workload{locality: model.Locality{Region: "r1", Zone: "z1", Subzone: "s2"}}, 1},
		{"other zone, same subzone name", topo, proxy, workload{locality: model.Locality{Region: "r1", Zone: "z2", Subzone: "s1"}}, 2},
		{"other region", topo, proxy, workload{locality: model.Locality{Region: "r2", Zone: "z1", Subzone: "s1"}}, 3},
		{"locality wins over a region label", topo[:1], proxy,
			workload{labels: map[string]string{LabelRegion: "r1"}, locality: model.Locality{Region: "r2"}}, 1},
		{"a region label stands in for a missing locality", topo[:1], proxy,
			workload{labels: map[string]string{LabelRegion: "r1"}}, 0},
		{"same network", []string{LabelNetwork}, proxy, workload{network: "n1"}, 0},
		{"other network", []string{LabelNetwork}, proxy, workload{network: "n2"}, 1},
		{"a network label wins over the reported network", []string{LabelNetwork}, proxy,
			workload{labels: map[string]string{LabelNetwork: "n1"}, network: "n2"}, 0},
		{"network then version", []string{LabelNetwork, "version"}, proxy,
			workload{labels: map[string]string{"version": "v2"}, network: "n1"}, 1},
		{"label=value compares with the value, not the proxy", []string{"version=v2", "team"}, proxy,
			workload{labels: map[string]string{"version": "v2", "team": "a"}}, 0},
		{"label=value mismatch", []string{"version=v2", "team"}, proxy,
			workload{labels: map[string]string{"version": "v1", "team": "a"}}, 2},
		{"unlabelled proxy prefers unlabelled endpoints", []string{"version"}, workload{},
			workload{labels: map[string]string{"version": "v1"}}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := labelLevel(priorityLabels(tt.entries, tt.proxy), tt.ep); got != tt.want {
				t.Errorf("level %d, want %d", got, tt.want)
			}
		})
	}
}

// fpService is service a with endpoints that differ in version, team,
// locality and network, and a DestinationRule with policy.
func fpService(policy string) string {
	return `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: ns}
spec:
  hosts: [a.ns.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: grpc, number: 80, protocol: GRPC}]
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1, team: a}, locality: r1/z1, network: n1}
  - {address: 10.0.0.2, labels: {version: v1, team: b}, locality: r1/z1, network: n1}
  - {address: 10.0.0.3, labels: {version: v2, team: a}, locality: r1/z1, network: n2}
  - {address: 10.0.0.4, labels: {version: v1, team: a}, locality: r1/z2, network: n1}
  - {address: 10.0.0.5, labels: {version: v1, team: a}, locality: r2/z3, network: n2}
  - {address: 10.0.0.6, labels: {version: v2, team: b}, locality: r3/z4, network: n2}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: ns}
spec:
  host: a
  trafficPolicy:
` + policy
}

// priorities returns each endpoint address's priority in cla.
func priorities(cla *endpointv3.ClusterLoadAssignment) map[string]uint32 {
	out := map[string]uint32{}
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			out[e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()] = l.GetPriority()
		}
	}
	return out
}

// checkGRPCAccepts applies grpc-go's (1.85) EDS checks, which a NACK
// would otherwise report only at run time: every locality has an ID and a
// weight, no locality appears twice in one priority, priorities have no
// gaps, and no address appears twice. It also runs ValidateAll.
func checkGRPCAccepts(t *testing.T, cla *endpointv3.ClusterLoadAssignment) {
	t.Helper()
	if err := cla.ValidateAll(); err != nil {
		t.Fatalf("ValidateAll: %v", err)
	}
	seen := map[string]bool{}
	addrs := map[string]bool{}
	used := map[uint32]bool{}
	for _, l := range cla.GetEndpoints() {
		if l.GetLocality() == nil || l.GetLoadBalancingWeight().GetValue() == 0 {
			t.Fatalf("locality %v without ID or weight", l.GetLocality())
		}
		k := fmt.Sprintf("%d/%s", l.GetPriority(), l.GetLocality())
		if seen[k] {
			t.Fatalf("duplicate locality %s in priority %d", l.GetLocality(), l.GetPriority())
		}
		seen[k] = true
		used[l.GetPriority()] = true
		for _, e := range l.GetLbEndpoints() {
			a := e.GetEndpoint().GetAddress().GetSocketAddress()
			k := fmt.Sprintf("%s:%d", a.GetAddress(), a.GetPortValue())
			if addrs[k] {
				t.Fatalf("duplicate address %s", k)
			}
			addrs[k] = true
		}
	}
	for p := range uint32(len(used)) {
		if !used[p] {
			t.Fatalf("priority %d missing from %v", p, slices.Sorted(maps.Keys(used)))
		}
	}
}

// TestFailoverPriorityAssignment checks the priorities of whole
// assignments: label levels, topology labels, the combination with
// failover rules, squeezing, and when failoverPriority does not apply.
func TestFailoverPriorityAssignment(t *testing.T) {
	const od = "    outlierDetection: {consecutive5xxErrors: 5}\n"
	client := map[string]string{"version": "v1", "team": "a"}
	tests := []struct {
		name     string
		policy   string
		labels   map[string]string
		locality string
		network  string
		want     map[string]uint32
	}{
		{"version then team", od + "    loadBalancer: {localityLbSetting: {failoverPriority: [version, team]}}\n", client, "r1/z1", "",
			// .1 .4 .5 match both, .2 matches version only, .3 .6 neither.
			map[string]uint32{"10.0.0.1": 0, "10.0.0.4": 0, "10.0.0.5": 0, "10.0.0.2": 1, "10.0.0.3": 2, "10.0.0.6": 2}},
		{"squeezed: levels 0 and 2 become 0 and 1", od + "    loadBalancer: {localityLbSetting: {failoverPriority: [version, app]}}\n", client, "r1/z1", "",
			// nobody has app, so no endpoint is at level 1
			map[string]uint32{"10.0.0.1": 0, "10.0.0.2": 0, "10.0.0.4": 0, "10.0.0.5": 0, "10.0.0.3": 1, "10.0.0.6": 1}},
		{"all match: one priority", od + "    loadBalancer: {localityLbSetting: {failoverPriority: [app]}}\n", client, "r1/z1", "",
			map[string]uint32{"10.0.0.1": 0, "10.0.0.2": 0, "10.0.0.3": 0, "10.0.0.4": 0, "10.0.0.5": 0, "10.0.0.6": 0}},
		{"region and zone labels follow localities", od + "    loadBalancer: {localityLbSetting: {failoverPriority: [topology.kubernetes.io/region, topology.kubernetes.io/zone]}}\n", nil, "r1/z2", "",
			map[string]uint32{"10.0.0.4": 0, "10.0.0.1": 1, "10.0.0.2": 1, "10.0.0.3": 1, "10.0.0.5": 2, "10.0.0.6": 2}},
		{"network from node metadata", od + "    loadBalancer: {localityLbSetting: {failoverPriority: [topology.istio.io/network, version]}}\n", client, "r1/z1", "n2",
			map[string]uint32{"10.0.0.5": 0, "10.0.0.3": 1, "10.0.0.6": 1, "10.0.0.1": 2, "10.0.0.2": 2, "10.0.0.4": 2}},
		{"with failover: label level first, locality within it", od +
			"    loadBalancer: {localityLbSetting: {failoverPriority: [version], failover: [{from: r1, to: r3}]}}\n", client, "r1/z1", "",
			// version v1: .1 .2 same zone, .4 same region, .5 elsewhere;
			// v2: .3 same zone, .6 the failover region.
			map[string]uint32{"10.0.0.1": 0, "10.0.0.2": 0, "10.0.0.4": 1, "10.0.0.5": 2, "10.0.0.3": 3, "10.0.0.6": 4}},
		{"with failover but no proxy region: labels only", od +
			"    loadBalancer: {localityLbSetting: {failoverPriority: [version], failover: [{from: r1, to: r3}]}}\n", client, "", "",
			map[string]uint32{"10.0.0.1": 0, "10.0.0.2": 0, "10.0.0.4": 0, "10.0.0.5": 0, "10.0.0.3": 1, "10.0.0.6": 1}},
		{"without failover rules no locality levels", od + "    loadBalancer: {localityLbSetting: {failoverPriority: [team]}}\n", client, "r1/z1", "",
			map[string]uint32{"10.0.0.1": 0, "10.0.0.3": 0, "10.0.0.4": 0, "10.0.0.5": 0, "10.0.0.2": 1, "10.0.0.6": 1}},
		{"label=value ignores the proxy's label", od + "    loadBalancer: {localityLbSetting: {failoverPriority: [version=v2]}}\n", client, "r1/z1", "",
			map[string]uint32{"10.0.0.3": 0, "10.0.0.6": 0, "10.0.0.1": 1, "10.0.0.2": 1, "10.0.0.4": 1, "10.0.0.5": 1}},
		{"without outlier detection: one priority", "    loadBalancer: {localityLbSetting: {failoverPriority: [version]}}\n", client, "r1/z1", "",
			map[string]uint32{"10.0.0.1": 0, "10.0.0.2": 0, "10.0.0.3": 0, "10.0.0.4": 0, "10.0.0.5": 0, "10.0.0.6": 0}},
		{"locality LB disabled: one priority", od + "    loadBalancer: {localityLbSetting: {enabled: false, failoverPriority: [version]}}\n", client, "r1/z1", "",
			map[string]uint32{"10.0.0.1": 0, "10.0.0.2": 0, "10.0.0.3": 0, "10.0.0.4": 0, "10.0.0.5": 0, "10.0.0.6": 0}},
		{"empty failoverPriority: locality failover as before", od, client, "r1/z1", "",
			map[string]uint32{"10.0.0.1": 0, "10.0.0.2": 0, "10.0.0.3": 0, "10.0.0.4": 1, "10.0.0.5": 2, "10.0.0.6": 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := proxy(xdsapi.Proxyless, "ns", tt.labels, tt.locality)
			if tt.network != "" {
				p.Metadata = map[string]string{"NETWORK": tt.network}
			}
			for _, f := range []Flavor{Proxyless, Envoy} {
				s := NewScope(buildIndex(t, fpService(tt.policy)), p, f)
				r, ok := s.ClusterRef("outbound|80||" + aHost)
				if !ok {
					t.Fatal("no cluster")
				}
				cla := LoadAssignment(s, r)
				checkGRPCAccepts(t, cla)
				if got := priorities(cla); !maps.Equal(got, tt.want) {
					t.Errorf("%s: priorities %v, want %v", f, got, tt.want)
				}
			}
		})
	}
}

// TestFailoverPrioritySplitsLocalities checks that endpoints of one
// locality in different priorities are separate groups with their own
// weights, the shape grpc-go accepts (one locality once per priority).
func TestFailoverPrioritySplitsLocalities(t *testing.T) {
	ix := buildIndex(t, fpService("    outlierDetection: {consecutive5xxErrors: 5}\n    loadBalancer: {localityLbSetting: {failoverPriority: [version, team]}}\n"))
	s := NewScope(ix, proxy(xdsapi.Proxyless, "ns", map[string]string{"version": "v1", "team": "a"}, "r1/z1"), Proxyless)
	r, _ := s.ClusterRef("outbound|80||" + aHost)
	cla := LoadAssignment(s, r)
	checkGRPCAccepts(t, cla)
	var r1z1 []string
	for _, l := range cla.GetEndpoints() {
		if l.GetLocality().GetRegion() == "r1" && l.GetLocality().GetZone() == "z1" {
			r1z1 = append(r1z1, fmt.Sprintf("p%d:w%d:n%d", l.GetPriority(), l.GetLoadBalancingWeight().GetValue(), len(l.GetLbEndpoints())))
		}
	}
	if got, want := strings.Join(r1z1, " "), "p0:w1:n1 p1:w1:n1 p2:w1:n1"; got != want {
		t.Errorf("r1/z1 groups %q, want %q", got, want)
	}
}

// TestFailoverPriorityCache checks that the cache keys assignments by the
// proxy's failoverPriority values only where a rule uses failoverPriority:
// proxies differing in a named label get their own assignment, proxies
// differing in other labels share one, and for a rule without
// failoverPriority all of them share one, as do their generator keys.
func TestFailoverPriorityCache(t *testing.T) {
	yaml := fpService("    outlierDetection: {consecutive5xxErrors: 5}\n    loadBalancer: {localityLbSetting: {failoverPriority: [version]}}\n") + `---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: ns}
spec:
  hosts: [b.ns.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: grpc, number: 80, protocol: GRPC}]
  endpoints:
  - {address: 10.0.1.1, labels: {version: v1}, locality: r1/z1}
  - {address: 10.0.1.2, labels: {version: v2}, locality: r1/z2}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b, namespace: ns}
spec:
  host: b
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 5}
`
	ix := buildIndex(t, yaml)
	c := NewCache()
	const aCluster, bCluster = "outbound|80||" + aHost, "outbound|80||b.ns.svc.cluster.local"
	type got struct {
		key    string
		a, b   *endpointv3.ClusterLoadAssignment
		scope  *Scope
		labels map[string]string
	}
	build := func(labels map[string]string) got {
		p := proxy(xdsapi.Proxyless, "ns", labels, "r1/z1")
		s := NewScope(ix, p, Proxyless)
		s.Cache = c
		out := got{key: Key(ix, p), scope: s, labels: labels}
		for _, cla := range LoadAssignments(s, []string{aCluster, bCluster}) {
			if cla.GetClusterName() == aCluster {
				out.a = cla
			} else {
				out.b = cla
			}
		}
		if out.a == nil || out.b == nil {
			t.Fatalf("missing assignments for %v", labels)
		}
		return out
	}
	v1 := build(map[string]string{"version": "v1", "pod": "1"})
	v1other := build(map[string]string{"version": "v1", "pod": "2"})
	v2 := build(map[string]string{"version": "v2", "pod": "1"})

	if v1.a != v1other.a || v1.a.GetEndpoints() == nil || v1.scope.Version(v1.a) != v1other.scope.Version(v1other.a) {
		t.Error("proxies differing only in a label failoverPriority does not name do not share the assignment")
	}
	if v1.key != v1other.key {
		t.Errorf("generator keys differ by a label nothing reads: %q vs %q", v1.key, v1other.key)
	}
	if v1.a == v2.a || v1.scope.Version(v1.a) == v2.scope.Version(v2.a) {
		t.Error("proxies with different versions share the failoverPriority assignment")
	}
	if v1.key == v2.key {
		t.Errorf("generator keys do not tell versions apart: %q", v1.key)
	}
	if want := map[string]uint32{"10.0.0.3": 0, "10.0.0.6": 0, "10.0.0.1": 1, "10.0.0.2": 1, "10.0.0.4": 1, "10.0.0.5": 1}; !maps.Equal(priorities(v2.a), want) {
		t.Errorf("v2 client's priorities %v, want %v (a cached v1 assignment?)", priorities(v2.a), want)
	}
	if v1.b != v2.b || v1.b != v1other.b {
		t.Error("b's rule has no failoverPriority, yet proxies with other labels got their own assignment")
	}
}

// TestFailoverPriorityDNSCluster checks that Envoy's STRICT_DNS clusters,
// which carry their endpoints and so their priorities, are cached per
// failoverPriority values and per locality too.
func TestFailoverPriorityDNSCluster(t *testing.T) {
	ix := buildIndex(t, `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: d, namespace: ns}
spec:
  hosts: [d.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{name: grpc, number: 80, protocol: GRPC}]
  endpoints:
  - {address: one.example.com, labels: {version: v1}, locality: r1/z1}
  - {address: two.example.com, labels: {version: v2}, locality: r2/z2}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d, namespace: ns}
spec:
  host: d.example.com
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 5}
    loadBalancer: {localityLbSetting: {failoverPriority: [version]}}
`)
	c := NewCache()
	first := func(labels map[string]string, locality string) string {
		s := NewScope(ix, proxy(xdsapi.Sidecar, "ns", labels, locality), Envoy)
		s.Cache = c
		for _, cl := range Clusters(s) {
			if cl.GetName() == "outbound|80||d.example.com" {
				checkGRPCAccepts(t, cl.GetLoadAssignment())
				for _, l := range cl.GetLoadAssignment().GetEndpoints() {
					if l.GetPriority() == 0 {
						return l.GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
					}
				}
			}
		}
		t.Fatal("no DNS cluster")
		return ""
	}
	if got := first(map[string]string{"version": "v1"}, "r1/z1"); got != "one.example.com" {
		t.Errorf("v1 proxy prefers %s", got)
	}
	if got := first(map[string]string{"version": "v2"}, "r1/z1"); got != "two.example.com" {
		t.Errorf("v2 proxy prefers %s (the v1 proxy's cached cluster?)", got)
	}
}

// TestFailoverPriorityGolden renders the assignment a client gets from a
// rule combining failoverPriority with failover, for both flavors, checks
// it with ValidateAll and grpc-go's rules, and compares it with
// testdata/failover-priority.endpoints.json (-update rewrites it).
func TestFailoverPriorityGolden(t *testing.T) {
	ix := buildIndex(t, fpService(`    outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 30s}
    loadBalancer:
      localityLbSetting:
        failoverPriority: [topology.istio.io/network, version]
        failover: [{from: r1, to: r3}]
`))
	p := proxy(xdsapi.Proxyless, "ns", map[string]string{"version": "v1", "app": "client"}, "r1/z1")
	p.Metadata = map[string]string{"NETWORK": "n1"}
	var msgs []*endpointv3.ClusterLoadAssignment
	for _, f := range []Flavor{Proxyless, Envoy} {
		s := NewScope(ix, p, f)
		clas := LoadAssignments(s, nil)
		validate(t, "load assignment", clas)
		for _, cla := range clas {
			checkGRPCAccepts(t, cla)
		}
		msgs = append(msgs, clas...)
	}
	golden(t, "failover-priority.endpoints.json", render(t, asMessages(msgs)...))
}
