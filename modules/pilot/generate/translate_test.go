package generate

import (
	"fmt"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshd/meshd/modules/pilot/model"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// svcYAML is a gRPC service a with subsets v1 and v2 plus extra config.
func svcYAML(extra string) string {
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
  - {address: 10.0.0.1, labels: {version: v1}, locality: r1/z1}
  - {address: 10.0.0.2, labels: {version: v2}, locality: r1/z2}
  - {address: 10.0.0.3, labels: {version: v2}, locality: r2/z3}
` + extra
}

const aHost = "a.ns.svc.cluster.local"

// routesFor translates the VirtualService for a as a proxy of type typ
// with labels sees it.
func routesFor(t *testing.T, yaml string, typ xdsapi.ProxyType, labels map[string]string) []*routev3.Route {
	t.Helper()
	s := NewScope(buildIndex(t, yaml), proxy(typ, "ns", labels, ""), FlavorOf(typ))
	svc := s.Service(aHost)
	if svc == nil {
		t.Fatal("no service a")
	}
	routes := ServiceRoutes(s, svc, svc.Ports[0])
	for _, r := range routes {
		if err := r.ValidateAll(); err != nil {
			t.Fatalf("route fails ValidateAll: %v", err)
		}
	}
	return routes
}

func vs(http string) string {
	return `---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: ns}
spec:
  hosts: [a]
  http:
` + http
}

func TestRouteTranslation(t *testing.T) {
	tests := []struct {
		name   string
		http   string
		typ    xdsapi.ProxyType
		labels map[string]string
		check  func(t *testing.T, rs []*routev3.Route)
	}{
		{"timeout goes to route.timeout for Envoy", `  - timeout: 0.5s
    route: [{destination: {host: a}}]`, xdsapi.Sidecar, nil, func(t *testing.T, rs []*routev3.Route) {
			if d := rs[0].GetRoute().GetTimeout().AsDuration().String(); d != "500ms" || rs[0].GetRoute().GetMaxStreamDuration() != nil {
				t.Errorf("timeout %s, max_stream_duration %v", d, rs[0].GetRoute().GetMaxStreamDuration())
			}
		}},
		{"timeout goes to max_stream_duration for grpc-go", `  - timeout: 0.5s
    route: [{destination: {host: a}}]`, xdsapi.Proxyless, nil, func(t *testing.T, rs []*routev3.Route) {
			if d := rs[0].GetRoute().GetMaxStreamDuration().GetMaxStreamDuration().AsDuration().String(); d != "500ms" || rs[0].GetRoute().GetTimeout() != nil {
				t.Errorf("max_stream_duration %s, timeout %v", d, rs[0].GetRoute().GetTimeout())
			}
		}},
		{"Envoy gets Istio's default retries, grpc-go none", `  - route: [{destination: {host: a}}]`, xdsapi.Proxyless, nil, func(t *testing.T, rs []*routev3.Route) {
			if rs[0].GetRoute().GetRetryPolicy() != nil {
				t.Errorf("proxyless got a default retry policy")
			}
		}},
		{"attempts 0 turns retries off", `  - retries: {attempts: 0}
    route: [{destination: {host: a}}]`, xdsapi.Sidecar, nil, func(t *testing.T, rs []*routev3.Route) {
			if rs[0].GetRoute().GetRetryPolicy() != nil {
				t.Errorf("retry policy %v", rs[0].GetRoute().GetRetryPolicy())
			}
		}},
		{"HTTP retry conditions become unavailable for grpc-go", `  - retries: {attempts: 2, retryOn: "5xx,connect-failure,deadline-exceeded"}
    route: [{destination: {host: a}}]`, xdsapi.Proxyless, nil, func(t *testing.T, rs []*routev3.Route) {
			rp := rs[0].GetRoute().GetRetryPolicy()
			if rp.GetRetryOn() != "unavailable,deadline-exceeded" || rp.GetNumRetries().GetValue() != 2 {
				t.Errorf("retry_on %q, num_retries %d", rp.GetRetryOn(), rp.GetNumRetries().GetValue())
			}
		}},
		{"status codes in retryOn become retriable_status_codes", `  - retries: {attempts: 2, retryOn: "gateway-error,503,504"}
    route: [{destination: {host: a}}]`, xdsapi.Sidecar, nil, func(t *testing.T, rs []*routev3.Route) {
			rp := rs[0].GetRoute().GetRetryPolicy()
			if rp.GetRetryOn() != "gateway-error,retriable-status-codes" || fmt.Sprint(rp.GetRetriableStatusCodes()) != "[503 504]" {
				t.Errorf("retry_on %q, codes %v", rp.GetRetryOn(), rp.GetRetriableStatusCodes())
			}
		}},
		{"abort without percentage aborts all, delay without percentage none", `  - fault: {abort: {grpcStatus: "14"}, delay: {fixedDelay: 1s}}
    route: [{destination: {host: a}}]`, xdsapi.Proxyless, nil, func(t *testing.T, rs []*routev3.Route) {
			var f faultv3.HTTPFault
			if err := rs[0].GetTypedPerFilterConfig()[FilterFault].UnmarshalTo(&f); err != nil {
				t.Fatal(err)
			}
			if f.GetAbort().GetPercentage().GetNumerator() != 1000000 || f.GetAbort().GetGrpcStatus() != 14 {
				t.Errorf("abort %v", f.GetAbort())
			}
			if f.GetDelay().GetPercentage().GetNumerator() != 0 {
				t.Errorf("delay %v", f.GetDelay())
			}
		}},
		{"zero weights are dropped, one left becomes a plain cluster", `  - route:
    - {destination: {host: a, subset: v1}, weight: 100}
    - {destination: {host: a, subset: v2}, weight: 0}`, xdsapi.Proxyless, nil, func(t *testing.T, rs []*routev3.Route) {
			if c := rs[0].GetRoute().GetCluster(); c != "outbound|80|v1|"+aHost {
				t.Errorf("cluster %q (weighted %v)", c, rs[0].GetRoute().GetWeightedClusters())
			}
		}},
		{"sourceLabels: a route for other clients does not apply", `  - match: [{sourceLabels: {app: other}}]
    route: [{destination: {host: a, subset: v2}}]
  - route: [{destination: {host: a, subset: v1}}]`, xdsapi.Proxyless, map[string]string{"app": "me"}, func(t *testing.T, rs []*routev3.Route) {
			if len(rs) != 1 || rs[0].GetRoute().GetCluster() != "outbound|80|v1|"+aHost {
				t.Errorf("routes %v", rs)
			}
		}},
		{"sourceLabels: a route for this client applies", `  - match: [{sourceLabels: {app: me}}]
    route: [{destination: {host: a, subset: v2}}]
  - route: [{destination: {host: a, subset: v1}}]`, xdsapi.Proxyless, map[string]string{"app": "me", "x": "y"}, func(t *testing.T, rs []*routev3.Route) {
			if len(rs) != 2 || rs[0].GetRoute().GetCluster() != "outbound|80|v2|"+aHost {
				t.Errorf("routes %v", rs)
			}
		}},
		{"sourceNamespace", `  - match: [{sourceNamespace: elsewhere}]
    route: [{destination: {host: a, subset: v2}}]`, xdsapi.Proxyless, nil, func(t *testing.T, rs []*routev3.Route) {
			if len(rs) != 1 || rs[0].GetName() != "default" {
				t.Errorf("a VirtualService with no route for this proxy must fall back to the default route: %v", rs)
			}
		}},
		{"match on another port does not apply", `  - match: [{port: 81}]
    route: [{destination: {host: a, subset: v2}}]
  - route: [{destination: {host: a, subset: v1}}]`, xdsapi.Sidecar, nil, func(t *testing.T, rs []*routev3.Route) {
			if len(rs) != 1 {
				t.Errorf("routes %v", rs)
			}
		}},
		{"mesh routes skip gateway-only matches", `  - match: [{gateways: [edge]}]
    route: [{destination: {host: a, subset: v2}}]
  - route: [{destination: {host: a, subset: v1}}]`, xdsapi.Sidecar, nil, func(t *testing.T, rs []*routev3.Route) {
			if len(rs) != 1 || rs[0].GetRoute().GetCluster() != "outbound|80|v1|"+aHost {
				t.Errorf("routes %v", rs)
			}
		}},
		{"deprecated mirrorPercent", `  - mirror: {host: a, subset: v2}
    mirrorPercent: 30
    route: [{destination: {host: a, subset: v1}}]`, xdsapi.Sidecar, nil, func(t *testing.T, rs []*routev3.Route) {
			m := rs[0].GetRoute().GetRequestMirrorPolicies()
			if len(m) != 1 || m[0].GetCluster() != "outbound|80|v2|"+aHost || m[0].GetRuntimeFraction().GetDefaultValue().GetNumerator() != 300000 {
				t.Errorf("mirrors %v", m)
			}
		}},
		{"grpc-go gets no CORS, header or mirror config", `  - corsPolicy: {allowOrigins: [{exact: "https://x"}]}
    headers: {request: {set: {a: b}}}
    mirror: {host: a}
    route: [{destination: {host: a}}]`, xdsapi.Proxyless, nil, func(t *testing.T, rs []*routev3.Route) {
			r := rs[0]
			if len(r.GetTypedPerFilterConfig()) != 0 || len(r.GetRequestHeadersToAdd()) != 0 || len(r.GetRoute().GetRequestMirrorPolicies()) != 0 {
				t.Errorf("route %v", r)
			}
		}},
		{"an unknown subset routes to a cluster nobody has, not a failure", `  - route: [{destination: {host: a, subset: nope}}]`, xdsapi.Proxyless, nil, func(t *testing.T, rs []*routev3.Route) {
			if c := rs[0].GetRoute().GetCluster(); c != "outbound|80|nope|"+aHost {
				t.Errorf("cluster %q", c)
			}
		}},
	}
	dr := `---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: ns}
