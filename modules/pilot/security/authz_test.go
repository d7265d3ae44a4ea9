package security

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/pilot/internal/pilottest"
)

const root = "istio-system"

// httpbin is the workload the examples protect, as in Istio's docs.
var httpbin = Workload{Namespace: "foo", Labels: map[string]string{"app": "httpbin"}}

func configOf(t testing.TB, mesh core.MeshConfig, yaml string) *Config {
	t.Helper()
	return New(mesh, root, pilottest.Snapshot(t, 1, yaml))
}

// compact renders a message as compact JSON with proto field names.
func compact(t testing.TB, m proto.Message) string {
	t.Helper()
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(v) // sorted keys, no spacing
	return string(out)
}

// stage is one security filter, parsed for the evaluator.
type stage struct {
	jwt      bool
	shadow   bool // a CUSTOM gate: a match means the authorizer is asked
	action   rbacv3.RBAC_Action
	policies map[string]*rbacv3.Policy
}

// stages parses the security filters of a connection manager or a TCP
// chain (HTTP or network filters).
func stages(t testing.TB, configs []*anypb.Any) []stage {
	t.Helper()
	var out []stage
	for _, a := range configs {
		var hr rbachttpv3.RBAC
		var nr rbacnetv3.RBAC
		var jwt jwtv3.JwtAuthentication
		var rules, shadow *rbacv3.RBAC
		switch {
		case a.MessageIs(&hr):
			if err := a.UnmarshalTo(&hr); err != nil {
				t.Fatal(err)
			}
			rules, shadow = hr.GetRules(), hr.GetShadowRules()
		case a.MessageIs(&nr):
			if err := a.UnmarshalTo(&nr); err != nil {
				t.Fatal(err)
			}
			rules, shadow = nr.GetRules(), nr.GetShadowRules()
		case a.MessageIs(&jwt):
			out = append(out, stage{jwt: true})
			continue
		default:
			continue
		}
		if rules == nil {
			out = append(out, stage{shadow: true, policies: shadow.GetPolicies()})
			continue
		}
		out = append(out, stage{action: rules.GetAction(), policies: rules.GetPolicies()})
	}
	return out
}

func httpStages(t testing.TB, filters []*hcmv3.HttpFilter) []stage {
	var a []*anypb.Any
	for _, f := range filters {
		a = append(a, f.GetTypedConfig())
	}
	return stages(t, a)
}

// allowed runs a request through security stages the way the proxies
// would: a CUSTOM gate that matches counts as the authorizer refusing (the
// strictest outcome), a token that did not verify (an authorization
// header without claims) is rejected by the JWT filter, DENY rules deny,
// ALLOW rules must match, AUDIT only logs.
func allowed(st []stage, e engine, r request) bool {
	for _, s := range st {
		switch {
		case s.jwt:
			if _, token := r.headers["authorization"]; token && r.claims == nil {
				return false
			}
		case s.shadow:
			if e.matches(s.policies, r) {
				return false
			}
		case s.action == rbacv3.RBAC_DENY:
			if e.matches(s.policies, r) {
				return false
			}
		case s.action == rbacv3.RBAC_ALLOW:
			if !e.matches(s.policies, r) {
				return false
			}
		}
	}
	return true
}

// httpAllowed runs a request through HTTP filters.
func httpAllowed(t testing.TB, filters []*hcmv3.HttpFilter, e engine, r request) bool {
	return allowed(httpStages(t, filters), e, r)
}

// grpcFilters returns the HTTP filters of a proxyless server's chain.
func grpcFilters(t testing.TB, c *Config, w Workload, port uint32) []*hcmv3.HttpFilter {
	t.Helper()
	s := c.GRPCServerChains(nil, w, port)
	var h hcmv3.HttpConnectionManager
	if err := s.Chains[len(s.Chains)-1].GetFilters()[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
		t.Fatal(err)
	}
	return h.GetHttpFilters()
}

