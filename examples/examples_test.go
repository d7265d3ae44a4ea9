package examples_test

import (
	"flag"
	"os"
	"strings"
	"testing"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/galley"
	"github.com/meshd/meshd/modules/galley/api"
)

var update = flag.Bool("update", os.Getenv("UPDATE_GOLDEN") == "1", "rewrite golden files")

// TestBookstoreIsClean checks the bookstore example validates without a
// single finding, and that it exercises what it claims to.
func TestBookstoreIsClean(t *testing.T) {
	res := galley.New(galley.Options{}).CheckPaths("bookstore")
	for _, f := range res.Findings {
		t.Errorf("unexpected finding: %s", f)
	}
	kinds := map[api.Kind]int{}
	for _, o := range res.Objects {
		kinds[o.Kind]++
	}
	if kinds[api.KindServiceEntry] != 4 {
		t.Errorf("want 4 services, got %d ServiceEntries", kinds[api.KindServiceEntry])
	}
	for _, k := range []api.Kind{api.KindWorkloadEntry, api.KindDestinationRule, api.KindVirtualService, api.KindGateway, api.KindPeerAuthentication, api.KindAuthorizationPolicy, api.KindRequestAuthentication, api.KindSidecar} {
		if kinds[k] == 0 {
			t.Errorf("the example has no %s", k.Kind)
		}
	}
	snap := api.NewSnapshot(1, res.Objects)
	vs, ok := snap.Get("VirtualService/bookstore/reviews")
	if !ok {
		t.Fatal("reviews VirtualService missing")
	}
	canary := vs.Spec.(*networking.VirtualService).GetHttp()[1].GetRoute()
	if len(canary) != 2 || canary[0].GetWeight() != 90 || canary[1].GetWeight() != 10 {
		t.Errorf("the reviews canary is not 90/10: %v", canary)
	}
}

// TestBookstoreBroken checks the broken copy reports exactly the findings in
// bookstore-broken/expected.txt (go test -update rewrites it).
func TestBookstoreBroken(t *testing.T) {
	res := galley.New(galley.Options{}).CheckPaths("bookstore-broken")
	var b strings.Builder
	for _, f := range res.Findings {
		b.WriteString(f.String())
		b.WriteByte('\n')
	}
	got := b.String()
	const path = "bookstore-broken/expected.txt"
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v (run go test -update)", path, err)
	}
	if got != string(want) {
		t.Errorf("findings differ from %s (run go test -update if intended)\ngot:\n%s", path, got)
	}
	if !api.HasErrors(res.Findings) {
		t.Error("the broken example has no errors")
	}

}
