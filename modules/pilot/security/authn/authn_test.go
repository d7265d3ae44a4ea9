package authn_test

import (
	"slices"
	"testing"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/pilot/internal/pilottest"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/security/authn"
)

const policies = `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: root-selector, namespace: istio-system}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: DISABLE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: legacy}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: unset, namespace: inherit}
spec: {mtls: {mode: UNSET}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a-db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: UNSET}
  portLevelMtls:
    5432: {mode: DISABLE}
    9000: {mode: UNSET}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b-db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: legacy}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
  portLevelMtls: {8080: {mode: PERMISSIVE}}
`

// TestPrecedence checks Istio's order: workload (first by name) over
// namespace over mesh over mesh.defaultMTLSMode, port-level over the
// workload's mode, UNSET inheriting at every level, root-namespace
// selectors only for root-namespace workloads.
func TestPrecedence(t *testing.T) {
	p := authn.New(core.DefaultMeshConfig(), "istio-system", pilottest.Snapshot(t, 1, policies))
	db := map[string]string{"app": "db"}
	web := map[string]string{"app": "web"}
	for _, tc := range []struct {
		ns     string
		labels map[string]string
		port   uint32
		want   authn.Mode
		from   string
	}{
		{"shop", nil, 80, authn.Strict, "PeerAuthentication istio-system/default"},
		{"inherit", nil, 80, authn.Strict, "PeerAuthentication istio-system/default"},
		{"legacy", nil, 80, authn.Permissive, "PeerAuthentication legacy/default"},
		{"legacy", web, 80, authn.Strict, "PeerAuthentication legacy/web"},
		{"legacy", web, 8080, authn.Permissive, "PeerAuthentication legacy/web (portLevelMtls)"},
		{"shop", db, 5432, authn.Disable, "PeerAuthentication shop/a-db (portLevelMtls)"},
		// a-db wins over b-db (name order); its UNSET mode and UNSET port
		// inherit from the mesh, not from b-db.
		{"shop", db, 9000, authn.Strict, "PeerAuthentication istio-system/default"},
		{"shop", db, 80, authn.Strict, "PeerAuthentication istio-system/default"},
		// The root namespace's selector selects only its own workloads.
		{"legacy", db, 80, authn.Permissive, "PeerAuthentication legacy/default"},
		{"istio-system", db, 80, authn.Disable, "PeerAuthentication istio-system/root-selector"},
	} {
		got, src := p.Resolve(tc.ns, tc.labels, tc.port)
		if got != tc.want || src.String() != tc.from {
			t.Errorf("%s %v :%d = %s from %s, want %s from %s", tc.ns, tc.labels, tc.port, got, src, tc.want, tc.from)
		}
	}
	none := authn.New(core.MeshConfig{DefaultMTLSMode: "DISABLE", TrustDomain: "td"}, "istio-system", nil)
	if m, src := none.Resolve("x", nil, 1); m != authn.Disable || src.String() != "mesh.defaultMTLSMode" {
		t.Errorf("without policies: %s from %s", m, src)
	}
	if got := p.Applying("shop", db); len(got) != 2 || got[0].Name != "a-db" || got[1].Namespace != "istio-system" {
		t.Errorf("Applying: %v", got)
	}
}

func endpoint(addr, ns, sa string, port uint32, labels map[string]string) *model.Endpoint {
	return &model.Endpoint{Address: addr, Port: port, ServicePort: 80, Namespace: ns, ServiceAccount: sa, Labels: labels}
}

