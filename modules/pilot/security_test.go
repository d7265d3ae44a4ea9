package pilot

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestSecurityz checks /debug/securityz: each workload port with its mTLS
// mode and the policy that decided it, the policies selecting it, and what
// would fail closed on a proxyless server.
func TestSecurityz(t *testing.T) {
	e := start(t, `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: grpc, number: 7000, protocol: GRPC}]
  endpoints: [{address: 10.0.0.2, ports: {grpc: 8080}, labels: {app: echo}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
`, nil)
	code, body := e.do(t, http.MethodGet, "/debug/securityz?namespace=shop", "")
	if code != http.StatusOK {
		t.Fatalf("%d %s", code, body)
	}
	var out struct {
		Workloads []securityzWorkload `json:"workloads"`
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Workloads) != 1 {
		t.Fatalf("workloads: %s", body)
	}
	w := out.Workloads[0]
	if w.Port != 8080 || w.MTLS != "STRICT" || w.MTLSSource != "PeerAuthentication shop/default" ||
		len(w.Policies["ALLOW"]) != 1 || len(w.ProxylessIssues) != 1 || !strings.Contains(w.ProxylessIssues[0], "requestPrincipals") {
		t.Errorf("workload: %+v", w)
	}
	if _, body := e.do(t, http.MethodGet, "/debug/securityz?namespace=other", ""); !strings.Contains(body, `"workloads": []`) {
		t.Errorf("other namespace: %s", body)
	}
}
