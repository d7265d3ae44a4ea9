package security

import (
	"slices"
	"strings"
	"testing"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/galley/analyze"
	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
	"github.com/meshd/meshd/modules/galley/validate"
)

// proxylessEcho is httpbin as a proxyless gRPC server, as galley knows it.
const proxylessEcho = `
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: httpbin, namespace: foo, annotations: {inject.istio.io/templates: grpc-agent}}
spec:
  address: 10.0.0.7
  labels: {app: httpbin}
---
`

// findings runs galley's checks (per object and whole set) on yaml.
func findings(t *testing.T, yaml string) []galleyapi.Finding {
	t.Helper()
	res := decode.Decode("set.yaml", []byte(yaml))
	for _, f := range res.Findings {
		if f.Severity == galleyapi.SeverityError {
			t.Fatalf("decode: %s", f)
		}
	}
	out := validate.Objects(res.Objects)
	return append(out, analyze.Analyze(res.Objects, analyze.Options{RootNamespace: root})...)
}

func hasFinding(fs []galleyapi.Finding, code galleyapi.Code, object, field string) bool {
	return slices.ContainsFunc(fs, func(f galleyapi.Finding) bool {
		return f.Code == code && string(f.Object) == object && f.Field == field
	})
}

// TestGalleyReportsWhatFailsClosed checks that every attribute pilot fails
// closed on for a proxyless server is a galley warning (GAL3017) on the
// same object and field, so a user is told about each one.
func TestGalleyReportsWhatFailsClosed(t *testing.T) {
	mesh := core.DefaultMeshConfig()
	mesh.ExtensionProviders = &[]core.ExtensionProvider{{Name: "ext", EnvoyExtAuthzGRPC: &core.ExtAuthzGRPCService{Service: "authz.foo.svc.cluster.local", Port: 9000}}}
	c := configOf(t, mesh, trickyPolicies)
	issues := c.GRPCServerChains(nil, httpbin, 8000).Issues
	if len(issues) == 0 {
		t.Fatal("no issues")
	}
	fs := findings(t, proxylessEcho+trickyPolicies)
	for _, i := range issues {
		kind := "AuthorizationPolicy"
		if i.Field == "spec.jwtRules" {
			kind = "RequestAuthentication"
		}
		object := kind + "/" + i.Policy
		if !hasFinding(fs, galleyapi.CodeProxylessAuthz, object, i.Field) {
			t.Errorf("pilot fails closed on %s but galley does not warn (GAL3017 on %s %s)", i, object, i.Field)
		}
	}
	// And galley says nothing of the kind when no proxyless server is
	// selected.
	for _, f := range findings(t, trickyPolicies) {
		if f.Code == galleyapi.CodeProxylessAuthz {
			t.Errorf("GAL3017 without a proxyless workload: %s", f)
		}
	}
}

// TestBadInput covers the three bad inputs of the security config: galley
// reports each with a clear finding, and the RBAC generated for it is at
// least as strict as the policy as written.
func TestBadInput(t *testing.T) {
	t.Run("condition key a proxyless server cannot evaluate", func(t *testing.T) {
		yaml := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: claims, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {namespaces: [foo]}}]
    when: [{key: "request.auth.claims[role]", values: [admin]}]
`
		fs := findings(t, proxylessEcho+yaml)
		if !hasFinding(fs, galleyapi.CodeProxylessAuthz, "AuthorizationPolicy/foo/claims", "spec.rules[0].when[0]") {
			t.Fatalf("no GAL3017: %v", fs)
		}
		for _, f := range fs {
			if f.Code == galleyapi.CodeProxylessAuthz && !strings.Contains(f.Message, "never allows") {
				t.Errorf("the finding does not say what happens: %s", f.Message)
			}
		}
		c := configOf(t, core.DefaultMeshConfig(), yaml)
		grpc := httpStages(t, grpcFilters(t, c, httpbin, 8000))
		admin := request{principal: "spiffe://cluster.local/ns/foo/sa/x", path: "/p.S/M", claims: map[string]any{"role": "admin"}}
		if allowed(grpc, engine{grpc: true}, admin) {
			t.Error("the proxyless server allows by a claim it cannot see")
		}
	})

	t.Run("unknown principal format", func(t *testing.T) {
		yaml := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sleep, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules: [{from: [{source: {principals: [sleep]}}]}]
`
		fs := findings(t, yaml)
		if !hasFinding(fs, galleyapi.CodePrincipalFormat, "AuthorizationPolicy/foo/sleep", "spec.rules[0].from[0].source.principals[0]") {
			t.Fatalf("no GAL3019: %v", fs)
		}
		c := configOf(t, core.DefaultMeshConfig(), yaml)
		for name, st := range map[string][]stage{
			"Envoy": httpStages(t, c.EnvoyHTTPFilters(httpbin, 8000)),
			"gRPC":  httpStages(t, grpcFilters(t, c, httpbin, 8000)),
		} {
			// No workload identity (citadel issues only ns/sa ones) is let
			// through by it.
			for _, p := range []string{"spiffe://cluster.local/ns/foo/sa/sleep", "spiffe://cluster.local/ns/sleep/sa/default", ""} {
				if allowed(st, engine{grpc: name == "gRPC"}, request{principal: p, path: "/"}) {
					t.Errorf("%s allows peer %q by a principal that is no identity", name, p)
				}
			}
		}
	})

	t.Run("overlapping DENY and ALLOW", func(t *testing.T) {
		yaml := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules: [{to: [{operation: {paths: ["/api/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/api/admin/*"]}}]}]
`
		fs := findings(t, yaml)
		if !hasFinding(fs, galleyapi.CodeAuthzOverlap, "AuthorizationPolicy/foo/allow", "spec.rules[0]") {
			t.Fatalf("no GAL3018: %v", fs)
		}
		c := configOf(t, core.DefaultMeshConfig(), yaml)
		for name, st := range map[string][]stage{
			"Envoy": httpStages(t, c.EnvoyHTTPFilters(httpbin, 8000)),
			"gRPC":  httpStages(t, grpcFilters(t, c, httpbin, 8000)),
		} {
			e := engine{grpc: name == "gRPC"}
			if allowed(st, e, request{path: "/api/admin/users"}) {
				t.Errorf("%s allows a request both policies match; DENY must win", name)
			}
			if !allowed(st, e, request{path: "/api/items"}) || allowed(st, e, request{path: "/other"}) {
				t.Errorf("%s: the ALLOW policy outside the overlap is not enforced as written", name)
			}
		}
	})
}
