package envoy

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/security"
	"github.com/meshd/meshd/xds/api"
)

// securityMesh adds what the security cases need to the golden mesh: the
// authorizer and the JWT issuer as services.
const securityMesh = `
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: authz, namespace: tools}
spec:
  hosts: [authz.tools.svc.cluster.local]
  ports: [{name: grpc, number: 9000, protocol: GRPC}, {name: http, number: 8000, protocol: HTTP}]
  endpoints: [{address: 10.0.5.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: issuer, namespace: ext}
spec:
  hosts: [issuer.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{name: https, number: 443, protocol: TLS}]
`

// securityPolicies is one of each policy form on productpage (HTTP port
// 9080, TCP port 9091) and the ingress gateway.
const securityPolicies = `
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: productpage}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/edge/sa/ingress]}}]
    to: [{operation: {methods: [GET, HEAD], paths: ["/products*", /index.html]}}]
  - from: [{source: {namespaces: [shop], notPrincipals: ["cluster.local/ns/shop/sa/untrusted"]}}]
    to: [{operation: {ports: ["9091"]}}]
  - from: [{source: {requestPrincipals: ["https://issuer.example.com/*"]}}]
    when: [{key: "request.auth.claims[groups]", values: [admins]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-deny, namespace: shop}
spec:
  selector: {matchLabels: {app: productpage}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
  - from: [{source: {ipBlocks: [203.0.113.0/24]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-audit, namespace: shop}
spec:
  selector: {matchLabels: {app: productpage}}
  action: AUDIT
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-ext, namespace: shop}
spec:
  selector: {matchLabels: {app: productpage}}
  action: CUSTOM
  provider: {name: ext-grpc}
  rules: [{to: [{operation: {paths: ["/checkout*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: productpage-jwt, namespace: shop}
spec:
  selector: {matchLabels: {app: productpage}}
  jwtRules:
  - issuer: https://issuer.example.com
    jwksUri: https://issuer.example.com/.well-known/jwks.json
    audiences: [shop]
    fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
    forwardOriginalToken: true
    outputPayloadToHeader: x-jwt-payload
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ingress, namespace: edge}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules:
  - from: [{source: {remoteIpBlocks: [198.51.100.0/24], notIpBlocks: [198.51.100.7]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ingress-jwt, namespace: edge}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  jwtRules:
  - issuer: https://issuer.example.com
    jwks: '{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}'
`

func securityMeshConfig() core.MeshConfig {
	m := core.DefaultMeshConfig()
	m.ExtensionProviders = &[]core.ExtensionProvider{
		{Name: "ext-grpc", EnvoyExtAuthzGRPC: &core.ExtAuthzGRPCService{Service: "authz.tools.svc.cluster.local", Port: 9000, Timeout: 500 * time.Millisecond}},
		{Name: "ext-http", EnvoyExtAuthzHTTP: &core.ExtAuthzHTTPService{Service: "authz.tools.svc.cluster.local", Port: 8000, PathPrefix: "/check", IncludeRequestHeadersInCheck: []string{"x-user"}}},
	}
	m.RateLimits = &[]core.RateLimit{
		{Name: "productpage-api", Namespace: "shop", Selector: map[string]string{"app": "productpage"},
			Match:       &core.RateLimitMatch{Paths: []string{"/api/*"}, Methods: []string{"GET"}},
			TokenBucket: core.TokenBucket{MaxTokens: 100, TokensPerFill: 10, FillInterval: time.Second}},
		{Name: "productpage-conn", Namespace: "shop", Selector: map[string]string{"app": "productpage"}, Ports: []uint32{9091},
			TokenBucket: core.TokenBucket{MaxTokens: 5, FillInterval: time.Second}},
		{Name: "ingress", Namespace: "meshd-system", Selector: map[string]string{"istio": "ingressgateway"}, PerConnection: true,
			TokenBucket: core.TokenBucket{MaxTokens: 50, FillInterval: 100 * time.Millisecond}},
	}
	if err := m.ValidateSecurity(); err != nil {
		panic(err)
	}
	return m
}

