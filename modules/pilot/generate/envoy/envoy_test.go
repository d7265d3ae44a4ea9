package envoy

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/core"
	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
	"github.com/meshd/meshd/modules/pilot/generate"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/registry"
	"github.com/meshd/meshd/xds/api"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func updating() bool { return *update || os.Getenv("UPDATE_GOLDEN") == "1" }

// buildIndex decodes YAML config into an index, as pilot does after galley
// accepted it.
func buildIndex(t testing.TB, mesh core.MeshConfig, yamlText string) *index.Index {
	t.Helper()
	r := decode.Decode("mesh.yaml", []byte(yamlText))
	for _, f := range r.Findings {
		if f.Severity == galleyapi.SeverityError {
			t.Fatalf("decode: %v", f)
		}
	}
	snap := galleyapi.NewSnapshot(1, r.Objects)
	agg := registry.New(nil, nil)
	agg.SinkFor(registry.SourceConfig).Update(registry.State{Services: registry.BuildServices(snap, nil)})
	return index.New(mesh, "meshd-system", agg.View(), snap)
}

func testIndex(t testing.TB, mesh core.MeshConfig) *index.Index {
	t.Helper()
	b, err := os.ReadFile("testdata/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return buildIndex(t, mesh, string(b))
}

func registryOnly() core.MeshConfig {
	m := core.DefaultMeshConfig()
	m.OutboundTrafficPolicy = core.OutboundRegistryOnly
	return m
}

// Proxies of the golden cases.
var (
	productpage = &api.Proxy{ID: "sidecar~10.0.0.31~productpage-1.shop~shop.svc.cluster.local", Type: api.Sidecar,
		IP: "10.0.0.31", IPs: []string{"10.0.0.31"}, Namespace: "shop", Labels: map[string]string{"app": "productpage"}}
	orders = &api.Proxy{ID: "sidecar~10.0.2.5~orders-1.narrow~narrow.svc.cluster.local", Type: api.Sidecar,
		IP: "10.0.2.5", IPs: []string{"10.0.2.5"}, Namespace: "narrow", Labels: map[string]string{"app": "orders"}}
	ingress = &api.Proxy{ID: "router~10.0.9.1~ingress-1.edge~edge.svc.cluster.local", Type: api.Gateway,
		IP: "10.0.9.1", IPs: []string{"10.0.9.1"}, Namespace: "edge", Labels: map[string]string{"istio": "ingressgateway"}}
)

type goldenCase struct {
	name  string
	mesh  core.MeshConfig
	proxy *api.Proxy
	// config is the file in testdata the index is built from; empty means
	// mesh.yaml.
	config string
}

var goldenCases = []goldenCase{
	// A sidecar in a namespace without a Sidecar resource: default
	// visibility, ALLOW_ANY, HTTP, gRPC, TCP (with and without a VIP) and
	// TLS ports, inbound HTTP and TCP ports.
	{"sidecar-allow-any", core.DefaultMeshConfig(), productpage, ""},
	// The same sidecar with the mesh set to REGISTRY_ONLY.
	{"sidecar-registry-only", registryOnly(), productpage, ""},
	// A sidecar scoped by a Sidecar resource (egress hosts, ingress port
	// with a default endpoint, its own REGISTRY_ONLY policy).
	{"sidecar-scoped", core.DefaultMeshConfig(), orders, ""},
	// An ingress gateway selected by two Gateways: HTTP with an HTTPS
	// redirect, HTTP on a wildcard host, HTTPS SIMPLE and MUTUAL with SDS
	// credentials on one port, HTTPS ISTIO_MUTUAL, TLS passthrough, TCP.
	{"gateway", core.DefaultMeshConfig(), ingress, ""},
	// VirtualService delegation (delegate.yaml): a sidecar whose service's
	// root VirtualService delegates to another namespace, and a gateway
	// whose root delegates to that delegate and to one of its own.
	{"sidecar-delegate", core.DefaultMeshConfig(), productpage, "delegate.yaml"},
	{"gateway-delegate", core.DefaultMeshConfig(), ingress, "delegate.yaml"},
}

type output struct {
	listeners []*listenerv3.Listener
	routes    []*routev3.RouteConfiguration
	clusters  []*clusterv3.Cluster
}

func genAll(ix *index.Index, p *api.Proxy) output {
	g := New(Options{})
	return output{g.Listeners(ix, p), g.Routes(ix, p), g.Clusters(ix, p)}
}

func TestGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			ix := testIndex(t, tc.mesh)
			if tc.config != "" {
				b, err := os.ReadFile(filepath.Join("testdata", tc.config))
				if err != nil {
					t.Fatal(err)
				}
				ix = buildIndex(t, tc.mesh, string(b))
			}
			out := genAll(ix, tc.proxy)
			checkOutput(t, ix, tc.proxy, out)
			compareGolden(t, filepath.Join("testdata", tc.name+".golden"), render(t, out))
		})
	}
}