// TestIstioExamples translates one AuthorizationPolicy of each category of
// Istio's authorization documentation and checks the RBAC rules that
// implement it, then sends requests through the generated filters.
func TestIstioExamples(t *testing.T) {
	sleep := "spiffe://cluster.local/ns/default/sa/sleep"
	inBar := "spiffe://cluster.local/ns/bar/sa/client"
	for _, tc := range []struct {
		name string
		yaml string
		// want is the generated RBAC filter config, compact JSON.
		want  string
		allow []request
		deny  []request
	}{{
		name: "allow-nothing",
		yaml: `spec: {}`,
		want: `{"rules":{}}`,
		deny: []request{{principal: sleep, path: "/", method: "GET"}, {path: "/"}},
	}, {
		name: "deny-all",
		yaml: `spec: {action: DENY, rules: [{}]}`,
		want: `{"rules":{"action":"DENY","policies":{"foo/p[0]":{"permissions":[{"any":true}],"principals":[{"any":true}]}}}}`,
		deny: []request{{principal: sleep, path: "/"}, {path: "/healthz"}},
	}, {
		name:  "source namespace",
		yaml:  `spec: {rules: [{from: [{source: {namespaces: [bar]}}]}]}`,
		want:  `{"rules":{"policies":{"foo/p[0]":{"permissions":[{"any":true}],"principals":[{"authenticated":{"principal_name":{"safe_regex":{"regex":".*/ns/bar/.*"}}}}]}}}}`,
		allow: []request{{principal: inBar, path: "/"}},
		deny:  []request{{principal: sleep, path: "/"}, {path: "/"}, {principal: "spiffe://cluster.local/ns/barn/sa/x"}},
	}, {
		name:  "principal",
		yaml:  `spec: {rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]}]}`,
		want:  `{"rules":{"policies":{"foo/p[0]":{"permissions":[{"any":true}],"principals":[{"authenticated":{"principal_name":{"exact":"spiffe://cluster.local/ns/default/sa/sleep"}}}]}}}}`,
		allow: []request{{principal: sleep, path: "/"}},
		deny:  []request{{principal: inBar, path: "/"}, {path: "/"}},
	}, {
		name:  "path prefix",
		yaml:  `spec: {rules: [{to: [{operation: {paths: ["/api/*"]}}]}]}`,
		want:  `{"rules":{"policies":{"foo/p[0]":{"permissions":[{"url_path":{"path":{"prefix":"/api/"}}}],"principals":[{"any":true}]}}}}`,
		allow: []request{{path: "/api/v1/items"}, {path: "/api/x?q=1"}},
		deny:  []request{{path: "/apix"}, {path: "/"}},
	}, {
		name:  "method",
		yaml:  `spec: {rules: [{to: [{operation: {methods: [GET]}}]}]}`,
		want:  `{"rules":{"policies":{"foo/p[0]":{"permissions":[{"header":{"name":":method","string_match":{"exact":"GET"}}}],"principals":[{"any":true}]}}}}`,
		allow: []request{{method: "GET", path: "/"}},
		deny:  []request{{method: "POST", path: "/"}},
	}, {
		name:  "IP block",
		yaml:  `spec: {rules: [{from: [{source: {ipBlocks: [1.2.3.4, 5.6.7.0/24]}}]}]}`,
		want:  `{"rules":{"policies":{"foo/p[0]":{"permissions":[{"any":true}],"principals":[{"or_ids":{"ids":[{"direct_remote_ip":{"address_prefix":"1.2.3.4","prefix_len":32}},{"direct_remote_ip":{"address_prefix":"5.6.7.0","prefix_len":24}}]}}]}}}}`,
		allow: []request{{sourceIP: "1.2.3.4"}, {sourceIP: "5.6.7.200"}},
		deny:  []request{{sourceIP: "1.2.3.5"}, {sourceIP: "5.6.8.1"}},
	}, {
		name: "JWT claim condition",
		yaml: `spec:
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
    when: [{key: "request.auth.claims[groups]", values: [group1]}]`,
		want: `{"rules":{"policies":{"foo/p[0]":{"permissions":[{"any":true}],"principals":[{"and_ids":{"ids":[` +
			`{"metadata":{"filter":"envoy.filters.http.jwt_authn","path":[{"key":"payload"},{"key":"iss"}],"value":{"present_match":true}}},` +
			`{"or_ids":{"ids":[{"metadata":{"filter":"envoy.filters.http.jwt_authn","path":[{"key":"payload"},{"key":"groups"}],"value":{"string_match":{"exact":"group1"}}}},` +
			`{"metadata":{"filter":"envoy.filters.http.jwt_authn","path":[{"key":"payload"},{"key":"groups"}],"value":{"list_match":{"one_of":{"string_match":{"exact":"group1"}}}}}}]}}]}}]}}}}`,
		allow: []request{{claims: map[string]any{"iss": "https://id", "sub": "u", "groups": []any{"group0", "group1"}}}, {claims: map[string]any{"iss": "x", "groups": "group1"}}},
		deny:  []request{{claims: map[string]any{"iss": "https://id", "groups": []any{"group2"}}}, {}},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			c := configOf(t, core.DefaultMeshConfig(), "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\n"+tc.yaml)
			filters := c.EnvoyHTTPFilters(httpbin, 8000)
			if len(filters) != 1 {
				t.Fatalf("%d filters, want one RBAC filter", len(filters))
			}
			var rb rbachttpv3.RBAC
			if err := filters[0].GetTypedConfig().UnmarshalTo(&rb); err != nil {
				t.Fatal(err)
			}
			if got := compact(t, &rb); got != tc.want {
				t.Errorf("RBAC\n got %s\nwant %s", got, tc.want)
			}
			for _, r := range tc.allow {
				if !httpAllowed(t, filters, engine{}, r) {
					t.Errorf("denied %+v", r)
				}
			}
			for _, r := range tc.deny {
				if httpAllowed(t, filters, engine{}, r) {
					t.Errorf("allowed %+v", r)
				}
			}
		})
	}
}