// TestAutoMTLS checks auto mTLS's decisions: per endpoint for Envoy, per
// cluster with the endpoints' identities for proxyless clients.
func TestAutoMTLS(t *testing.T) {
	p := authn.New(core.DefaultMeshConfig(), "istio-system", pilottest.Snapshot(t, 1, policies))
	mesh := map[string]string{"app": "api", authn.TLSModeLabel: "istio"}
	meshDB := map[string]string{"app": "db", authn.TLSModeLabel: "istio"}
	svc := &model.Service{Hostname: "api.shop.svc.cluster.local", Namespace: "shop"}
	a := endpoint("10.0.0.1", "shop", "api", 8080, mesh)
	b := endpoint("10.0.0.2", "", "", 8080, mesh)
	outside := endpoint("10.0.0.3", "shop", "api", 8080, map[string]string{"app": "api"})
	dbOff := endpoint("10.0.0.4", "shop", "db", 5432, meshDB)

	if !p.EndpointAccepts(svc, a) || p.EndpointAccepts(svc, outside) || p.EndpointAccepts(svc, dbOff) {
		t.Error("EndpointAccepts: want in-mesh yes, unlabelled no, port DISABLE no")
	}
	up := p.AutoUpstream(svc, []*model.Endpoint{a, b}, true)
	if !up.MTLS || !slices.Equal(up.SANs, []string{"spiffe://cluster.local/ns/shop/sa/api", "spiffe://cluster.local/ns/shop/sa/default"}) {
		t.Errorf("mesh endpoints: %+v", up)
	}
	for name, eps := range map[string][]*model.Endpoint{"one outside the mesh": {a, outside}, "one DISABLEd": {a, dbOff}} {
		if up := p.AutoUpstream(svc, eps, true); up.MTLS {
			t.Errorf("%s: %+v, want plaintext", name, up)
		}
	}
	if up := p.AutoUpstream(svc, nil, true); !up.MTLS || up.Prefix != "spiffe://cluster.local/ns/shop/" {
		t.Errorf("no endpoints yet: %+v, want mTLS to the namespace", up)
	}
	if up := p.AutoUpstream(&model.Service{Hostname: "x", Namespace: "shop", MeshExternal: true}, []*model.Endpoint{a}, true); up.MTLS {
		t.Error("MESH_EXTERNAL service gets auto mTLS")
	}
	if up := p.AutoUpstream(svc, []*model.Endpoint{a}, false); up.MTLS {
		t.Error("DNS service gets auto mTLS")
	}

	off := authn.New(core.DefaultMeshConfig(), "istio-system", pilottest.Snapshot(t, 1, `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: DISABLE}}
`))
	if !off.ServiceDisabled(svc) || p.ServiceDisabled(svc) {
		t.Error("ServiceDisabled follows the namespace's mode")
	}
	on := authn.New(core.DefaultMeshConfig(), "istio-system", pilottest.Snapshot(t, 1, `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  portLevelMtls: {8080: {mode: STRICT}}
`))
	if on.ServiceDisabled(svc) || !on.EndpointAccepts(svc, a) {
		t.Error("a workload policy turning mTLS back on keeps auto mTLS for its endpoints")
	}
	if off.Digest() == p.Digest() {
		t.Error("digests of different policies are equal")
	}
}

func TestChanges(t *testing.T) {
	mk := func(eps ...*model.Endpoint) *model.Service {
		return &model.Service{Hostname: "a", Namespace: "shop", Endpoints: eps}
	}
	m := map[string]string{authn.TLSModeLabel: "istio"}
	a := endpoint("10.0.0.1", "shop", "api", 80, m)
	a2 := endpoint("10.0.0.2", "shop", "api", 80, m)
	other := endpoint("10.0.0.2", "shop", "other", 80, m)
	plain := endpoint("10.0.0.2", "shop", "api", 80, nil)
	if authn.IdentitiesChanged(mk(a), mk(a, a2)) {
		t.Error("another replica with the same identity changes identities")
	}
	if !authn.IdentitiesChanged(mk(a), mk(a, other)) || !authn.IdentitiesChanged(mk(a), mk(a, plain)) || !authn.IdentitiesChanged(mk(), mk(a)) {
		t.Error("a new identity, a workload outside the mesh or the first endpoint must change identities")
	}
	if !authn.MeshAddressesChanged(mk(a), mk(a, a2)) || authn.MeshAddressesChanged(mk(a), mk(a, plain)) {
		t.Error("MeshAddressesChanged follows in-mesh addresses only")
	}
}