// checkOutput runs every check the golden cases and the other tests share:
// validation, Envoy's own consistency rules, and references.
func checkOutput(t *testing.T, ix *index.Index, p *api.Proxy, out output) {
	t.Helper()
	var problems []string
	for _, l := range out.listeners {
		problems = append(problems, validateDeep("listener "+l.GetName(), l)...)
	}
	for _, r := range out.routes {
		problems = append(problems, validateDeep("route "+r.GetName(), r)...)
	}
	for _, c := range out.clusters {
		problems = append(problems, validateDeep("cluster "+c.GetName(), c)...)
	}
	for _, problem := range append(problems, lint(out)...) {
		t.Error(problem)
	}
	checkRefs(t, ix, p, out)
}

// validateDeep runs go-control-plane's ValidateAll on m and on every
// message packed in an Any inside it (filter and transport socket
// configurations), which ValidateAll itself does not look into.
func validateDeep(where string, m proto.Message) []string {
	var out []string
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			out = append(out, fmt.Sprintf("%s: %T: %v", where, m, err))
		}
	}
	for _, a := range anys(m.ProtoReflect()) {
		inner, err := a.UnmarshalNew()
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %s: %v", where, a.GetTypeUrl(), err))
			continue
		}
		out = append(out, validateDeep(where+" > "+a.GetTypeUrl(), inner)...)
	}
	return out
}

// anys returns the Any messages in m, not looking inside them.
func anys(m protoreflect.Message) []*anypb.Any {
	var out []*anypb.Any
	var walk func(protoreflect.Message)
	visit := func(v protoreflect.Message) {
		if a, ok := v.Interface().(*anypb.Any); ok {
			out = append(out, a)
			return
		}
		walk(v)
	}
	walk = func(m protoreflect.Message) {
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Message() != nil:
				for i := 0; i < v.List().Len(); i++ {
					visit(v.List().Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Message() != nil:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					visit(mv.Message())
					return true
				})
			case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
				visit(v.Message())
			}
			return true
		})
	}
	walk(m)
	return out
}

