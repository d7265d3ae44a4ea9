package pilot

import (
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/anypb"

	xdsapi "github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/xdstest"
)

// delegateYAML is reviews with a root VirtualService whose /api routes
// are delegated to team/reviews-api, which routes prefix to subset.
func delegateYAML(prefix, subset string) string {
	return reviewsYAML(1, `  - match: [{uri: {prefix: /api}}]
    delegate: {name: reviews-api, namespace: team}
  - route: [{destination: {host: reviews}}]`) + `
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-api, namespace: team}
spec:
  exportTo: [shop]
  http:
  - match: [{uri: {prefix: ` + prefix + `}}]
    route: [{destination: {host: ` + reviewsHost + `, subset: ` + subset + `}}]
`
}

// TestDelegateChangePushesRoutes checks on the wire that editing only a
// delegate VirtualService reaches a client of the root's host: the edit is
// a full push (the routing digest covers delegates), and the RDS response
// the client gets carries the delegate's new match and destination.
func TestDelegateChangePushesRoutes(t *testing.T) {
	e := start(t, delegateYAML("/api/v1", "v1"), nil)
	c := xdstest.NewSotw(t, xdstest.Dial(t, e.XDSAddr()), proxylessNode("raw-client"))
	listener := reviewsHost + ":9080"

	c.Subscribe(xdsapi.ListenerType, listener)
	expect(t, c, xdsapi.ListenerType, []string{listener})
	c.Subscribe(xdsapi.RouteType, listener)
	r := expect(t, c, xdsapi.RouteType, []string{listener})
	if got, want := firstRoute(t, r), "/api/v1 -> outbound|9080|v1|"+reviewsHost; got != want {
		t.Fatalf("delegated route %q, want %q", got, want)
	}
	c.None(200 * time.Millisecond)
	full := pushes(t, e, "full")

	e.galley.apply(t, delegateYAML("/api/v2", "v2"))
	r = expect(t, c, xdsapi.RouteType, []string{listener})
	if got, want := firstRoute(t, r), "/api/v2 -> outbound|9080|v2|"+reviewsHost; got != want {
		t.Fatalf("after editing only the delegate: %q, want %q", got, want)
	}
	c.None(300 * time.Millisecond)
	if got := pushes(t, e, "full"); got != full+1 {
		t.Fatalf("a delegate change caused %d full pushes, want 1", got-full)
	}
}

// firstRoute describes the first route of an RDS response's only
// configuration: its path prefix and cluster.
func firstRoute(t *testing.T, r interface{ GetResources() []*anypb.Any }) string {
	t.Helper()
	if len(r.GetResources()) != 1 {
		t.Fatalf("RDS response with %d resources, want 1", len(r.GetResources()))
	}
	var rc routev3.RouteConfiguration
	if err := r.GetResources()[0].UnmarshalTo(&rc); err != nil {
		t.Fatal(err)
	}
	vhs := rc.GetVirtualHosts()
	if len(vhs) != 1 || len(vhs[0].GetRoutes()) == 0 {
		t.Fatalf("route configuration %v", &rc)
	}
	rt := vhs[0].GetRoutes()[0]
	return rt.GetMatch().GetPrefix() + " -> " + rt.GetRoute().GetCluster()
}