func securityIndex(t *testing.T, mesh core.MeshConfig, extra string) *index.Index {
	t.Helper()
	b, err := os.ReadFile("testdata/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return buildIndex(t, mesh, string(b)+securityMesh+extra)
}

var securityCases = []struct {
	name  string
	mesh  func() core.MeshConfig
	proxy *api.Proxy
	yaml  string
}{
	// The namespace requires mTLS: every inbound port and the passthrough
	// get one chain terminating mTLS.
	{"security-strict", core.DefaultMeshConfig, productpage, `
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
`},
	// The mesh default (PERMISSIVE) with the workload's TCP port DISABLEd
	// by portLevelMtls: the HTTP port gets a plaintext and an mTLS chain
	// behind the TLS inspector, the TCP port plaintext only.
	{"security-permissive", core.DefaultMeshConfig, productpage, `
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: productpage, namespace: shop}
spec:
  selector: {matchLabels: {app: productpage}}
  mtls: {mode: UNSET}
  portLevelMtls: {9091: {mode: DISABLE}}
`},
	// The mesh disables mTLS from the root namespace: plaintext only.
	{"security-disable", core.DefaultMeshConfig, productpage, `
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: meshd-system}
spec: {mtls: {mode: DISABLE}}
`},
	// Every policy form on a sidecar: rate limits, JWT, CUSTOM, AUDIT,
	// DENY, ALLOW on the HTTP port; their TCP versions on the TCP port.
	{"security-policies", securityMeshConfig, productpage, securityPolicies},
	// A gateway's connection managers get the policies selecting it.
	{"security-gateway", securityMeshConfig, ingress, securityPolicies},
}

// TestSecurityGolden generates each security case with the Security
// extension, runs every check the golden cases run (ValidateAll down into
// the typed configs, Envoy's consistency rules, references) on the whole
// output, and compares the listeners security shapes (the sidecar's
// inbound listener, the gateway's listeners) with testdata/<case>.golden.
func TestSecurityGolden(t *testing.T) {
	g := New(Options{Extensions: []any{Security{}}})
	for _, tc := range securityCases {
		t.Run(tc.name, func(t *testing.T) {
			ix := securityIndex(t, tc.mesh(), tc.yaml)
			out := output{g.Listeners(ix, tc.proxy), g.Routes(ix, tc.proxy), g.Clusters(ix, tc.proxy)}
			checkOutput(t, ix, tc.proxy, out)
			var shown []*listenerv3.Listener
			for _, l := range out.listeners {
				if tc.proxy.Type == api.Gateway || l.GetName() == VirtualInboundListener {
					shown = append(shown, l)
				}
			}
			compareGolden(t, filepath.Join("testdata", tc.name+".golden"), render(t, output{listeners: shown}))
		})
	}
}

// chainsOf returns the virtualInbound chains of a sidecar by name.
func chainsOf(t *testing.T, g *Generator, ix *index.Index, p *api.Proxy) map[string]*listenerv3.FilterChain {
	t.Helper()
	for _, l := range g.Listeners(ix, p) {
		if l.GetName() == VirtualInboundListener {
			out := map[string]*listenerv3.FilterChain{}
			for _, fc := range l.GetFilterChains() {
				out[fc.GetName()] = fc
			}
			if !slices.ContainsFunc(l.GetListenerFilters(), func(f *listenerv3.ListenerFilter) bool { return f.GetName() == wellknown.TLSInspector }) {
				out["(no tls inspector)"] = nil
			}
			return out
		}
	}
	t.Fatal("no virtualInbound")
	return nil
}

// TestSecurityModes checks the chains of each mode by name, match and
// socket, and that the sidecar's key changes with the policies that
// select it.
func TestSecurityModes(t *testing.T) {
	g := New(Options{Extensions: []any{Security{}}})
	mtls := func(fc *listenerv3.FilterChain) bool {
		var d tlsv3.DownstreamTlsContext
		return fc.GetTransportSocket().GetTypedConfig().UnmarshalTo(&d) == nil && d.GetRequireClientCertificate().GetValue()
	}
	for _, tc := range securityCases[:3] {
		ix := securityIndex(t, tc.mesh(), tc.yaml)
		chains := chainsOf(t, g, ix, productpage)
		http, httpMTLS := chains["0.0.0.0_9080"], chains["0.0.0.0_9080-mtls"]
		tcp, tcpMTLS := chains["0.0.0.0_9091"], chains["0.0.0.0_9091-mtls"]
		pass, passMTLS := chains[VirtualInboundPassthroughChain], chains[VirtualInboundPassthroughChain+"-mtls"]
		_, noInspector := chains["(no tls inspector)"]
		switch tc.name {
		case "security-strict":
			if http != nil || tcp != nil || pass != nil || !mtls(httpMTLS) || !mtls(tcpMTLS) || !mtls(passMTLS) {
				t.Errorf("%s: want only mTLS chains, got %v", tc.name, keys(chains))
			}
		case "security-permissive":
			if http.GetFilterChainMatch().GetTransportProtocol() != "raw_buffer" || httpMTLS.GetFilterChainMatch().GetTransportProtocol() != "tls" || !mtls(httpMTLS) {
				t.Errorf("%s: HTTP port chains %v", tc.name, keys(chains))
			}
			if tcp == nil || tcpMTLS != nil || tcp.GetTransportSocket() != nil {
				t.Errorf("%s: TCP port (portLevelMtls DISABLE) chains %v", tc.name, keys(chains))
			}
			if pass == nil || !mtls(passMTLS) || noInspector {
				t.Errorf("%s: passthrough chains %v", tc.name, keys(chains))
			}
		case "security-disable":
			if http == nil || tcp == nil || pass == nil || httpMTLS != nil || tcpMTLS != nil || passMTLS != nil || http.GetTransportSocket() != nil {
				t.Errorf("%s: want only plaintext chains, got %v", tc.name, keys(chains))
			}
		}
	}
	plain := securityIndex(t, core.DefaultMeshConfig(), "")
	strict := securityIndex(t, core.DefaultMeshConfig(), securityCases[0].yaml)
	if SecurityKeyPart(plain, productpage) == SecurityKeyPart(strict, productpage) {
		t.Error("the key does not change when a PeerAuthentication selects the workload")
	}
	pol := securityIndex(t, securityMeshConfig(), securityPolicies)
	other := *productpage
	other.Labels = map[string]string{"app": "other"}
	if SecurityKeyPart(pol, productpage) == SecurityKeyPart(pol, &other) {
		t.Error("two workloads selected by different policies share a key")
	}
	unrelated := *productpage
	unrelated.Labels = map[string]string{"app": "productpage", "pod-template-hash": "x"}
	if SecurityKeyPart(pol, productpage) != SecurityKeyPart(pol, &unrelated) {
		t.Error("a label no policy reads changes the key")
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestSecurityFilterOrder checks the order of the security HTTP filters
// on the sidecar's HTTP port and the network filters on its TCP port.
func TestSecurityFilterOrder(t *testing.T) {
	g := New(Options{Extensions: []any{Security{}}})
	ix := securityIndex(t, securityMeshConfig(), securityPolicies)
	chains := chainsOf(t, g, ix, productpage)
	h := hcmOf(t, chains["0.0.0.0_9080"])
	var names []string
	for _, f := range h.GetHttpFilters() {
		names = append(names, f.GetName())
	}
	want := []string{"meshd.local_ratelimit.productpage-api", security.FilterJWT, security.FilterCustom, security.FilterExtAuthz,
		security.FilterAudit, security.FilterDeny, security.FilterAllow, FaultFilterName, CORSFilterName, RouterFilterName}
	if !slices.Equal(names, want) {
		t.Errorf("HTTP filters\n got %v\nwant %v", names, want)
	}
	names = nil
	for _, f := range chains["0.0.0.0_9091"].GetFilters() {
		names = append(names, f.GetName())
	}
	want = []string{security.NetworkFilterRateLimit, security.NetworkFilterCustom, security.NetworkFilterExtAuthz,
		security.NetworkFilterAudit, security.NetworkFilterDeny, security.NetworkFilterAllow, wellknown.TCPProxy}
	if !slices.Equal(names, want) {
		t.Errorf("TCP filters\n got %v\nwant %v", names, want)
	}
}

// BenchmarkEnvoySidecarLDSSecurity is BenchmarkEnvoySidecarLDS with the
// Security extension and a namespace-wide STRICT PeerAuthentication plus
// an ALLOW and a DENY policy on the bench sidecar's workload, to compare
// what enforcing policy adds to a sidecar's listeners.
func BenchmarkEnvoySidecarLDSSecurity(b *testing.B) {
	ix := buildIndex(b, core.DefaultMeshConfig(), benchYAML(benchServices)+`
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: ns0}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: ns0}
spec:
  selector: {matchLabels: {app: bench}}
  rules: [{from: [{source: {namespaces: [ns0, ns1]}}], to: [{operation: {paths: ["/api/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: ns0}
spec:
  selector: {matchLabels: {app: bench}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
`)
	g := New(Options{Extensions: []any{Security{}}})
	n := len(g.Listeners(ix, benchSidecar))
	b.ReportAllocs()
	start := cpuTime()
	for b.Loop() {
		g.Listeners(ix, benchSidecar)
		_ = SecurityKeyPart(ix, benchSidecar)
	}
	if cpu := cpuTime() - start; cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
	b.ReportMetric(float64(n), "resources")
}
