package generate

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/pilot/internal/pilottest"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// TestCache checks that cached clusters and assignments equal freshly
// built ones, are shared between scopes that see them the same way, are
// rebuilt when a DestinationRule or a service's endpoints change, and are
// dropped by Sweep when unused.
func TestCache(t *testing.T) {
	ix := meshIndex(t)
	c := NewCache()
	p := proxy(xdsapi.Sidecar, "shop", nil, "us-east/zone-a/rack1")
	cached := NewScope(ix, p, Envoy)
	cached.Cache = c
	plain := NewScope(ix, p, Envoy)

	clusters, want := Clusters(cached), Clusters(plain)
	if len(clusters) != len(want) {
		t.Fatalf("%d cached clusters, %d built", len(clusters), len(want))
	}
	for i := range want {
		if !proto.Equal(clusters[i], want[i]) {
			t.Errorf("cached cluster %s differs from a built one", want[i].GetName())
		}
		if cached.Version(clusters[i]) == "" {
			t.Errorf("cluster %s has no version", want[i].GetName())
		}
	}
	clas, wantCLAs := LoadAssignments(cached, nil), LoadAssignments(plain, nil)
	for i := range wantCLAs {
		if !proto.Equal(clas[i], wantCLAs[i]) {
			t.Errorf("cached assignment %s differs from a built one", wantCLAs[i].GetClusterName())
		}
	}

	// Another scope in the same namespace shares every message.
	again := NewScope(ix, proxy(xdsapi.Sidecar, "shop", map[string]string{"app": "x"}, "us-east/zone-a/rack1"), Envoy)
	again.Cache = c
	for i, cl := range Clusters(again) {
		if cl != clusters[i] || again.Version(cl) != cached.Version(clusters[i]) {
			t.Errorf("cluster %s was built again", cl.GetName())
		}
	}
	// A proxy elsewhere shares the clusters, but not the assignments whose
	// priorities depend on its locality (reviews has outlier detection).
	far := NewScope(ix, proxy(xdsapi.Sidecar, "shop", nil, "eu-west/zone-c"), Envoy)
	far.Cache = c
	for i, cla := range LoadAssignments(far, nil) {
		shared := cla == clas[i]
		r, _ := far.ClusterRef(cla.GetClusterName())
		tp := far.Policy(r)
		dependsOnLocality := tp.GetOutlierDetection() != nil || tp.GetLoadBalancer().GetLocalityLbSetting() != nil
		if shared == dependsOnLocality {
			t.Errorf("assignment %s shared=%v, but it depends on locality: %v", cla.GetClusterName(), shared, dependsOnLocality)
		}
	}

	// A changed DestinationRule misses; the unchanged services hit.
	before := map[string]proto.Message{}
	for _, cl := range clusters {
		before[cl.GetName()] = cl
	}
	// Like galley, keep the unchanged objects and decode only the new rule.
	objs := ix.Config.Objects()
	changed := pilottest.Snapshot(t, 2, strings.Replace(meshYAML(t), "consecutive5xxErrors: 3", "consecutive5xxErrors: 4", 1))
	for i, o := range objs {
		if o.Key() == galleyapi.MakeKey(galleyapi.KindDestinationRule, "shop", "reviews") {
			objs[i], _ = changed.Get(o.Key())
		}
	}
	ix2 := pilottest.IndexOf(galleyapi.NewSnapshot(2, objs))
	s2 := NewScope(ix2, p, Envoy)
	s2.Cache = c
	for _, cl := range Clusters(s2) {
		reused := before[cl.GetName()] == proto.Message(cl)
		if isReviews := strings.HasSuffix(cl.GetName(), "reviews.shop.svc.cluster.local"); reused == isReviews {
			t.Errorf("cluster %s: reused %v after a change to the reviews rule only", cl.GetName(), reused)
		}
	}

	// Sweep keeps what was used since the last sweep, then drops the rest.
	c.Sweep()
	n, _ := c.Len()
	if n == 0 {
		t.Fatal("first sweep dropped entries used since the start")
	}
	s3 := NewScope(ix2, p, Envoy)
	s3.Cache = c
	Clusters(s3)
	c.Sweep()
	if got, _ := c.Len(); got != len(Clusters(s3)) {
		t.Fatalf("after sweeping, %d clusters cached, want the %d in use", got, len(Clusters(s3)))
	}
}
