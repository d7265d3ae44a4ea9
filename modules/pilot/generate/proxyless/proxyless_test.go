package proxyless

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/modules/pilot/generate"
	"github.com/meshd/meshd/modules/pilot/internal/pilottest"
	xdsapi "github.com/meshd/meshd/xds/api"
)

var update = flag.Bool("update", os.Getenv("UPDATE_GOLDEN") != "", "rewrite golden files")

func scope(t *testing.T, ns string) *generate.Scope {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "mesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ix := pilottest.Index(t, string(b))
	return generate.NewScope(ix, pilottest.Proxy(xdsapi.Proxyless, ns, map[string]string{"app": "client"}, ""), generate.Proxyless)
}

// TestResources checks the proxyless LDS and RDS output against golden
// files and ValidateAll, and that every reference resolves: each listener's
// route configuration exists, and each route's cluster is one the CDS
// output has.
func TestResources(t *testing.T) {
	s := scope(t, "shop")
	listeners := Listeners(s, nil)
	routes := RouteConfigs(s, nil)
	clusters := generate.Clusters(s)

	rcNames := Names(routes)
	clusterNames := Names(clusters)
	var docs []proto.Message
	for _, l := range listeners {
		if err := l.ValidateAll(); err != nil {
			t.Errorf("listener %s: %v", l.Name, err)
		}
		var hcm hcmv3.HttpConnectionManager
		if err := l.GetApiListener().GetApiListener().UnmarshalTo(&hcm); err != nil {
			t.Fatalf("listener %s: %v", l.Name, err)
		}
		if err := hcm.ValidateAll(); err != nil {
			t.Errorf("listener %s connection manager: %v", l.Name, err)
		}
		if f := hcm.GetHttpFilters(); f[len(f)-1].GetName() != generate.FilterRouter {
			t.Errorf("listener %s: router filter is not last", l.Name)
		}
		if rds := hcm.GetRds().GetRouteConfigName(); !slices.Contains(rcNames, rds) {
			t.Errorf("listener %s refers to route configuration %q, which is not generated", l.Name, rds)
		}
		docs = append(docs, l)
	}
	for _, rc := range routes {
		if err := rc.ValidateAll(); err != nil {
			t.Errorf("route configuration %s: %v", rc.Name, err)
		}
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				for _, c := range routeClusters(r) {
					if !slices.Contains(clusterNames, c) {
						t.Errorf("route configuration %s refers to cluster %q, which is not generated", rc.Name, c)
					}
				}
			}
		}
		docs = append(docs, rc)
	}
	golden(t, "shop.json", render(t, docs))

	// Every name of the FQDN and the short forms dials something, and the
	// route configuration's virtual host claims the name.
	for _, want := range []string{
		"reviews.shop.svc.cluster.local:9080", "reviews.shop.svc.cluster.local", "reviews:9080",
		"reviews.shop:9080", "ratings:9090", "240.0.0.10:8080", "empty.shop.svc.cluster.local:7070",
	} {
		if !slices.Contains(Names(listeners), want) {
			t.Errorf("no listener %q", want)
		}
	}
	if got := RouteConfig(s, "ratings.shop.svc.cluster.local:9090").GetVirtualHosts()[0].GetDomains(); slices.Contains(got, "ratings.shop.svc.cluster.local") {
		t.Errorf("the bare name must dial the first port only: %v", got)
	}
	for _, l := range listeners {
		if l.Name == "*.wild.example.com:5432" {
			t.Error("wildcard hosts get no listener")
		}
	}

	// From another namespace, short names of shop's services are not offered.
	other := Listeners(scope(t, "other"), nil)
	if slices.Contains(Names(other), "reviews:9080") {
		t.Error("a short name leaked to another namespace")
	}
	if !slices.Contains(Names(other), "reviews.shop:9080") {
		t.Error("name.namespace must be offered to other namespaces")
	}

	// Subscribing by name returns just those.
	if got := Names(Listeners(s, []string{"reviews:9080", "nope:1"})); !slices.Equal(got, []string{"reviews:9080"}) {
		t.Errorf("Listeners by name = %v", got)
	}
	if got := Names(RouteConfigs(s, []string{"reviews.shop.svc.cluster.local:9080", "nope:1", "bad"})); !slices.Equal(got, []string{"reviews.shop.svc.cluster.local:9080"}) {
		t.Errorf("RouteConfigs by name = %v", got)
	}
}

// TestConnectionManagerEncoding checks that the appended encoding of a
// client listener's HttpConnectionManager is the message ConnectionManager
// describes.
func TestConnectionManagerEncoding(t *testing.T) {
	for _, route := range []string{"a:1", "reviews.shop.svc.cluster.local:9080", strings.Repeat("x", 300) + ":80"} {
		var got hcmv3.HttpConnectionManager
		if err := connectionManager(route).UnmarshalTo(&got); err != nil {
			t.Fatal(err)
		}
		if want := ConnectionManager(route); !proto.Equal(&got, want) {
			t.Errorf("encoding of %q decodes to\n%v\nwant\n%v", route, &got, want)
		}
	}
}

func routeClusters(r *routev3.Route) []string {
	a := r.GetRoute()
	if a == nil {
		return nil
	}
	if c := a.GetCluster(); c != "" {
		return []string{c}
	}
	var out []string
	for _, w := range a.GetWeightedClusters().GetClusters() {
		out = append(out, w.GetName())
	}
	return out
}

func render(t *testing.T, msgs []proto.Message) []byte {
	t.Helper()
	var buf bytes.Buffer
	buf.WriteString("[\n")
	for i, m := range msgs {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var c bytes.Buffer
		if err := json.Compact(&c, b); err != nil {
			t.Fatal(err)
		}
		if err := json.Indent(&buf, c.Bytes(), "  ", "  "); err != nil {
			t.Fatal(err)
		}
		if i < len(msgs)-1 {
			buf.WriteString(",")
		}
		buf.WriteString("\n")
	}
	buf.WriteString("]\n")
	return buf.Bytes()
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file; run go test -update and review the diff", path)
	}
}
