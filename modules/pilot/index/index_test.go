package index

import (
	"testing"

	"github.com/meshd/meshd/core"
	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
	"github.com/meshd/meshd/modules/pilot/registry"
)

const config = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  ports: [{name: grpc, number: 9080, protocol: GRPC}]
  endpoints: [{address: 127.0.0.1, labels: {version: v1}}, {address: 127.0.0.2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews-other, namespace: other}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  ports: [{name: grpc, number: 9080, protocol: GRPC}]
  endpoints: [{address: 127.0.0.9}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: shop}
spec:
  hosts: [private.shop.svc.cluster.local]
  exportTo: ["."]
  ports: [{name: http, number: 80, protocol: HTTP}]
  endpoints: [{address: 127.0.0.3}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: shop}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{name: https, number: 443, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild, namespace: shop}
spec:
  hosts: ["*.shop.svc.cluster.local"]
  http:
  - route:
    - destination: {host: reviews}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: shop}
spec:
  hosts: [shop.example.com]
  gateways: [edge-gw, mesh]
  http:
  - route:
    - destination: {host: reviews}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge-gw, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*/shop.example.com"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-client, namespace: client}
spec:
  host: reviews.shop.svc.cluster.local
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: all, namespace: meshd-system}
spec:
  host: "*.cluster.local"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: narrow}
spec:
  egress:
  - hosts: ["shop/reviews.shop.svc.cluster.local"]