spec:
  host: a
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
`
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, routesFor(t, svcYAML(dr+vs(tt.http)), tt.typ, tt.labels))
		})
	}
}

// clusterFor builds cluster outbound|80||a with a DestinationRule whose
// trafficPolicy is policy.
func clusterFor(t *testing.T, policy string, f Flavor) *clusterv3.Cluster {
	t.Helper()
	yaml := svcYAML(`---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: ns}
spec:
  host: a
  trafficPolicy:
` + policy)
	typ := xdsapi.Sidecar
	if f == Proxyless {
		typ = xdsapi.Proxyless
	}
	s := NewScope(buildIndex(t, yaml), proxy(typ, "ns", nil, ""), f)
	r, ok := s.ClusterRef("outbound|80||" + aHost)
	if !ok {
		t.Fatal("no cluster")
	}
	c := Cluster(s, r)
	if err := c.ValidateAll(); err != nil {
		t.Fatalf("cluster fails ValidateAll: %v", err)
	}
	return c
}

func TestClusterTranslation(t *testing.T) {
	tests := []struct {
		name   string
		policy string
		flavor Flavor
		check  func(t *testing.T, c *clusterv3.Cluster)
	}{
		{"RANDOM is round robin for grpc-go", `    loadBalancer: {simple: RANDOM}`, Proxyless, func(t *testing.T, c *clusterv3.Cluster) {
			if c.GetLbPolicy() != clusterv3.Cluster_ROUND_ROBIN {
				t.Errorf("lb %v", c.GetLbPolicy())
			}
		}},
		{"LEAST_CONN is LEAST_REQUEST", `    loadBalancer: {simple: LEAST_CONN}`, Proxyless, func(t *testing.T, c *clusterv3.Cluster) {
			if c.GetLbPolicy() != clusterv3.Cluster_LEAST_REQUEST {
				t.Errorf("lb %v", c.GetLbPolicy())
			}
		}},
		{"Maglev is a xxHash ring for grpc-go, ring size capped", `    loadBalancer: {consistentHash: {httpHeaderName: x, maglev: {tableSize: 65537}, minimumRingSize: 100000000}}`, Proxyless, func(t *testing.T, c *clusterv3.Cluster) {
			rh := c.GetRingHashLbConfig()
			if c.GetLbPolicy() != clusterv3.Cluster_RING_HASH || rh.GetHashFunction() != clusterv3.Cluster_RingHashLbConfig_XX_HASH || rh.GetMinimumRingSize().GetValue() > 8<<20 {
				t.Errorf("lb %v %v", c.GetLbPolicy(), rh)
			}
		}},
		{"Maglev stays Maglev for Envoy", `    loadBalancer: {consistentHash: {httpHeaderName: x, maglev: {tableSize: 65537}}}`, Envoy, func(t *testing.T, c *clusterv3.Cluster) {
			if c.GetLbPolicy() != clusterv3.Cluster_MAGLEV || c.GetMaglevLbConfig().GetTableSize().GetValue() != 65537 {
				t.Errorf("lb %v", c.GetLbPolicy())
			}
		}},
		{"outlier detection off when every threshold is 0", `    outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 0}`, Proxyless, func(t *testing.T, c *clusterv3.Cluster) {
			if c.GetOutlierDetection() != nil {
				t.Errorf("outlier detection %v", c.GetOutlierDetection())
			}
		}},
		{"gateway errors alone set the request volume", `    outlierDetection: {consecutiveGatewayErrors: 3}`, Proxyless, func(t *testing.T, c *clusterv3.Cluster) {
			od := c.GetOutlierDetection()
			if od.GetFailurePercentageRequestVolume().GetValue() != 3 || od.GetEnforcingFailurePercentage().GetValue() != 100 || od.GetEnforcingSuccessRate().GetValue() != 0 {
				t.Errorf("outlier detection %v", od)
			}
		}},
		{"Envoy: 0 consecutive 5xx turns that ejection off", `    outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 2}`, Envoy, func(t *testing.T, c *clusterv3.Cluster) {
			od := c.GetOutlierDetection()
			if od.GetEnforcingConsecutive_5Xx().GetValue() != 0 || od.GetEnforcingConsecutiveGatewayFailure().GetValue() != 100 {
				t.Errorf("outlier detection %v", od)
			}
		}},
		{"grpc-go reads only max_requests of the pool", `    connectionPool: {tcp: {maxConnections: 5}, http: {http2MaxRequests: 7}}`, Proxyless, func(t *testing.T, c *clusterv3.Cluster) {
			th := c.GetCircuitBreakers().GetThresholds()
			if len(th) != 1 || th[0].GetMaxRequests().GetValue() != 7 || th[0].GetMaxConnections() != nil {
				t.Errorf("thresholds %v", th)
			}
		}},
		{"PASSTHROUGH is an original-destination cluster for Envoy", `    loadBalancer: {simple: PASSTHROUGH}`, Envoy, func(t *testing.T, c *clusterv3.Cluster) {
			if c.GetType() != clusterv3.Cluster_ORIGINAL_DST || c.GetEdsClusterConfig() != nil {
				t.Errorf("type %v", c.GetType())
			}
		}},
		{"ISTIO_MUTUAL for grpc-go uses certificate providers and match_subject_alt_names", `    tls: {mode: ISTIO_MUTUAL}`, Proxyless, func(t *testing.T, c *clusterv3.Cluster) {
			var ctx tlsv3.UpstreamTlsContext
			if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&ctx); err != nil {
				t.Fatal(err)
			}
			common := ctx.GetCommonTlsContext()
			vc := common.GetValidationContext()
			if common.GetTlsCertificateProviderInstance().GetInstanceName() != CertProviderInstance ||
				vc.GetCaCertificateProviderInstance().GetCertificateName() != SecretRootCA ||
				vc.GetMatchSubjectAltNames()[0].GetPrefix() != "spiffe://cluster.local/ns/ns/" ||
				len(vc.GetMatchTypedSubjectAltNames()) != 0 || len(common.GetTlsCertificateSdsSecretConfigs()) != 0 {
				t.Errorf("upstream TLS %v", &ctx)
			}
			if ctx.GetSni() != "outbound_.80_._."+aHost {
				t.Errorf("sni %q", ctx.GetSni())
			}
			if len(c.GetTransportSocketMatches()) != 0 {
				t.Error("grpc-go rejects transport_socket_matches")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.check(t, clusterFor(t, tt.policy, tt.flavor)) })
	}
}

func TestLocality(t *testing.T) {
	for _, tt := range []struct {
		pattern string
		loc     model.Locality
		want    bool
	}{
		{"r1/z1/s1", model.Locality{Region: "r1", Zone: "z1", Subzone: "s1"}, true},
		{"r1/*", model.Locality{Region: "r1", Zone: "z9"}, true},
		{"r1", model.Locality{Region: "r1", Zone: "z9"}, true},
		{"*", model.Locality{}, true},
		{"r1/z1", model.Locality{Region: "r1", Zone: "z2"}, false},
		{"", model.Locality{Region: "r1"}, false},
	} {
		if got := LocalityMatches(tt.pattern, tt.loc); got != tt.want {
			t.Errorf("LocalityMatches(%q, %v) = %v", tt.pattern, tt.loc, got)
		}
	}

	// Failover: same zone first, the rest of the region next, the
	// failover region after, with no gaps in priorities.
	yaml := svcYAML(`---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: ns}
