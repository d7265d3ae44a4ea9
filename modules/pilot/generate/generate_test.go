package generate

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/internal/pilottest"
	xdsapi "github.com/meshd/meshd/xds/api"
)

var update = flag.Bool("update", os.Getenv("UPDATE_GOLDEN") != "", "rewrite golden files")

func buildIndex(t testing.TB, yaml string) *index.Index { return pilottest.Index(t, yaml) }

func meshYAML(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "mesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func meshIndex(t testing.TB) *index.Index { return buildIndex(t, meshYAML(t)) }

var proxy = pilottest.Proxy

// validatable is every Envoy message: go-control-plane generates
// ValidateAll for each.
type validatable interface {
	proto.Message
	ValidateAll() error
}

func validate[T validatable](t *testing.T, what string, msgs []T) {
	t.Helper()
	for _, m := range msgs {
		if err := m.ValidateAll(); err != nil {
			t.Errorf("%s fails ValidateAll: %v\n%s", what, err, protojson.Format(m))
		}
	}
}

// render turns messages into stable, indented JSON (protojson's spacing is
// deliberately unstable, so it is re-indented).
func render(t *testing.T, msgs ...proto.Message) []byte {
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

func asMessages[T proto.Message](in []T) []proto.Message {
	out := make([]proto.Message, len(in))
	for i, m := range in {
		out[i] = m
	}
	return out
}

// TestGolden renders CDS, EDS and routes for each flavor and checks every
// resource with go-control-plane's ValidateAll.
func TestGolden(t *testing.T) {
	ix := meshIndex(t)
	for _, tc := range []struct {
		name string
		p    *xdsapi.Proxy
	}{
		{"sidecar", proxy(xdsapi.Sidecar, "shop", map[string]string{"app": "client"}, "us-east/zone-a/rack1")},
		{"proxyless", proxy(xdsapi.Proxyless, "shop", map[string]string{"app": "client"}, "us-east/zone-a/rack1")},
		{"gateway", proxy(xdsapi.Gateway, "shop", map[string]string{"istio": "ingressgateway"}, "")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewScope(ix, tc.p, FlavorOf(tc.p.Type))
			clusters := Clusters(s)
			validate(t, "cluster", clusters)
			golden(t, tc.name+".clusters.json", render(t, asMessages(clusters)...))

			clas := LoadAssignments(s, nil)
			validate(t, "load assignment", clas)
			golden(t, tc.name+".endpoints.json", render(t, asMessages(clas)...))

			var rcs []*routev3.RouteConfiguration
			switch tc.p.Type {
			case xdsapi.Gateway:
				gw := ix.Gateway("shop/edge")
				for _, srv := range gw.Spec.GetServers() {
					rcs = append(rcs, &routev3.RouteConfiguration{Name: "http.80", VirtualHosts: GatewayVirtualHosts(s, gw, srv)})
				}
			default:
				for _, port := range []uint32{8080, 9080, 9090} {
					rcs = append(rcs, &routev3.RouteConfiguration{Name: "port", VirtualHosts: VirtualHosts(s, port)})
				}
			}
			validate(t, "route configuration", rcs)
			golden(t, tc.name+".routes.json", render(t, asMessages(rcs)...))
			validate(t, "http filter", HTTPFilters(s.Flavor))
		})
	}
}