// lint checks what Envoy rejects but ValidateAll does not see: duplicate
// names, listener addresses, filter chain matches and virtual host
// domains, the router not last, a terminal network filter not last.
func lint(out output) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	names := map[string]bool{}
	addrs := map[string]string{}
	for _, l := range out.listeners {
		if names[l.GetName()] {
			bad("duplicate listener %s", l.GetName())
		}
		names[l.GetName()] = true
		sa := l.GetAddress().GetSocketAddress()
		addr := fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
		if other, ok := addrs[addr]; ok {
			bad("listeners %s and %s share %s", other, l.GetName(), addr)
		}
		addrs[addr] = l.GetName()
		matches := map[string]bool{}
		chainNames := map[string]bool{}
		for _, fc := range l.GetFilterChains() {
			k, _ := protojson.Marshal(fc.GetFilterChainMatch())
			if fc.GetFilterChainMatch() == nil {
				k = []byte("{}")
			}
			if matches[string(k)] {
				bad("listener %s: two filter chains match %s", l.GetName(), k)
			}
			matches[string(k)] = true
			if n := fc.GetName(); n != "" {
				if chainNames[n] {
					bad("listener %s: duplicate filter chain name %s", l.GetName(), n)
				}
				chainNames[n] = true
			}
		}
		if len(l.GetFilterChains()) == 0 {
			bad("listener %s has no filter chains", l.GetName())
		}
		chains := slices.Clone(l.GetFilterChains())
		if d := l.GetDefaultFilterChain(); d != nil {
			chains = append(chains, d)
		}
		for _, fc := range chains {
			fs := fc.GetFilters()
			if len(fs) == 0 {
				bad("listener %s: filter chain %q has no filters", l.GetName(), fc.GetName())
				continue
			}
			for i, f := range fs {
				terminal := f.GetName() == wellknown.HTTPConnectionManager || f.GetName() == wellknown.TCPProxy
				if terminal != (i == len(fs)-1) {
					bad("listener %s: filter %s at %d of %d", l.GetName(), f.GetName(), i, len(fs))
				}
				var h hcmv3.HttpConnectionManager
				if f.GetTypedConfig().MessageIs(&h) {
					if err := f.GetTypedConfig().UnmarshalTo(&h); err != nil {
						bad("listener %s: %v", l.GetName(), err)
						continue
					}
					hf := h.GetHttpFilters()
					if len(hf) == 0 || hf[len(hf)-1].GetName() != wellknown.Router {
						bad("listener %s: router is not the last HTTP filter", l.GetName())
					}
					seen := map[string]bool{}
					for _, x := range hf {
						if seen[x.GetName()] {
							bad("listener %s: HTTP filter %s twice", l.GetName(), x.GetName())
						}
						seen[x.GetName()] = true
					}
					if rc := h.GetRouteConfig(); rc != nil {
						problems = append(problems, lintRoute(rc)...)
					}
				}
			}
		}
		var seenHTTPInspector bool
		for _, lf := range l.GetListenerFilters() {
			switch lf.GetName() {
			case wellknown.HTTPInspector:
				seenHTTPInspector = true
			case wellknown.TLSInspector:
				if seenHTTPInspector {
					bad("listener %s: the TLS inspector must come before the HTTP inspector", l.GetName())
				}
			}
		}
	}
	routes := map[string]bool{}
	for _, rc := range out.routes {
		if routes[rc.GetName()] {
			bad("duplicate route configuration %s", rc.GetName())
		}
		routes[rc.GetName()] = true
		problems = append(problems, lintRoute(rc)...)
	}
	clusters := map[string]bool{}
	for _, c := range out.clusters {
		if clusters[c.GetName()] {
			bad("duplicate cluster %s", c.GetName())
		}
		clusters[c.GetName()] = true
	}
	return problems
}

func lintRoute(rc *routev3.RouteConfiguration) []string {
	var problems []string
	vhosts := map[string]bool{}
	domains := map[string]string{}
	for _, vh := range rc.GetVirtualHosts() {
		if vhosts[vh.GetName()] {
			problems = append(problems, fmt.Sprintf("route %s: duplicate virtual host %s", rc.GetName(), vh.GetName()))
		}
		vhosts[vh.GetName()] = true
		for _, d := range vh.GetDomains() {
			k := strings.ToLower(d)
			if other, ok := domains[k]; ok {
				problems = append(problems, fmt.Sprintf("route %s: domain %s in %s and %s", rc.GetName(), d, other, vh.GetName()))
			}
			domains[k] = vh.GetName()
		}
	}
	return problems
}

// checkRefs checks that every name the listeners and routes refer to
// exists: route configurations among the generated ones (and no generated
// one unused), clusters among this package's, the shared CDS generator's
// outbound clusters for the proxy, or the bootstrap's, ADS secrets among the credentials of
// the Gateway servers the proxy serves, agent secrets among what the node
// agent serves.
func checkRefs(t *testing.T, ix *index.Index, p *api.Proxy, out output) {
	t.Helper()
	refs := References(out.listeners, out.routes)
	generated := map[string]bool{}
	for _, r := range out.routes {
		generated[r.GetName()] = true
	}
	for _, r := range refs.Routes {
		if !generated[r] {
			t.Errorf("a listener refers to route %s, which is not generated", r)
		}
		delete(generated, r)
	}
	for r := range generated {
		t.Errorf("route %s is generated but no listener uses it", r)
	}
	clusters := map[string]bool{}
	for _, c := range out.clusters {
		clusters[c.GetName()] = true
	}
	for _, c := range generate.Clusters(generate.NewScope(ix, p, generate.Envoy)) {
		clusters[c.GetName()] = true
	}
	for _, c := range BootstrapClusters {
		clusters[c] = true
	}
	for _, c := range refs.Clusters {
		if !clusters[c] {
			t.Errorf("cluster %s is referred to but does not exist", c)
		}
	}
	secrets := map[string]bool{}
	for _, gw := range ix.GatewaysFor(p.Labels) {
		for _, s := range gw.Spec.GetServers() {
			if cn := s.GetTls().GetCredentialName(); cn != "" && p.Type == api.Gateway {
				secrets["kubernetes://"+cn] = true
				secrets["kubernetes://"+cn+"-cacert"] = true
			}
		}
	}
	for _, s := range refs.Secrets {
		if !secrets[s] {
			t.Errorf("secret %s is referred to but no Gateway server of the proxy names it", s)
		}
	}
	for _, s := range refs.AgentSecrets {
		if s != WorkloadSecret && s != RootSecret && !strings.HasPrefix(s, "file-") {
			t.Errorf("agent secret %s is not one the node agent serves", s)
		}
	}
}