spec:
  host: a
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 5}
    loadBalancer: {localityLbSetting: {failover: [{from: r1, to: r2}]}}
`)
	ix := buildIndex(t, yaml)
	s := NewScope(ix, proxy(xdsapi.Proxyless, "ns", nil, "r1/z2"), Proxyless)
	r, _ := s.ClusterRef("outbound|80||" + aHost)
	got := map[string]uint32{}
	for _, l := range LoadAssignment(s, r).GetEndpoints() {
		got[l.GetLocality().GetRegion()+"/"+l.GetLocality().GetZone()] = l.GetPriority()
	}
	if want := map[string]uint32{"r1/z2": 0, "r1/z1": 1, "r2/z3": 2}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("priorities %v, want %v", got, want)
	}
	// Without outlier detection there is no failover: one priority.
	s = NewScope(buildIndex(t, svcYAML("")), proxy(xdsapi.Proxyless, "ns", nil, "r1/z2"), Proxyless)
	r, _ = s.ClusterRef("outbound|80||" + aHost)
	for _, l := range LoadAssignment(s, r).GetEndpoints() {
		if l.GetPriority() != 0 || l.GetLoadBalancingWeight().GetValue() == 0 {
			t.Errorf("locality %v: priority %d weight %d", l.GetLocality(), l.GetPriority(), l.GetLoadBalancingWeight().GetValue())
		}
	}
}

func TestKey(t *testing.T) {
	ix := buildIndex(t, svcYAML(vs(`  - match: [{sourceLabels: {app: canary}}]
    route: [{destination: {host: a}}]`)))
	a := Key(ix, proxy(xdsapi.Proxyless, "ns", map[string]string{"app": "web", "pod": "1"}, "r1/z1"))
	b := Key(ix, proxy(xdsapi.Proxyless, "ns", map[string]string{"app": "web", "pod": "2"}, "r2/z9"))
	c := Key(ix, proxy(xdsapi.Proxyless, "ns", map[string]string{"app": "canary"}, ""))
	d := Key(ix, proxy(xdsapi.Proxyless, "other", map[string]string{"app": "web"}, ""))
	if a != b {
		t.Errorf("labels no selector reads and a locality nothing reads split groups: %q vs %q", a, b)
	}
	if a == c || a == d {
		t.Errorf("keys must differ by matched selectors and namespace: %q %q %q", a, c, d)
	}
}