// trickyPolicies mixes attributes each target cannot evaluate into ALLOW,
// DENY and CUSTOM policies, for the fail-closed tests.
const trickyPolicies = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/foo/sa/alpha]}}]
  - from: [{source: {requestPrincipals: [issuer/alice]}}]
  - from: [{source: {namespaces: [bar]}}]
    to: [{operation: {paths: ["/public/*"], methods: [GET, POST]}}]
  - from: [{source: {ipBlocks: [10.0.0.0/8]}}]
    when: [{key: "request.headers[grpc-trace]", values: ["*"]}]
  - to: [{operation: {ports: ["8000"]}}]
    when: [{key: connection.sni, values: [foo.example.com]}]
  - when: [{key: "request.auth.claims[role]", values: [admin]}, {key: source.namespace, values: [baz]}]
  - from: [{source: {notRequestPrincipals: ["*"], principals: [cluster.local/ns/foo/sa/gamma]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - from: [{source: {notRequestPrincipals: ["*"]}}]
    to: [{operation: {paths: ["/admin*"]}}]
  - from: [{source: {principals: [cluster.local/ns/foo/sa/alpha]}}]
    when: [{key: "request.auth.claims[banned]", values: ["true"]}]
  - to: [{operation: {methods: [DELETE]}}]
  - when: [{key: "request.headers[grpc-bad]", values: ["1"]}, {key: source.ip, values: [10.9.0.0/16]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: CUSTOM
  provider: {name: ext}
  rules: [{to: [{operation: {paths: ["/ext/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  jwtRules: [{issuer: issuer, jwks: '{"keys":[{"kty":"oct"}]}'}]
`

// randomRequest draws a request from small pools, so rules match often.
func randomRequest(rng *rand.Rand) request {
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	r := request{
		principal: pick("", "spiffe://cluster.local/ns/foo/sa/alpha", "spiffe://cluster.local/ns/foo/sa/gamma",
			"spiffe://cluster.local/ns/bar/sa/beta", "spiffe://cluster.local/ns/baz/sa/x"),
		sourceIP:  pick("10.1.2.3", "10.9.1.1", "192.168.1.1"),
		destIP:    "10.0.0.100",
		port:      []uint32{8000, 9000}[rng.IntN(2)],
		path:      pick("/", "/public/x", "/admin/y", "/ext/z", "/pkg.Svc/Method"),
		method:    pick("GET", "POST", "DELETE"),
		authority: pick("httpbin.foo", "other"),
		sni:       pick("", "foo.example.com"),
		headers:   map[string]string{},
	}
	if rng.IntN(2) == 0 {
		r.headers["grpc-trace"] = "t"
	}
	if rng.IntN(3) == 0 {
		r.headers["grpc-bad"] = "1"
	}
	switch rng.IntN(4) {
	case 0: // a verified token
		r.headers["authorization"] = "Bearer x"
		r.claims = map[string]any{"iss": "issuer", "sub": pick("alice", "bob"), "role": pick("admin", "user"), "banned": pick("true", "false")}
	case 1: // a token that does not verify
		r.headers["authorization"] = "Bearer forged"
	}
	return r
}

// TestFailClosed sends random requests through the filters generated for
// a proxyless server and for Envoy's TCP chains, and checks that neither
// allows anything Envoy's HTTP filters (which evaluate every attribute,
// the policies' intent) would refuse: an attribute a target cannot
// evaluate never widens what is allowed. It also checks the issues name
// each attribute and that both targets still allow something.
func TestFailClosed(t *testing.T) {
	mesh := core.DefaultMeshConfig()
	mesh.ExtensionProviders = &[]core.ExtensionProvider{{Name: "ext", EnvoyExtAuthzGRPC: &core.ExtAuthzGRPCService{Service: "authz.foo.svc.cluster.local", Port: 9000}}}
	// The second set leaves out the DENY rules that use only HTTP
	// attributes, which deny every TCP connection (as galley warns), so
	// TCP chains let some connections through.
	tcpFriendly := strings.Replace(strings.Replace(trickyPolicies, `  - from: [{source: {notRequestPrincipals: ["*"]}}]
    to: [{operation: {paths: ["/admin*"]}}]
`, "", 1), "  - to: [{operation: {methods: [DELETE]}}]\n", "", 1)
	tcpFriendly = tcpFriendly[:strings.Index(tcpFriendly, "kind: AuthorizationPolicy\nmetadata: {name: ext")] + tcpFriendly[strings.Index(tcpFriendly, "kind: RequestAuthentication"):]
	for i, yaml := range []string{trickyPolicies, tcpFriendly} {
		grpcAllowed, tcpAllowed := checkFailClosed(t, configOf(t, mesh, yaml))
		if i == 0 && grpcAllowed == 0 || i == 1 && tcpAllowed == 0 {
			t.Errorf("policy set %d: the proxyless server allows %d requests and TCP %d connections; the test needs some", i, grpcAllowed, tcpAllowed)
		}
	}

	// Every attribute gRPC cannot see is reported, with its effect.
	issues := configOf(t, mesh, trickyPolicies).GRPCServerChains(nil, httpbin, 8000).Issues
	var got []string
	for _, i := range issues {
		got = append(got, fmt.Sprintf("%s %s dropped=%v", i.Policy, i.Field, i.Dropped))
	}
	text := strings.Join(got, "\n")
	for _, want := range []string{
		"foo/allow spec.rules[1].from[0].source.requestPrincipals dropped=true",
		"foo/allow spec.rules[3].when[0] dropped=true",
		"foo/allow spec.rules[4].when[0] dropped=true",
		"foo/allow spec.rules[5].when[0] dropped=true",
		"foo/allow spec.rules[6].from[0].source.notRequestPrincipals dropped=true",
		"foo/deny spec.rules[0].from[0].source.notRequestPrincipals dropped=false",
		"foo/deny spec.rules[1].when[0] dropped=false",
		"foo/deny spec.rules[3].when[0] dropped=false",
		"foo/ext spec.action dropped=false",
		"foo/jwt spec.jwtRules dropped=false",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("issues lack %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "spec.rules[0].from[0].source.principals") || strings.Contains(text, "rules[2]") {
		t.Errorf("issues name attributes gRPC evaluates:\n%s", text)
	}
}

// checkFailClosed runs random requests through c's filters for a
// proxyless server, Envoy's TCP chains and Envoy's HTTP chains, and fails
// when one of the first two allows what the last refuses. It returns how
// many the first two allowed.
func checkFailClosed(t *testing.T, c *Config) (grpcAllowed, tcpAllowed2 int) {
	t.Helper()
	intent := httpStages(t, c.EnvoyHTTPFilters(httpbin, 8000))
	grpc := httpStages(t, grpcFilters(t, c, httpbin, 8000))
	var netConfigs []*anypb.Any
	for _, f := range c.EnvoyNetworkFilters(httpbin, 8000, "test") {
		netConfigs = append(netConfigs, f.GetTypedConfig())
	}
	tcp := stages(t, netConfigs)
	rng := rand.New(rand.NewPCG(1, 2))
	var intentAllowed int
	for range 5000 {
		r := randomRequest(rng)
		want := allowed(intent, engine{}, r)
		if want {
			intentAllowed++
		}
		// A gRPC request is a POST; compare it with the same request
		// through Envoy.
		g := r
		g.method = "POST"
		if allowed(grpc, engine{grpc: true}, g) {
			grpcAllowed++
			if !allowed(intent, engine{}, g) {
				t.Fatalf("the proxyless server allows %+v, which the policies refuse", g)
			}
		}
		// TCP sees the connection: no HTTP attributes, no token.
		conn := r
		conn.path, conn.method, conn.authority, conn.headers, conn.claims = "", "", "", nil, nil
		if allowed(tcp, engine{}, conn) {
			tcpAllowed2++
			// A connection the TCP chain lets through carries requests with
			// any HTTP attributes: every one must be allowed.
			for _, path := range []string{"/", "/admin/y", "/ext/z", "/public/x"} {
				for _, m := range []string{"GET", "DELETE"} {
					for _, claims := range []map[string]any{nil, {"iss": "issuer", "sub": "alice", "banned": "true", "role": "admin"}} {
						x := r
						x.path, x.method, x.claims = path, m, claims
						x.headers = map[string]string{"grpc-bad": "1"}
						if claims != nil {
							x.headers["authorization"] = "Bearer x"
						}
						if !allowed(intent, engine{}, x) {
							t.Fatalf("the TCP chain admits a connection carrying %+v, which the policies refuse", x)
						}
					}
				}
			}
		}
	}
	t.Logf("of 5000 requests: %d allowed as intended, %d by the proxyless server, %d connections by TCP", intentAllowed, grpcAllowed, tcpAllowed2)
	if intentAllowed == grpcAllowed {
		t.Errorf("the proxyless server allows as much as intended (%d): the test policies should make it refuse some", grpcAllowed)
	}
	return grpcAllowed, tcpAllowed2
}

// TestEvaluable pins the capability table galley's warnings share.
func TestEvaluable(t *testing.T) {
	for _, tc := range []struct {
		attr             string
		http, tcp, grpcT bool
	}{
		{"principals", true, true, true},
		{"notNamespaces", true, true, true},
		{"remoteIpBlocks", true, true, true},
		{"requestPrincipals", true, false, false},
		{"paths", true, false, true},
		{"methods", true, false, true},
		{"ports", true, true, true},
		{"source.ip", true, true, true},
		{"destination.port", true, true, true},
		{"connection.sni", true, true, false},
		{"request.auth.claims[groups]", true, false, false},
		{"request.auth.audiences", true, false, false},
		{"request.headers[x-user]", true, false, true},
		{"request.headers[grpc-timeout]", true, false, false},
		{"request.headers[:scheme]", true, false, false},
		{"experimental.envoy.filters.http.foo[bar]", true, false, false},
		{"destination.labels[x]", false, false, false},
	} {
		for target, want := range map[Target]bool{EnvoyHTTP: tc.http, EnvoyTCP: tc.tcp, GRPC: tc.grpcT} {
			if got, reason := Evaluable(target, tc.attr); got != want || (!got && reason == "") {
				t.Errorf("Evaluable(%s, %s) = %v %q, want %v", target, tc.attr, got, reason, want)
			}
		}
	}
}
