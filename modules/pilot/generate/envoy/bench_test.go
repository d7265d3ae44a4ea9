package envoy

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/xds/api"
)

// benchServices is the mesh size the benchmarks generate for.
const benchServices = 1000

// benchYAML is a mesh of n services over ten namespaces: 70% HTTP (two in
// seven with a second gRPC port), 20% TCP (half with a virtual IP), 10%
// TLS; a DestinationRule with two subsets and a VirtualService splitting
// between them for every tenth service; the benchmark workload's own
// service; and an ingress Gateway (HTTP, HTTPS) with a VirtualService bound
// to it per HTTP service.
func benchYAML(n int) string {
	var b strings.Builder
	for i := range n {
		ns := fmt.Sprintf("ns%d", i%10)
		host := fmt.Sprintf("svc%d.%s.svc.cluster.local", i, ns)
		switch {
		case i%10 < 7:
			ports := "[{name: http, number: 8080, protocol: HTTP}"
			if i%5 == 0 {
				ports += ", {name: grpc, number: 9090, protocol: GRPC}"
			}
			ports += "]"
			fmt.Fprintf(&b, "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc%d, namespace: %s}\nspec:\n  hosts: [%s]\n  ports: %s\n  endpoints: [{address: 10.%d.%d.1, labels: {version: v1}}, {address: 10.%d.%d.2, labels: {version: v2}}]\n",
				i, ns, host, ports, i/250, i%250, i/250, i%250)
			fmt.Fprintf(&b, "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: edge-svc%d, namespace: %s}\nspec:\n  hosts: [svc%d.example.com]\n  gateways: [edge/ingress]\n  http:\n  - route: [{destination: {host: %s, port: {number: 8080}}}]\n",
				i, ns, i, host)
		case i%10 < 9:
			addr := ""
			if i%2 == 0 {
				addr = fmt.Sprintf("  addresses: [240.%d.%d.1]\n", i/250, i%250)
			}
			fmt.Fprintf(&b, "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc%d, namespace: %s}\nspec:\n  hosts: [%s]\n%s  ports: [{name: tcp, number: %d, protocol: TCP}]\n  endpoints: [{address: 10.%d.%d.1}]\n",
				i, ns, host, addr, 5000+i%50, i/250, i%250)
		default:
			fmt.Fprintf(&b, "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc%d, namespace: %s}\nspec:\n  hosts: [svc%d.external.example.com]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports: [{name: tls, number: 443, protocol: TLS}]\n",
				i, ns, i)
		}
		if i%10 == 0 {
			fmt.Fprintf(&b, "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: svc%d, namespace: %s}\nspec:\n  host: %s\n  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n", i, ns, host)
			fmt.Fprintf(&b, "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: svc%d, namespace: %s}\nspec:\n  hosts: [%s]\n  http:\n  - match: [{uri: {prefix: /canary}}]\n    route: [{destination: {host: %s, subset: v2}}]\n  - route: [{destination: {host: %s, subset: v1}, weight: 90}, {destination: {host: %s, subset: v2}, weight: 10}]\n",
				i, ns, host, host, host, host)
		}
	}
	b.WriteString(`---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench-app, namespace: ns0}
spec:
  hosts: [bench-app.ns0.svc.cluster.local]
  ports: [{name: http, number: 80, protocol: HTTP, targetPort: 8080}, {name: grpc, number: 9090, protocol: GRPC}]
  endpoints: [{address: 10.200.0.1, labels: {app: bench}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*/*"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*/*"]
    tls: {mode: SIMPLE, credentialName: wildcard-cert}
`)
	return b.String()
}

var (
	benchOnce sync.Once
	benchIx   *index.Index
)

func benchIndex(b *testing.B) *index.Index {
	benchOnce.Do(func() { benchIx = buildIndex(b, core.DefaultMeshConfig(), benchYAML(benchServices)) })
	return benchIx
}

var (
	benchSidecar = &api.Proxy{Type: api.Sidecar, IP: "10.200.0.1", IPs: []string{"10.200.0.1"}, Namespace: "ns0", Labels: map[string]string{"app": "bench"}}
	benchGateway = &api.Proxy{Type: api.Gateway, IP: "10.201.0.1", IPs: []string{"10.201.0.1"}, Namespace: "edge", Labels: map[string]string{"istio": "ingressgateway"}}
)

func benchGenerate[T any](b *testing.B, p *api.Proxy, gen func(*Generator, *index.Index, *api.Proxy) []T) {
	ix := benchIndex(b)
	g := New(Options{})
	n := len(gen(g, ix, p))
	b.ReportAllocs()
	b.ResetTimer()
	start := cpuTime()
	for b.Loop() {
		gen(g, ix, p)
	}
	if cpu := cpuTime() - start; cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
	b.ReportMetric(float64(n), "resources")
}

func BenchmarkEnvoySidecarLDS(b *testing.B) {
	benchGenerate(b, benchSidecar, (*Generator).Listeners)
}

func BenchmarkEnvoySidecarRDS(b *testing.B) {
	benchGenerate(b, benchSidecar, (*Generator).Routes)
}

func BenchmarkEnvoyGatewayLDS(b *testing.B) {
	benchGenerate(b, benchGateway, (*Generator).Listeners)
}

func BenchmarkEnvoyGatewayRDS(b *testing.B) {
	benchGenerate(b, benchGateway, (*Generator).Routes)
}

func BenchmarkEnvoyKey(b *testing.B) {
	ix := benchIndex(b)
	b.ReportAllocs()
	for b.Loop() {
		Key(ix, benchSidecar)
	}
}

// TestBenchMesh keeps the benchmark's mesh honest: it must build, validate
// and reference only what exists, at a small size so default tests stay
// fast.
func TestBenchMesh(t *testing.T) {
	ix := buildIndex(t, core.DefaultMeshConfig(), benchYAML(40))
	for _, p := range []*api.Proxy{benchSidecar, benchGateway} {
		out := genAll(ix, p)
		if len(out.listeners) < 2 || len(out.routes) == 0 {
			t.Fatalf("%s: %d listeners, %d routes", p.Type, len(out.listeners), len(out.routes))
		}
		checkOutput(t, ix, p, out)
	}
}
