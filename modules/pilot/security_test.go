package pilot

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/meshd/meshd/modules/pilot/internal/pilottest"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
	xdsapi "github.com/meshd/meshd/xds/api"
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

// TestSecurityUpdates checks that an endpoint-only push also regenerates
// what security derives from endpoints: the service's clusters when its
// mesh membership or identities change (proxyless auto mTLS), and the
// listeners when in-mesh addresses change (proxyless PERMISSIVE servers).
func TestSecurityUpdates(t *testing.T) {
	view := func(yaml string) *registry.View {
		agg := registry.New(nil, nil)
		agg.SinkFor(registry.SourceConfig).Update(registry.State{Services: registry.BuildServices(pilottest.Snapshot(t, 1, yaml), nil)})
		return agg.View()
	}
	svc := func(eps string) string {
		return `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: grpc, number: 7000, protocol: GRPC}]
  endpoints: ` + eps + "\n"
	}
	base := view(svc(`[{address: 10.0.0.1, serviceAccount: api, labels: {security.istio.io/tlsMode: istio}}]`))
	key := []model.Key{{Hostname: "api.shop.svc.cluster.local", Namespace: "shop"}}
	names := []string{"outbound|7000||api.shop.svc.cluster.local"}
	for _, tc := range []struct {
		name     string
		eps      string
		cds, lds bool
	}{
		{"a replica with the same identity", `[{address: 10.0.0.1, serviceAccount: api, labels: {security.istio.io/tlsMode: istio}}, {address: 10.0.0.2, serviceAccount: api, labels: {security.istio.io/tlsMode: istio}}]`, false, true},
		{"a new identity", `[{address: 10.0.0.1, serviceAccount: other, labels: {security.istio.io/tlsMode: istio}}]`, true, false},
		{"a workload outside the mesh", `[{address: 10.0.0.1, serviceAccount: api, labels: {security.istio.io/tlsMode: istio}}, {address: 10.0.0.3, serviceAccount: api}]`, true, false},
		{"a weight", `[{address: 10.0.0.1, serviceAccount: api, weight: 5, labels: {security.istio.io/tlsMode: istio}}]`, false, false},
	} {
		req := xdsapi.EndpointPush("endpoints", names...)
		securityUpdates(&req, base, view(svc(tc.eps)), key, names)
		_, cds := req.Updates[xdsapi.ClusterType]
		lds, ldsSet := req.Updates[xdsapi.ListenerType]
		if cds != tc.cds || ldsSet != tc.lds || lds != nil {
			t.Errorf("%s: updates %v, want CDS %v, LDS %v", tc.name, req.Updates, tc.cds, tc.lds)
		}
	}
}