`

func build(t *testing.T) *Index {
	t.Helper()
	return buildFrom(t, config)
}

func buildFrom(t *testing.T, config string) *Index {
	t.Helper()
	r := decode.Decode("test.yaml", []byte(config))
	for _, f := range r.Findings {
		if f.Severity == galleyapi.SeverityError {
			t.Fatalf("decode: %v", f)
		}
	}
	snap := galleyapi.NewSnapshot(7, r.Objects)
	agg := registry.New(nil, nil)
	agg.SinkFor("config").Update(registry.State{Services: registry.BuildServices(snap, nil)})
	return New(core.DefaultMeshConfig(), "meshd-system", agg.View(), snap)
}

func TestServicesVisibility(t *testing.T) {
	ix := build(t)
	hosts := func(ns string, sc *Sidecar) map[string]string {
		out := map[string]string{}
		for _, s := range ix.Services(ns, sc) {
			out[s.Hostname] = s.Namespace
		}
		return out
	}
	shop := hosts("shop", nil)
	if len(shop) != 3 || shop["reviews.shop.svc.cluster.local"] != "shop" {
		t.Fatalf("shop sees %v", shop)
	}
	other := hosts("other", nil)
	if _, ok := other["private.shop.svc.cluster.local"]; ok {
		t.Fatal("exportTo . leaked to another namespace")
	}
	if other["reviews.shop.svc.cluster.local"] != "other" {
		t.Fatalf("a proxy's own namespace must win a shared host: %v", other)
	}
	if third := hosts("third", nil); third["reviews.shop.svc.cluster.local"] != "other" {
		t.Fatalf("without an own-namespace service the first namespace wins: %v", third)
	}
	narrow := hosts("narrow", ix.SidecarFor("narrow", nil))
	if len(narrow) != 1 || narrow["reviews.shop.svc.cluster.local"] != "shop" {
		t.Fatalf("Sidecar egress did not scope: %v", narrow)
	}
	if ix.SidecarFor("shop", nil) != nil {
		t.Fatal("shop has no Sidecar")
	}
}

// TestVirtualServiceForIsFirstOfList: the one-pass VirtualServiceFor picks
// what MeshVirtualServices lists first, across exact and wildcard hosts,
// namespaces and exportTo.
func TestVirtualServiceForIsFirstOfList(t *testing.T) {
	vs := func(ns, name, hosts, exportTo string) string {
		return "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: " + name + ", namespace: " + ns + "}\n" +
			"spec:\n  hosts: " + hosts + "\n  exportTo: " + exportTo + "\n  http:\n  - route:\n    - destination: {host: x.example.org}\n---\n"
	}
	ix := buildFrom(t, vs("a", "star", `["*"]`, `["*"]`)+
		vs("b", "wild-b", `["*.shop.svc.cluster.local"]`, `["*"]`)+
		vs("a", "wild-a", `["*.shop.svc.cluster.local"]`, `["*"]`)+
		vs("b", "exact-b", `[reviews.shop.svc.cluster.local]`, `["*"]`)+
		vs("c", "exact-c", `[reviews.shop.svc.cluster.local]`, `["."]`)+
		vs("a", "exact-a", `[reviews.shop.svc.cluster.local, ratings.shop.svc.cluster.local]`, `["*"]`)+
		vs("c", "local-c", `[ratings.shop.svc.cluster.local]`, `["."]`))
	want := map[[2]string]string{
		{"a", "reviews.shop.svc.cluster.local"}: "exact-a",
		{"b", "reviews.shop.svc.cluster.local"}: "exact-b",
		{"c", "reviews.shop.svc.cluster.local"}: "exact-c",
		{"d", "reviews.shop.svc.cluster.local"}: "exact-a",
		{"c", "ratings.shop.svc.cluster.local"}: "local-c",
		{"b", "ratings.shop.svc.cluster.local"}: "exact-a",
		{"b", "details.shop.svc.cluster.local"}: "wild-b",
		{"d", "details.shop.svc.cluster.local"}: "wild-a",
		{"b", "other.example.org"}:              "star",
	}
	for _, ns := range []string{"a", "b", "c", "d"} {
		for _, host := range []string{"reviews.shop.svc.cluster.local", "ratings.shop.svc.cluster.local", "details.shop.svc.cluster.local", "other.example.org"} {
			list, got := ix.MeshVirtualServices(ns, host), ix.VirtualServiceFor(ns, host)
			if len(list) == 0 || got != list[0] {
				t.Fatalf("%s in %s: VirtualServiceFor %v, list %v", host, ns, got, list)
			}
			if w, ok := want[[2]string{ns, host}]; ok && got.Object.Name != w {
				t.Errorf("%s in %s: got %s, want %s", host, ns, got.Object.Name, w)
			}
		}
	}
}

func TestVirtualServiceSelection(t *testing.T) {
	ix := build(t)
	vs := ix.VirtualServiceFor("shop", "reviews.shop.svc.cluster.local")
	if vs == nil || vs.Object.Name != "reviews" {
		t.Fatalf("exact host must beat the wildcard, got %v", vs)
	}
	if vs := ix.VirtualServiceFor("shop", "ratings.shop.svc.cluster.local"); vs == nil || vs.Object.Name != "wild" {
		t.Fatalf("wildcard VS not found for ratings: %v", vs)
	}
	if vs := ix.VirtualServiceFor("shop", "nothing.example.org"); vs != nil {
		t.Fatalf("unexpected VS %s", vs.Object.Name)
	}
	gw := ix.GatewayVirtualServices("shop/edge-gw")
	if len(gw) != 1 || gw[0].Object.Name != "edge" {
		t.Fatalf("gateway VS = %v", gw)
	}
	if vs := ix.VirtualServiceFor("shop", "shop.example.com"); vs == nil || vs.Object.Name != "edge" {
		t.Fatal("a VS listing mesh among its gateways must bind to the mesh too")
	}
	if gws := ix.GatewaysFor(map[string]string{"istio": "ingressgateway", "x": "y"}); len(gws) != 1 {
		t.Fatalf("GatewaysFor = %v", gws)
	}
}

func TestDestinationRulePrecedence(t *testing.T) {
	ix := build(t)
	host := "reviews.shop.svc.cluster.local"
	tests := []struct{ proxyNS, want string }{
		{"client", "reviews-client"}, // the proxy's own namespace first
		{"shop", "reviews"},          // then the service's namespace
		{"elsewhere", "reviews"},     // client's rule is exportTo "." only
	}
	for _, tt := range tests {
		dr := ix.DestinationRule(tt.proxyNS, "shop", host)
		if dr == nil || dr.Object.Name != tt.want {
			t.Errorf("proxy in %s: DR = %v, want %s", tt.proxyNS, dr, tt.want)
		}
	}
	if dr := ix.DestinationRule("x", "y", "foo.y.svc.cluster.local"); dr == nil || dr.Object.Name != "all" {
		t.Fatalf("root namespace wildcard rule not found: %v", dr)
	}
	if dr := ix.DestinationRule("x", "y", "api.example.com"); dr != nil {
		t.Fatalf("no rule should apply, got %s", dr.Object.Name)
	}
	dr := ix.DestinationRule("shop", "shop", host)
	svc := ix.Service("shop", host)
	if eps := SubsetEndpoints(svc, 9080, dr.Subset("v1")); len(eps) != 1 || eps[0].Address != "127.0.0.1" {
		t.Fatalf("subset v1 endpoints = %v", eps)
	}
	if dr.Subset("v9") != nil {
		t.Fatal("unknown subset found")
	}
}

func TestNames(t *testing.T) {
	ix := build(t)
	for in, want := range map[string]string{
		"reviews":         "reviews.shop.svc.cluster.local",
		"reviews.other":   "reviews.other",
		"*.example.com":   "*.example.com",
		"api.example.com": "api.example.com",
	} {
		if got := ix.ExpandHost(in, "shop"); got != want {
			t.Errorf("ExpandHost(%s) = %s, want %s", in, got, want)
		}
	}
	name := ClusterName(9080, "v1", "reviews.shop.svc.cluster.local")
	if name != "outbound|9080|v1|reviews.shop.svc.cluster.local" {
		t.Fatal(name)
	}
	if p, s, h, ok := ParseClusterName(name); !ok || p != 9080 || s != "v1" || h != "reviews.shop.svc.cluster.local" {
		t.Fatal("ParseClusterName round trip failed")
	}
	for pattern, host := range map[string]string{"*": "a.b", "*.b": "a.b", "a.b": "a.b"} {
		if !HostMatches(pattern, host) {
			t.Errorf("%s should match %s", pattern, host)
		}
	}
	if HostMatches("*.b", "b") || HostMatches("a.b", "c.b") {
		t.Error("HostMatches too loose")
	}
	if ix.Version != "c7.r1" {
		t.Fatalf("Version = %s", ix.Version)
	}
}

func TestWorkloadHelpers(t *testing.T) {
	ix := build(t)
	targets := ix.ServiceTargets([]string{"127.0.0.2"})
	if len(targets) != 1 || targets[0].Service.Hostname != "reviews.shop.svc.cluster.local" || targets[0].Port.Number != 9080 {
		t.Fatalf("targets of 127.0.0.2 = %v", targets)
	}
	if got := ix.ServiceTargets([]string{"127.0.0.1", "127.0.0.3", "127.0.0.1"}); len(got) != 2 {
		t.Fatalf("targets of two addresses = %v", got)
	}
	if got := ix.ServiceTargets([]string{"10.9.9.9"}); len(got) != 0 {
		t.Fatalf("unknown address has targets %v", got)
	}
	if vss := ix.MeshVirtualServicesIn("other"); len(vss) != 3 {
		t.Fatalf("mesh VirtualServices in other = %d", len(vss))
	}
	for _, tt := range []struct{ ref, ns, want string }{
		{"mesh", "a", "mesh"}, {"gw", "a", "a/gw"}, {"b/gw", "a", "b/gw"}, {"gw.b.svc.cluster.local", "a", "b/gw"},
	} {
		if got := ix.GatewayName(tt.ref, tt.ns); got != tt.want {
			t.Errorf("GatewayName(%s, %s) = %s, want %s", tt.ref, tt.ns, got, tt.want)
		}
	}
	hosts := []string{"./a.x", "other/*.y", "~/b.x"}
	for _, tt := range []struct {
		ns, svcNS, host string
		want            bool
	}{
		{"p", "p", "a.x", true}, {"p", "q", "a.x", false}, {"p", "other", "c.y", true}, {"p", "p", "b.x", false},
	} {
		if got := EgressHostsAllow(hosts, tt.ns, tt.svcNS, tt.host); got != tt.want {
			t.Errorf("EgressHostsAllow(%s, %s, %s) = %v", tt.ns, tt.svcNS, tt.host, got)
		}
	}
}

func TestSourceSelectorsAllRouteKinds(t *testing.T) {
	r := decode.Decode("t.yaml", []byte(`
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: l4, namespace: a}
spec:
  hosts: [db]
  tcp:
  - match: [{sourceLabels: {app: web}}]
    route: [{destination: {host: db}}]
  tls:
  - match: [{sniHosts: [db], sourceLabels: {app: api}}, {sniHosts: [db2], sourceLabels: {app: web}}]
    route: [{destination: {host: db}}]
`))
	ix := New(core.DefaultMeshConfig(), "meshd-system", nil, galleyapi.NewSnapshot(1, r.Objects))
	if got := ix.SourceSelectors(); len(got) != 2 || got[0]["app"] != "web" || got[1]["app"] != "api" {
		t.Fatalf("SourceSelectors = %v, want tcp and tls selectors, each once", got)
	}
}