// render turns the output into YAML in Envoy's config_dump form: proto
// field names in field order, as protojson writes them, re-encoded so the
// text is stable (protojson's spacing is deliberately unstable).
func render(t *testing.T, out output) []byte {
	t.Helper()
	m := protojson.MarshalOptions{UseProtoNames: true}
	seq := func(msgs ...proto.Message) *yaml.Node {
		n := &yaml.Node{Kind: yaml.SequenceNode}
		for _, msg := range msgs {
			b, err := m.Marshal(msg)
			if err != nil {
				t.Fatal(err)
			}
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.UseNumber()
			v, err := jsonNode(dec)
			if err != nil {
				t.Fatal(err)
			}
			n.Content = append(n.Content, v)
		}
		return n
	}
	doc := &yaml.Node{Kind: yaml.MappingNode}
	add := func(key string, v *yaml.Node) {
		doc.Content = append(doc.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, v)
	}
	add("listeners", seq(toMessages(out.listeners)...))
	add("routes", seq(toMessages(out.routes)...))
	add("clusters", seq(toMessages(out.clusters)...))
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func toMessages[M proto.Message](in []M) []proto.Message {
	out := make([]proto.Message, len(in))
	for i, m := range in {
		out[i] = m
	}
	return out
}

// jsonNode reads one JSON value into a YAML node, keeping key order.
func jsonNode(dec *json.Decoder) (*yaml.Node, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch v := tok.(type) {
	case json.Delim:
		n := &yaml.Node{Kind: yaml.SequenceNode}
		if v == '{' {
			n.Kind = yaml.MappingNode
		}
		for dec.More() {
			if n.Kind == yaml.MappingNode {
				k, err := dec.Token()
				if err != nil {
					return nil, err
				}
				n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: k.(string)})
			}
			c, err := jsonNode(dec)
			if err != nil {
				return nil, err
			}
			n.Content = append(n.Content, c)
		}
		if _, err := dec.Token(); err != nil { // closing delimiter
			return nil, err
		}
		return n, nil
	case string:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v}, nil
	case json.Number:
		tag := "!!int"
		if strings.ContainsAny(string(v), ".eE") {
			tag = "!!float"
		}
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: string(v)}, nil
	case bool:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: fmt.Sprint(v)}, nil
	}
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null"}, nil
}

func compareGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if updating() {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the output (go test -update rewrites it):\n%s", path, diff(string(want), string(got)))
	}
}

// diff shows the first lines that differ, enough to see what changed.
func diff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < max(len(w), len(g)); i++ {
		var a, b string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			b = g[i]
		}
		if a != b {
			lo, hi := max(0, i-3), min(max(len(w), len(g)), i+8)
			var sb strings.Builder
			fmt.Fprintf(&sb, "first difference at line %d\n", i+1)
			for j := lo; j < hi; j++ {
				var x, y string
				if j < len(w) {
					x = w[j]
				}
				if j < len(g) {
					y = g[j]
				}
				mark := " "
				if x != y {
					mark = "!"
				}
				fmt.Fprintf(&sb, "%s want: %s\n%s  got: %s\n", mark, x, mark, y)
			}
			return sb.String()
		}
	}
	return ""
}
