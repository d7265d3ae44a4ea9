package pilot

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/modules/pilot/generate"
	"github.com/meshd/meshd/modules/pilot/generate/envoy"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/internal/pilottest"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// benchServices is the mesh size of the generation benchmarks: Istio's
// load-test mesh has 1,000 services.
const benchServices = 1000

// benchMesh writes a mesh of n services over 10 namespaces: each a
// ServiceEntry with a gRPC and an HTTP port and three WorkloadEntries in
// two localities; every fifth has a DestinationRule with two subsets,
// connection pool and outlier detection, and a VirtualService splitting
// 90/10 with retries and a timeout; every tenth also has a header match
// with a fault. A gateway binds 100 VirtualServices for *.example.com.
func benchMesh(n int) string {
	var b strings.Builder
	b.WriteString(`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: ns0}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*/*.example.com"]
`)
	for i := range n {
		ns := fmt.Sprintf("ns%d", i%10)
		svc := fmt.Sprintf("svc%d", i)
		fmt.Fprintf(&b, `---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  hosts: [%[1]s.%[2]s.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: grpc, number: 9000, protocol: GRPC}, {name: http, number: 8080, protocol: HTTP}]
  workloadSelector: {labels: {app: %[1]s}}
`, svc, ns)
		for j := range 3 {
			fmt.Fprintf(&b, `---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: %[1]s-%[3]d, namespace: %[2]s}
spec: {address: 10.%[4]d.%[5]d.%[3]d, labels: {app: %[1]s, version: v%[6]d}, locality: region/zone-%[6]d}
`, svc, ns, j, i/250, i%250, j%2+1)
		}
		if i%5 != 0 {
			continue
		}
		fmt.Fprintf(&b, `---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  host: %[1]s
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 1000}}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s}
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  hosts: [%[1]s%[3]s]
  gateways: [mesh%[4]s]
  http:
`, svc, ns, map[bool]string{true: ", " + svc + ".example.com"}[i%10 == 0], map[bool]string{true: ", ns0/edge"}[i%10 == 0])
		if i%10 == 0 {
			fmt.Fprintf(&b, `  - match: [{headers: {x-test: {exact: "1"}}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 1}}}
    route: [{destination: {host: %[1]s.%[2]s.svc.cluster.local, subset: v2, port: {number: 9000}}}]
`, svc, ns)
		}
		fmt.Fprintf(&b, `  - retries: {attempts: 2, retryOn: unavailable}
    timeout: 2s
    route:
    - {destination: {host: %[1]s.%[2]s.svc.cluster.local, subset: v1, port: {number: 9000}}, weight: 90}
    - {destination: {host: %[1]s.%[2]s.svc.cluster.local, subset: v2, port: {number: 9000}}, weight: 10}
`, svc, ns)
	}
	return b.String()
}

var benchIndex = sync.OnceValue(func() *index.Index {
	return pilottest.IndexOf(pilottest.Snapshot(&testing.B{}, 1, benchMesh(benchServices)))
})

// benchModule is a pilot module with only what generators read.
func benchModule(b *testing.B) *Module {
	b.Helper()
	m := &Module{envoy: envoy.New(envoy.Options{}), cache: generate.NewCache()}
	ix := benchIndex()
	if n := len(ix.Registry.Services); n != benchServices {
		b.Fatalf("mesh has %d services", n)
	}
	m.ix.Store(ix)
	m.synced.Store(true)
	return m
}

