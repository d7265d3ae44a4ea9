package pilot

import (
	"fmt"
	"testing"
	"time"

	xdsapi "github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/xdstest"
)

// waitRevision waits until every type proxy id subscribes to has
// acknowledged config revision want, and fails with what it has instead.
func waitRevision(t *testing.T, e *env, id string, want uint64) {
	t.Helper()
	var got map[string]uint64
	deadline := time.Now().Add(5 * time.Second)
	for {
		got = map[string]uint64{}
		ok := true
		for _, st := range e.xds.Statuses() {
			if st.ID != id {
				continue
			}
			for _, ts := range st.Types {
				got[xdsapi.ShortType(ts.TypeURL)] = ts.RevisionAcked
				ok = ok && ts.RevisionAcked == want && ts.State == xdsapi.Synced
			}
		}
		if ok && len(got) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy %s acknowledged revisions %v, want %d for every type", id, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPushesCarryGalleyRevision checks that what pilot pushes carries the
// galley revision it was built from, whatever kind of push the change
// needs: proxies end up on each accepted revision.
func TestPushesCarryGalleyRevision(t *testing.T) {
	e := start(t, reviewsYAML(1, defaultRoute), nil)
	const id = "revision-client"
	c := xdstest.NewSotw(t, xdstest.Dial(t, e.XDSAddr()), proxylessNode(id))
	listener := reviewsHost + ":9080"
	cluster := "outbound|9080||" + reviewsHost
	c.Subscribe(xdsapi.ListenerType, listener)
	expect(t, c, xdsapi.ListenerType, []string{listener})
	c.Subscribe(xdsapi.RouteType, listener)
	expect(t, c, xdsapi.RouteType, []string{listener})
	c.Subscribe(xdsapi.ClusterType, cluster)
	expect(t, c, xdsapi.ClusterType, []string{cluster})
	c.Subscribe(xdsapi.EndpointType, cluster)
	expect(t, c, xdsapi.EndpointType, []string{cluster})
	waitRevision(t, e, id, 1)

	// Revision 2 changes a weight: an EDS-only push, still revision 2.
	e.galley.apply(t, reviewsYAML(4, defaultRoute))
	expect(t, c, xdsapi.EndpointType, []string{cluster})
	waitRevision(t, e, id, 2)

	// Revision 3 changes routing: a full push.
	route := "  - timeout: 1s\n    route: [{destination: {host: reviews}}]"
	e.galley.apply(t, reviewsYAML(4, route))
	expect(t, c, xdsapi.RouteType, []string{listener})
	waitRevision(t, e, id, 3)

	// Revision 4 adds a workload no service selects: nothing to push, yet
	// the proxy runs revision 4.
	e.galley.apply(t, reviewsYAML(4, route)+fmt.Sprintf(`---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: stray, namespace: shop}
spec: {address: 127.0.0.9, ports: {grpc: %d}, labels: {app: nobody}}
`, 19099))
	c.None(300 * time.Millisecond)
	waitRevision(t, e, id, 4)
}
