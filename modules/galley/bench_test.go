package galley_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/meshd/meshd/modules/galley"
	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
)

// meshYAML generates a mesh of services, ten objects each: a ServiceEntry,
// two WorkloadEntries, a DestinationRule with subsets, a canary
// VirtualService, a PeerAuthentication, an AuthorizationPolicy, a
// RequestAuthentication, a Sidecar and a WorkloadGroup. Services are spread
// over 50 namespaces, each with a Gateway that every tenth VirtualService
// binds to. The set validates clean, so benchmarks measure the common case.
func meshYAML(services int) string {
	var b strings.Builder
	b.Grow(services * 4000)
	namespaces := min(50, services)
	for n := 0; n < namespaces; n++ {
		fmt.Fprintf(&b, `---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: ns-%[1]d}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["ns-%[1]d/*"]
    tls: {mode: SIMPLE, credentialName: ns-%[1]d-cert}
`, n)
	}
	for i := 0; i < services; i++ {
		ns := fmt.Sprintf("ns-%d", i%namespaces)
		gw := ""
		host := fmt.Sprintf("svc-%d", i)
		if i%10 == 0 {
			gw = fmt.Sprintf("\n  gateways: [ingress, mesh]")
			host = fmt.Sprintf("svc-%d\n  - svc-%d.example.com", i, i)
		}
		fmt.Fprintf(&b, `---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc-%[1]d, namespace: %[2]s, labels: {app: svc-%[1]d}}
spec:
  hosts: [svc-%[1]d.%[2]s.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: svc-%[1]d}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: svc-%[1]d-v1, namespace: %[2]s}
spec:
  address: 10.%[3]d.%[4]d.1
  ports: {http: 8080}
  labels: {app: svc-%[1]d, version: v1}
  serviceAccount: svc-%[1]d
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: svc-%[1]d-v2, namespace: %[2]s}
spec:
  address: 10.%[3]d.%[4]d.2
  ports: {http: 8080}
  labels: {app: svc-%[1]d, version: v2}
  serviceAccount: svc-%[1]d
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc-%[1]d, namespace: %[2]s}
spec:
  host: svc-%[1]d
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    connectionPool: {tcp: {maxConnections: 100, connectTimeout: 250ms}, http: {http1MaxPendingRequests: 64}}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc-%[1]d, namespace: %[2]s}
spec:
  hosts:
  - %[5]s%[6]s
  http:
  - name: testers
    match:
    - headers: {x-tester: {exact: "true"}}
      uri: {regex: "^/api/v[0-9]+/.*"}
    route: [{destination: {host: svc-%[1]d, subset: v2}}]
  - name: canary
    route:
    - {destination: {host: svc-%[1]d, subset: v1}, weight: 90}
    - {destination: {host: svc-%[1]d, subset: v2}, weight: 10}
    timeout: 3s
    retries: {attempts: 3, perTryTimeout: 1s, retryOn: "5xx,reset,connect-failure"}
    headers: {request: {set: {x-mesh: meshd}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: svc-%[1]d, namespace: %[2]s}
spec:
  selector: {matchLabels: {app: svc-%[1]d}}
  mtls: {mode: STRICT}
  portLevelMtls: {9090: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: svc-%[1]d, namespace: %[2]s}
spec:
  selector: {matchLabels: {app: svc-%[1]d}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/%[2]s/sa/svc-%[7]d"], ipBlocks: [10.0.0.0/8]}}]
    to: [{operation: {methods: [GET, POST], paths: ["/api/*"]}}]
    when: [{key: "request.headers[x-tenant]", values: [shop]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: svc-%[1]d, namespace: %[2]s}
spec:
  selector: {matchLabels: {app: svc-%[1]d}}
  jwtRules: [{issuer: "https://auth.example.com", jwksUri: "https://auth.example.com/jwks.json", audiences: [svc-%[1]d]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: svc-%[1]d, namespace: %[2]s}
spec:
  workloadSelector: {labels: {app: svc-%[1]d}}
  egress: [{hosts: ["./*", "istio-system/*"]}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: svc-%[1]d, namespace: %[2]s}
spec:
  metadata: {labels: {app: svc-%[1]d, version: v3}}
  template: {ports: {http: 8080}, serviceAccount: svc-%[1]d}
  probe: {periodSeconds: 5, httpGet: {path: /ready, port: 8080}}
`, i, ns, i/256, i%256, host, gw, (i+1)%services)
	}
	return b.String()
}