// BenchmarkGenerate measures a full recompute for one proxy of each type
// in a mesh of 1,000 services that it sees all of (no Sidecar scoping):
// CDS, EDS, LDS and RDS, as the xds server asks for them on a full push.
//
// cold is the first proxy after a start: nothing cached. warm is every
// other group of proxies (another namespace, other labels) and every later
// full push: clusters and endpoints whose inputs did not change come from
// the cache, listeners and routes are built again. resources/op and
// bytes/op are what one proxy of the type is sent.
func BenchmarkGenerate(b *testing.B) {
	for _, tc := range []struct {
		name  string
		proxy *xdsapi.Proxy
	}{
		{"proxyless", pilottest.Proxy(xdsapi.Proxyless, "ns1", map[string]string{"app": "client"}, "region/zone-1")},
		{"sidecar", pilottest.Proxy(xdsapi.Sidecar, "ns1", map[string]string{"app": "client"}, "region/zone-1")},
		{"gateway", pilottest.Proxy(xdsapi.Gateway, "ns0", map[string]string{"istio": "ingressgateway"}, "region/zone-1")},
	} {
		for _, warm := range []bool{false, true} {
			name := tc.name + "/cold"
			if warm {
				name = tc.name + "/warm"
			}
			b.Run(name, func(b *testing.B) {
				m := benchModule(b)
				types := []string{xdsapi.ClusterType, xdsapi.EndpointType, xdsapi.ListenerType, xdsapi.RouteType}
				gens := make([]*generator, len(types))
				for i, t := range types {
					gens[i] = &generator{m: m, typeURL: t}
				}
				generateAll := func() (count, size int) {
					for _, g := range gens {
						res, err := g.Generate(context.Background(), xdsapi.GenerateRequest{Key: g.Key(tc.proxy), Proxy: tc.proxy})
						if err != nil {
							b.Fatal(err)
						}
						count += len(res)
						for _, r := range res {
							size += proto.Size(r.Message)
						}
					}
					return count, size
				}
				count, size := generateAll()
				b.ReportAllocs()
				cpu := cpuTime()
				for b.Loop() {
					m.scopeIx = nil // a new group
					if !warm {
						m.cache = generate.NewCache()
					}
					for _, g := range gens {
						if _, err := g.Generate(context.Background(), xdsapi.GenerateRequest{Key: g.Key(tc.proxy), Proxy: tc.proxy}); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportMetric(float64((cpuTime()-cpu).Nanoseconds())/float64(b.N), "cpu-ns/op")
				b.ReportMetric(float64(count), "resources/op")
				b.ReportMetric(float64(size), "bytes/op")
			})
		}
	}
}

// BenchmarkGenerateByType splits the proxyless and sidecar figures by
// resource type.
func BenchmarkGenerateByType(b *testing.B) {
	for _, typ := range []xdsapi.ProxyType{xdsapi.Proxyless, xdsapi.Sidecar} {
		p := pilottest.Proxy(typ, "ns1", map[string]string{"app": "client"}, "region/zone-1")
		for _, t := range []string{xdsapi.ClusterType, xdsapi.EndpointType, xdsapi.ListenerType, xdsapi.RouteType} {
			b.Run(string(typ)+"/"+xdsapi.ShortType(t), func(b *testing.B) {
				m := benchModule(b)
				g := &generator{m: m, typeURL: t}
				b.ReportAllocs()
				cpu := cpuTime()
				for b.Loop() {
					m.scopeIx, m.cache = nil, generate.NewCache() // cold
					if _, err := g.Generate(context.Background(), xdsapi.GenerateRequest{Proxy: p}); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64((cpuTime()-cpu).Nanoseconds())/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

// BenchmarkGenerateEDSUpdate is an endpoint-only push: one cluster's
// ClusterLoadAssignment regenerated by name.
func BenchmarkGenerateEDSUpdate(b *testing.B) {
	g := &generator{m: benchModule(b), typeURL: xdsapi.EndpointType}
	p := pilottest.Proxy(xdsapi.Proxyless, "ns1", nil, "")
	names := []string{index.ClusterName(9000, "", "svc500.ns0.svc.cluster.local"), index.ClusterName(9000, "v1", "svc500.ns0.svc.cluster.local")}
	b.ReportAllocs()
	for b.Loop() {
		res, err := g.Generate(context.Background(), xdsapi.GenerateRequest{Proxy: p, Names: names})
		if err != nil || len(res) != 2 {
			b.Fatal(len(res), err)
		}
	}
}

// BenchmarkKey is the per-stream cost of keying on a full push.
func BenchmarkKey(b *testing.B) {
	m := benchModule(b)
	for _, typ := range []xdsapi.ProxyType{xdsapi.Proxyless, xdsapi.Sidecar} {
		g := &generator{m: m, typeURL: xdsapi.ListenerType}
		p := pilottest.Proxy(typ, "ns1", map[string]string{"app": "client"}, "region/zone-1")
		b.Run(string(typ), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = g.Key(p)
			}
		})
	}
}

// BenchmarkIndex is what every config or registry change costs before
// any generation: merging the registry and building the index.
func BenchmarkIndex(b *testing.B) {
	snap := pilottest.Snapshot(b, 1, benchMesh(benchServices))
	b.ReportAllocs()
	for b.Loop() {
		_ = pilottest.IndexOf(snap)
	}
}
