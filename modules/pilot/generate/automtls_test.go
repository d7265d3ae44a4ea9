package generate

import (
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshd/meshd/modules/pilot/internal/pilottest"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// autoMesh has a service whose workloads are in the mesh (api: one
// endpoint's port is DISABLEd by its PeerAuthentication), one in a
// namespace that disables mTLS (legacy) and one whose workload is outside
// the mesh (plain).
const autoMesh = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.shop.svc.cluster.local]
  ports: [{name: grpc, number: 7000, protocol: GRPC}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints:
  - {address: 10.0.0.1, labels: {app: api, security.istio.io/tlsMode: istio}, serviceAccount: api}
  - {address: 10.0.0.2, labels: {app: api, security.istio.io/tlsMode: istio}, serviceAccount: api}
  - {address: 10.0.0.3, labels: {app: api-old, security.istio.io/tlsMode: istio}, serviceAccount: old, ports: {grpc: 7001}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: api-old, namespace: shop}
spec:
  selector: {matchLabels: {app: api-old}}
  portLevelMtls: {7001: {mode: DISABLE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: shop}
spec:
  host: api
  subsets: [{name: new, labels: {app: api}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: legacy}
spec:
  hosts: [legacy.legacy.svc.cluster.local]
  ports: [{name: grpc, number: 7000, protocol: GRPC}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints: [{address: 10.0.1.1, labels: {security.istio.io/tlsMode: istio}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: legacy}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: plain, namespace: shop}
spec:
  hosts: [plain.shop.svc.cluster.local]
  ports: [{name: grpc, number: 7000, protocol: GRPC}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints: [{address: 10.0.2.1}]
`

// TestAutoMTLS checks auto mTLS against PeerAuthentication: Envoy gets
// transport socket matches unless the destination's namespace disables
// mTLS, and the tlsMode metadata only on endpoints whose port accepts it;
// proxyless clients with an identity get mTLS per cluster when every
// endpoint accepts it, verified against the endpoints' SPIFFE IDs, and
// proxyless clients without one get plaintext (their bootstrap has no
// certificate provider).
func TestAutoMTLS(t *testing.T) {
	ix := pilottest.Index(t, autoMesh)
	envoy := NewScope(ix, pilottest.Proxy(xdsapi.Sidecar, "shop", nil, ""), Envoy)
	get := func(s *Scope, name string) (matches int, sans []string) {
		t.Helper()
		r, ok := s.ClusterRef(name)
		if !ok {
			t.Fatalf("no cluster %s", name)
		}
		c := Cluster(s, r)
		var ctx tlsv3.UpstreamTlsContext
		if ts := c.GetTransportSocket(); ts != nil {
			if err := ts.GetTypedConfig().UnmarshalTo(&ctx); err != nil {
				t.Fatal(err)
			}
			for _, m := range ctx.GetCommonTlsContext().GetValidationContext().GetMatchSubjectAltNames() {
				sans = append(sans, m.GetExact()+m.GetPrefix())
			}
			if sans == nil {
				sans = []string{}
			}
		}
		return len(c.GetTransportSocketMatches()), sans
	}
	if n, _ := get(envoy, "outbound|7000||api.shop.svc.cluster.local"); n != 2 {
		t.Errorf("Envoy to api: %d transport socket matches, want auto mTLS's 2", n)
	}
	if n, _ := get(envoy, "outbound|7000||legacy.legacy.svc.cluster.local"); n != 0 {
		t.Errorf("Envoy to legacy (namespace DISABLE): %d matches, want plaintext", n)
	}
	var istio []string
	for _, l := range LoadAssignment(envoy, mustRef(t, envoy, "outbound|7000||api.shop.svc.cluster.local")).GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			if e.GetMetadata() != nil {
				istio = append(istio, e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
			}
		}
	}
	if len(istio) != 2 || istio[0] != "10.0.0.1" || istio[1] != "10.0.0.2" {
		t.Errorf("endpoints with tlsMode metadata: %v, want the two whose port accepts mTLS", istio)
	}

	withID := pilottest.Proxy(xdsapi.Proxyless, "clients", nil, "")
	withID.ServiceAccount, withID.Identity = "client", "spiffe://cluster.local/ns/clients/sa/client"
	pl := NewScope(ix, withID, Proxyless)
	if _, sans := get(pl, "outbound|7000|new|api.shop.svc.cluster.local"); len(sans) != 1 || sans[0] != "spiffe://cluster.local/ns/shop/sa/api" {
		t.Errorf("proxyless to the api subset: SANs %v, want the endpoints' identity", sans)
	}
	for _, name := range []string{
		"outbound|7000||api.shop.svc.cluster.local",      // one endpoint's port is DISABLEd
		"outbound|7000||legacy.legacy.svc.cluster.local", // the namespace is DISABLEd
		"outbound|7000||plain.shop.svc.cluster.local",    // outside the mesh
	} {
		if _, sans := get(pl, name); sans != nil {
			t.Errorf("proxyless to %s: TLS with SANs %v, want plaintext", name, sans)
		}
	}
	anon := NewScope(ix, pilottest.Proxy(xdsapi.Proxyless, "clients", nil, ""), Proxyless)
	if _, sans := get(anon, "outbound|7000|new|api.shop.svc.cluster.local"); sans != nil {
		t.Errorf("proxyless client without an identity gets TLS %v", sans)
	}
	if Key(ix, withID) == Key(ix, pilottest.Proxy(xdsapi.Proxyless, "clients", nil, "")) {
		t.Error("clients with and without an identity share a key")
	}

	// Cached clusters follow PeerAuthentication changes.
	c := NewCache()
	cached := NewScope(ix, withID, Proxyless)
	cached.Cache = c
	if _, sans := get(cached, "outbound|7000|new|api.shop.svc.cluster.local"); sans == nil {
		t.Fatal("no mTLS")
	}
	off := pilottest.Index(t, autoMesh+`
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: DISABLE}}
`)
	again := NewScope(off, withID, Proxyless)
	again.Cache = c
	if _, sans := get(again, "outbound|7000|new|api.shop.svc.cluster.local"); sans != nil {
		t.Errorf("the cache kept mTLS after the namespace disabled it: %v", sans)
	}
}

func mustRef(t *testing.T, s *Scope, name string) ClusterRef {
	t.Helper()
	r, ok := s.ClusterRef(name)
	if !ok {
		t.Fatalf("no cluster %s", name)
	}
	return r
}