// decodeMesh returns the objects of a generated mesh of about n objects.
func decodeMesh(tb testing.TB, n int) []*api.Object {
	tb.Helper()
	res := decode.Decode("mesh.yaml", []byte(meshYAML(n/10)))
	if len(res.Findings) > 0 {
		tb.Fatalf("generated mesh does not decode: %v", res.Findings[0])
	}
	return res.Objects
}

// TestGeneratedMeshIsClean keeps the benchmark input honest: it must pass
// every check, or the benchmark would time error reporting instead.
func TestGeneratedMeshIsClean(t *testing.T) {
	objs := decodeMesh(t, 300)
	for _, f := range galley.Check(objs, galley.Options{}) {
		t.Errorf("finding in generated mesh: %s", f)
	}
}

// BenchmarkValidateAnalyze10k validates and analyzes a set of 10,000
// objects (plus 50 Gateways) of every kind, decoded beforehand.
func BenchmarkValidateAnalyze10k(b *testing.B) {
	objs := decodeMesh(b, 10_000)
	c := galley.New(galley.Options{})
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if fs := c.Check(objs); len(fs) != 0 {
			b.Fatalf("unexpected finding: %s", fs[0])
		}
	}
	b.ReportMetric(float64(len(objs)), "objects")
}

// BenchmarkDecode10k measures decoding the same 10,000 objects from YAML,
// for comparison: decoding, not checking, dominates a full run.
func BenchmarkDecode10k(b *testing.B) {
	src := []byte(meshYAML(1000))
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if res := decode.Decode("mesh.yaml", src); len(res.Objects) < 10_000 {
			b.Fatalf("decoded %d objects", len(res.Objects))
		}
	}
}

// BenchmarkAcceptChange10k measures what one edited file costs meshd serve
// in a mesh of 10,000 objects in 50 files: the change is checked against
// the whole set (per-object validation of the file, analysis of all),
// stored as a revision in bbolt (fsync included) and published.
func BenchmarkAcceptChange10k(b *testing.B) {
	objs := decodeMesh(b, 10_000)
	files := map[string][]*api.Object{}
	for _, o := range objs {
		files[o.Namespace+".yaml"] = append(files[o.Namespace+".yaml"], o)
	}
	e := galley.NewTestEngine(b)
	var initial []api.Update
	for name, os := range files {
		initial = append(initial, api.Update{Origin: name, Objects: os})
	}
	e.Apply(initial...)
	if e.Revision() != 1 || e.Rejected() != 0 {
		b.Fatalf("initial apply: revision %d, %d rejected", e.Revision(), e.Rejected())
	}
	// Each run edits the timeout of one VirtualService of ns-7.yaml.
	file := files["ns-7.yaml"]
	vsAt := -1
	for i, o := range file {
		if o.Kind == api.KindVirtualService {
			vsAt = i
			break
		}
	}
	vsName := file[vsAt].Name
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for b.Loop() {
		n++
		b.StopTimer()
		edited := decode.Decode("ns-7.yaml", []byte(fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: %s, namespace: ns-7}
spec:
  hosts: [%s]
  http:
  - route: [{destination: {host: %s, subset: v1}}]
    timeout: %dms
`, vsName, vsName, vsName, 1000+n))).Objects[0]
		next := append([]*api.Object(nil), file...)
		next[vsAt] = edited
		b.StartTimer()
		e.Apply(api.Update{Origin: "ns-7.yaml", Objects: next})
	}
	b.StopTimer()
	if e.Revision() != uint64(n+1) || e.Rejected() != 0 {
		b.Fatalf("revision %d after %d changes, %d rejected", e.Revision(), n, e.Rejected())
	}
	b.ReportMetric(float64(len(objs)), "objects")
}
