package envoy

import (
	"slices"
	"strings"
	"testing"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/xds/api"
)

func findListener(ls []*listenerv3.Listener, name string) *listenerv3.Listener {
	for _, l := range ls {
		if l.GetName() == name {
			return l
		}
	}
	return nil
}

func listenerNames(ls []*listenerv3.Listener) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.GetName())
	}
	return out
}

func hcmOf(t *testing.T, fc *listenerv3.FilterChain) *hcmv3.HttpConnectionManager {
	t.Helper()
	fs := fc.GetFilters()
	var h hcmv3.HttpConnectionManager
	if len(fs) == 0 || fs[len(fs)-1].GetTypedConfig().UnmarshalTo(&h) != nil {
		t.Fatalf("chain %q does not end in an HTTP connection manager", fc.GetName())
	}
	return &h
}

func tcpOf(t *testing.T, fc *listenerv3.FilterChain) *tcpv3.TcpProxy {
	t.Helper()
	fs := fc.GetFilters()
	var p tcpv3.TcpProxy
	if len(fs) == 0 || fs[len(fs)-1].GetTypedConfig().UnmarshalTo(&p) != nil {
		t.Fatalf("chain %q does not end in a TCP proxy", fc.GetName())
	}
	return &p
}

// TestGatewayMerge covers how servers of several Gateways share ports, and
// which are refused.
func TestGatewayMerge(t *testing.T) {
	ix := buildIndex(t, core.DefaultMeshConfig(), `
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: a, namespace: edge}
spec:
  selector: {app: gw}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*/a.example.com"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*/a.example.com"]
    tls: {mode: SIMPLE, credentialName: a}
  - port: {number: 5432, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: b, namespace: edge}
spec:
  selector: {app: gw}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*/b.example.com"]
  - port: {number: 80, name: tcp, protocol: TCP}
    hosts: ["*"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*/a.example.com"]
    tls: {mode: SIMPLE, credentialName: dup}
  - port: {number: 443, name: https-b, protocol: HTTPS}
    hosts: ["*/b.example.com"]
    tls: {mode: SIMPLE, credentialName: b}
  - port: {number: 443, name: plain, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 5432, name: tcp2, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: other, namespace: edge}
spec:
  selector: {app: other}
  servers:
  - port: {number: 8000, name: http, protocol: HTTP}
    hosts: ["*"]
`)
	p := &api.Proxy{Type: api.Gateway, Namespace: "edge", Labels: map[string]string{"app": "gw"}}
	m := mergeGateways(ix, p)
	var ports []string
	for _, gp := range m.ports {
		var servers []string
		for _, s := range gp.servers {
			servers = append(servers, s.gw.Object.Name+":"+s.s.GetPort().GetName())
		}
		ports = append(ports, portString(gp.port)+"="+strings.Join(servers, ","))
	}
	want := []string{"80=a:http,b:http", "443=a:https,b:https-b", "5432=a:tcp"}
	if !slices.Equal(ports, want) {
		t.Errorf("merged ports = %v, want %v", ports, want)
	}
	if len(m.Rejected) != 4 {
		t.Errorf("rejected = %q, want the TCP server on 80, the duplicate host on 443, HTTP on the TLS port and the second TCP server", m.Rejected)
	}
	if got := m.routes["http.80"]; len(got) != 2 {
		t.Errorf("http.80 serves %d servers, want 2", len(got))
	}
	out := genAll(ix, p)
	// No VirtualService binds the TCP server: its listener is left out.
	if got := listenerNames(out.listeners); !slices.Equal(got, []string{"0.0.0.0_443", "0.0.0.0_80"}) {
		t.Errorf("listeners = %v", got)
	}
	checkOutput(t, ix, p, out)
	if got := New(Options{}).Problems(ix, p); len(got) != 5 || !strings.Contains(got[4], "0.0.0.0_5432") {
		t.Errorf("Problems = %q, want the 4 rejected servers and the unrouted TCP listener", got)
	}
	// A route configuration with no VirtualService answers 404 rather than
	// being missing.
	for _, rc := range out.routes {
		if vh := rc.GetVirtualHosts(); len(vh) != 1 || !strings.HasPrefix(vh[0].GetName(), "blackhole:") || !slices.Equal(vh[0].GetDomains(), []string{"*"}) {
			t.Errorf("route %s: virtual hosts %v, want one blackhole", rc.GetName(), vh)
		}
	}
}

// TestSidecarEgressPort covers a Sidecar egress listener with its own port:
// only its hosts appear there, the services' other ports come from the
// catch-all egress listener.
func TestSidecarEgressPort(t *testing.T) {
	ix := buildIndex(t, core.DefaultMeshConfig(), `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: app}
spec:
  hosts: [a.app.svc.cluster.local]
  ports: [{name: http, number: 8080, protocol: HTTP}]
  endpoints: [{address: 10.1.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: app}
spec:
  hosts: [b.app.svc.cluster.local]
  ports: [{name: http, number: 8080, protocol: HTTP}, {name: tcp, number: 9000, protocol: TCP}]
  endpoints: [{address: 10.1.0.2}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: app}
spec:
  egress:
  - port: {number: 8080, protocol: HTTP, name: http}
    hosts: ["./a.app.svc.cluster.local"]
  - hosts: ["./*"]
`)
	p := &api.Proxy{Type: api.Sidecar, Namespace: "app", IPs: []string{"10.1.0.9"}}
	out := genAll(ix, p)
	checkOutput(t, ix, p, out)
	if got := listenerNames(out.listeners); !slices.Equal(got, []string{"0.0.0.0_8080", "0.0.0.0_9000", VirtualInboundListener, VirtualOutboundListener}) {
		t.Errorf("listeners = %v", got)
	}
	if len(out.routes) != 1 {
		t.Fatalf("routes = %d", len(out.routes))
	}
	var vhosts []string
	for _, vh := range out.routes[0].GetVirtualHosts() {
		vhosts = append(vhosts, vh.GetName())
	}
	if !slices.Equal(vhosts, []string{"a.app.svc.cluster.local:8080", AllowAnyVirtualHost}) {
		t.Errorf("route 8080 virtual hosts = %v; b must not be on the port a's egress listener owns", vhosts)
	}
}

// TestSharedPort covers an HTTP and a TCP service without an address on
// one port: plaintext HTTP goes to the route, everything else to the TCP
// service rather than the passthrough.
func TestSharedPort(t *testing.T) {
	ix := buildIndex(t, core.DefaultMeshConfig(), `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: app}
spec:
  hosts: [web.app.svc.cluster.local]
  ports: [{name: http, number: 8000, protocol: HTTP}]
  endpoints: [{address: 10.1.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: raw, namespace: app}
spec:
  hosts: [raw.app.svc.cluster.local, raw2.app.svc.cluster.local]
  ports: [{name: tcp, number: 8000, protocol: TCP}]
  endpoints: [{address: 10.1.0.2}]
`)
	p := &api.Proxy{Type: api.Sidecar, Namespace: "app"}
	out := genAll(ix, p)
	checkOutput(t, ix, p, out)
	l := findListener(out.listeners, "0.0.0.0_8000")
	if l == nil || len(l.GetFilterChains()) != 1 || l.GetDefaultFilterChain() == nil {
		t.Fatalf("listener 0.0.0.0_8000 = %v", l)
	}
	if got := hcmOf(t, l.GetFilterChains()[0]).GetRds().GetRouteConfigName(); got != "8000" {
		t.Errorf("HTTP chain route = %s", got)
	}
	// The first TCP service by host name takes the port; the second
	// cannot be told apart without an address and is dropped.
	if got := tcpOf(t, l.GetDefaultFilterChain()).GetCluster(); got != "outbound|8000||raw.app.svc.cluster.local" {
		t.Errorf("default chain cluster = %s", got)
	}
	if got := New(Options{}).Problems(ix, p); len(got) != 1 || !strings.Contains(got[0], "raw2.app.svc.cluster.local") {
		t.Errorf("Problems = %q, want the dropped raw2", got)
	}
}

// TestNoServices: a sidecar that sees nothing still gets valid virtual
// listeners, and a proxyless client gets nothing from this package.
func TestNoServices(t *testing.T) {
	ix := buildIndex(t, registryOnly(), `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hidden, namespace: other}
spec:
  hosts: [hidden.other.svc.cluster.local]
  exportTo: ["."]
  ports: [{name: http, number: 80, protocol: HTTP}]
`)
	p := &api.Proxy{Type: api.Sidecar, Namespace: "app"}
	out := genAll(ix, p)
	checkOutput(t, ix, p, out)
	if got := listenerNames(out.listeners); !slices.Equal(got, []string{VirtualInboundListener, VirtualOutboundListener}) {
		t.Errorf("listeners = %v", got)
	}
	vo := findListener(out.listeners, VirtualOutboundListener)
	if got := tcpOf(t, vo.GetFilterChains()[1]).GetCluster(); got != BlackHoleCluster {
		t.Errorf("REGISTRY_ONLY catch-all goes to %s", got)
	}
	gw := &api.Proxy{Type: api.Gateway, Namespace: "edge", Labels: map[string]string{"istio": "ingressgateway"}}
	if out := genAll(ix, gw); len(out.listeners) != 0 || len(out.routes) != 0 || len(out.clusters) != 2 {
		t.Errorf("a gateway no Gateway selects: %d listeners, %d routes, %d clusters", len(out.listeners), len(out.routes), len(out.clusters))
	}
	pl := &api.Proxy{Type: api.Proxyless, Namespace: "app"}
	if out := genAll(ix, pl); len(out.listeners)+len(out.routes)+len(out.clusters) != 0 {
		t.Error("proxyless clients must get nothing from the Envoy generator")
	}
}

// testExt exercises every extension point the way telemetry and security
// will: RBAC filters, access logs, mTLS on inbound ports.
type testExt struct{}

func (testExt) NetworkFilters(c Chain) []*listenerv3.Filter {
	if c.Class != SidecarInbound || c.Passthrough {
		return nil
	}
	return []*listenerv3.Filter{{
		Name:       "envoy.filters.network.rbac",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(&rbacnetv3.RBAC{StatPrefix: "tcp."})},
	}}
}

func (testExt) HTTPFilters(c Chain) []*hcmv3.HttpFilter {
	return []*hcmv3.HttpFilter{{
		Name:       "envoy.filters.http.rbac",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed(&rbachttpv3.RBAC{})},
	}}
}

func stdoutLog() *accesslogv3.AccessLog {
	return &accesslogv3.AccessLog{
		Name:       "envoy.access_loggers.stdout",
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: typed(&streamv3.StdoutAccessLog{})},
	}
}

func (testExt) ConnectionManager(c Chain, h *hcmv3.HttpConnectionManager) {
	h.AccessLog = append(h.AccessLog, stdoutLog())
}

func (testExt) TCPProxy(c Chain, p *tcpv3.TcpProxy) { p.AccessLog = append(p.AccessLog, stdoutLog()) }

func (testExt) Listener(class Class, p *api.Proxy, l *listenerv3.Listener) {
	l.AccessLog = append(l.AccessLog, stdoutLog())
}

func (testExt) InboundMatches(c Chain) []InboundMatch {
	tls := &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: WorkloadSecret, SdsConfig: agentSDSSource()}},
	}}
	return []InboundMatch{
		{NameSuffix: "-mtls", TransportProtocol: "tls", ApplicationProtocols: []string{"istio-peer-exchange", "istio"}, TransportSocket: downstreamTLS(tls)},
		{TransportProtocol: rawBufferTransport},
	}
}

func TestExtensions(t *testing.T) {
	ix := testIndex(t, core.DefaultMeshConfig())
	g := New(Options{Extensions: []any{testExt{}}})
	for _, p := range []*api.Proxy{productpage, ingress} {
		out := output{g.Listeners(ix, p), g.Routes(ix, p), g.Clusters(ix, p)}
		checkOutput(t, ix, p, out)
		for _, l := range out.listeners {
			if len(l.GetAccessLog()) != 1 {
				t.Errorf("listener %s: listener extension not applied", l.GetName())
			}
			for _, fc := range append(slices.Clone(l.GetFilterChains()), l.GetDefaultFilterChain()) {
				fs := fc.GetFilters()
				if len(fs) == 0 {
					continue
				}
				switch fs[len(fs)-1].GetName() {
				case wellknown.HTTPConnectionManager:
					h := hcmOf(t, fc)
					var names []string
					for _, f := range h.GetHttpFilters() {
						names = append(names, f.GetName())
					}
					if want := []string{"envoy.filters.http.rbac", FaultFilterName, CORSFilterName, RouterFilterName}; !slices.Equal(names, want) {
						t.Errorf("listener %s: HTTP filters %v, want %v", l.GetName(), names, want)
					}
					if len(h.GetAccessLog()) != 1 {
						t.Errorf("listener %s: connection manager extension not applied", l.GetName())
					}
				case wellknown.TCPProxy:
					if len(tcpOf(t, fc).GetAccessLog()) != 1 {
						t.Errorf("listener %s: TCP proxy extension not applied", l.GetName())
					}
				}
			}
		}
	}
	vi := findListener(g.Listeners(ix, productpage), VirtualInboundListener)
	var chains []string
	for _, fc := range vi.GetFilterChains() {
		chains = append(chains, fc.GetName())
		if strings.HasPrefix(fc.GetName(), "0.0.0.0_") && fc.GetFilters()[0].GetName() != "envoy.filters.network.rbac" {
			t.Errorf("inbound chain %s does not start with the extension's network filter", fc.GetName())
		}
	}
	want := []string{VirtualInboundBlackholeChain, VirtualInboundPassthroughChain, "0.0.0.0_9080-mtls", "0.0.0.0_9080", "0.0.0.0_9091-mtls", "0.0.0.0_9091"}
	if !slices.Equal(chains, want) {
		t.Errorf("inbound chains = %v, want %v", chains, want)
	}
	var names []string
	for _, lf := range vi.GetListenerFilters() {
		names = append(names, lf.GetName())
	}
	if want := []string{wellknown.OriginalDestination, wellknown.TLSInspector}; !slices.Equal(names, want) {
		t.Errorf("inbound listener filters = %v, want %v (mTLS chains need the TLS inspector)", names, want)
	}
	if refs := References([]*listenerv3.Listener{vi}, nil); !slices.Equal(refs.AgentSecrets, []string{WorkloadSecret}) || !slices.Contains(refs.Clusters, SDSCluster) {
		t.Errorf("inbound references = %+v, want the workload secret from sds-grpc", refs)
	}
}

// TestKey checks that Key covers what the output depends on: replicas of
// one workload share a key and get equal output, whatever unrelated labels
// they carry; a different namespace, workload ports, labels a route
// matches on, or Gateways selecting it give a different key.
func TestKey(t *testing.T) {
	ix := buildIndex(t, core.DefaultMeshConfig(), `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: app}
spec:
  hosts: [web.app.svc.cluster.local]
  ports: [{name: http, number: 80, protocol: HTTP, targetPort: 8080}]
  endpoints: [{address: 10.1.0.1}, {address: 10.1.0.2}, {address: 10.1.0.3, ports: {http: 8081}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: app}
spec:
  hosts: [db.app.svc.cluster.local]
  tcp:
  - match: [{sourceLabels: {v: "2"}}]
    route: [{destination: {host: db.app.svc.cluster.local}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: app}
spec:
  selector: {gw: "yes"}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
`)
	sidecar := func(ip, ns string, labels map[string]string) *api.Proxy {
		return &api.Proxy{Type: api.Sidecar, IP: ip, IPs: []string{ip}, Namespace: ns, Labels: labels}
	}
	web := map[string]string{"app": "web"}
	a, b := sidecar("10.1.0.1", "app", web), sidecar("10.1.0.2", "app", map[string]string{"app": "web", "pod": "b"})
	if Key(ix, a) != Key(ix, b) {
		t.Fatalf("replicas have different keys:\n%s\n%s", Key(ix, a), Key(ix, b))
	}
	ga, gb := genAll(ix, a), genAll(ix, b)
	for i := range ga.listeners {
		if !proto.Equal(ga.listeners[i], gb.listeners[i]) {
			t.Errorf("replicas with one key get different listener %s", ga.listeners[i].GetName())
		}
	}
	for _, other := range []*api.Proxy{
		sidecar("10.1.0.3", "app", web), // listens on another port
		sidecar("10.1.0.9", "app", web), // serves nothing
		sidecar("10.1.0.1", "other", web),
		sidecar("10.1.0.1", "app", map[string]string{"app": "web", "v": "2"}), // a tcp route's sourceLabels match
		{Type: api.Gateway, IP: "10.1.0.1", IPs: []string{"10.1.0.1"}, Namespace: "app", Labels: web},
		{Type: api.Gateway, IP: "10.1.0.1", IPs: []string{"10.1.0.1"}, Namespace: "app", Labels: map[string]string{"gw": "yes"}}, // a Gateway selects it
	} {
		if Key(ix, other) == Key(ix, a) {
			t.Errorf("proxy %+v shares a key with %+v", other, a)
		}
	}
}

// TestInboundPorts covers where inbound chains come from.
func TestInboundPorts(t *testing.T) {
	ix := testIndex(t, core.DefaultMeshConfig())
	got := inboundPorts(ix, productpage)
	if len(got) != 2 || got[0].port != 9080 || got[0].protocol != "HTTP" || got[1].port != 9091 || got[1].protocol != "TCP" {
		t.Errorf("productpage inbound ports = %+v", got)
	}
	got = inboundPorts(ix, orders)
	if len(got) != 1 || got[0].port != 8080 || got[0].endpointPort != 8081 || got[0].service == nil {
		t.Errorf("orders inbound ports (Sidecar ingress) = %+v", got)
	}
	c := inboundCluster(got[0])
	if sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress(); sa.GetPortValue() != 8081 || c.GetName() != "inbound|8080||" {
		t.Errorf("inbound cluster %s -> %v", c.GetName(), sa)
	}
}

// TestSecrets lists what a gateway needs from meshd's SDS.
func TestSecrets(t *testing.T) {
	ix := testIndex(t, core.DefaultMeshConfig())
	got := New(Options{}).Secrets(ix, ingress)
	want := []string{"kubernetes://admin-cert", "kubernetes://admin-cert-cacert", "kubernetes://bookinfo-cert"}
	if !slices.Equal(got, want) {
		t.Errorf("Secrets = %v, want %v", got, want)
	}
	if got := New(Options{}).Secrets(ix, productpage); len(got) != 0 {
		t.Errorf("a sidecar needs no credentials from meshd, got %v", got)
	}
}

// TestCheckersCatchMistakes makes sure the checks the golden cases rely on
// fail on what Envoy would reject.
func TestCheckersCatchMistakes(t *testing.T) {
	ix := testIndex(t, core.DefaultMeshConfig())
	out := genAll(ix, productpage)

	bad := proto.Clone(out.listeners[0]).(*listenerv3.Listener)
	var h hcmv3.HttpConnectionManager
	for _, l := range out.listeners {
		if fc := l.GetFilterChains(); len(fc) > 0 && fc[0].GetFilters()[0].GetName() == wellknown.HTTPConnectionManager {
			bad = proto.Clone(l).(*listenerv3.Listener)
		}
	}
	f := bad.GetFilterChains()[0].GetFilters()[0]
	if err := f.GetTypedConfig().UnmarshalTo(&h); err != nil {
		t.Fatal(err)
	}
	h.StatPrefix = "" // required
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: typed(&h)}
	if errs := validateDeep("bad", bad); len(errs) == 0 {
		t.Error("validateDeep missed an empty stat_prefix inside a filter")
	}

	h.StatPrefix = "x"
	h.HttpFilters = slices.Clone(h.HttpFilters[:len(h.HttpFilters)-1]) // router dropped
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: typed(&h)}
	dup := proto.Clone(out.routes[0]).(*routev3.RouteConfiguration)
	dup.VirtualHosts = append(dup.VirtualHosts, proto.Clone(dup.VirtualHosts[0]).(*routev3.VirtualHost))
	problems := lint(output{listeners: []*listenerv3.Listener{bad, bad}, routes: []*routev3.RouteConfiguration{dup}})
	for _, want := range []string{"duplicate listener", "router is not the last", "duplicate virtual host", "domain"} {
		if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, want) }) {
			t.Errorf("lint missed %q: %q", want, problems)
		}
	}
}

// TestReservedPorts: service ports on Envoy's own ports get no wildcard
// listener (Envoy refuses two listeners on one address), but a service
// with its own address may use them.
func TestReservedPorts(t *testing.T) {
	ix := buildIndex(t, core.DefaultMeshConfig(), `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: odd, namespace: app}
spec:
  hosts: [odd.app.svc.cluster.local]
  ports: [{name: tcp, number: 15001, protocol: TCP}, {name: http, number: 15006, protocol: HTTP}, {name: metrics, number: 15090, protocol: HTTP}]
  endpoints: [{address: 10.1.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vip, namespace: app}
spec:
  hosts: [vip.app.svc.cluster.local]
  addresses: [240.1.0.1]
  ports: [{name: tcp, number: 15001, protocol: TCP}]
  endpoints: [{address: 10.1.0.2}]
`)
	p := &api.Proxy{Type: api.Sidecar, Namespace: "app", IPs: []string{"10.1.0.1"}}
	out := genAll(ix, p)
	checkOutput(t, ix, p, out)
	if got := listenerNames(out.listeners); !slices.Equal(got, []string{"240.1.0.1_15001", VirtualInboundListener, VirtualOutboundListener}) {
		t.Errorf("listeners = %v", got)
	}
	if len(out.routes) != 0 || len(out.clusters) != 3 {
		t.Errorf("%d routes and %d clusters; reserved inbound ports must get no inbound cluster", len(out.routes), len(out.clusters))
	}
	if got := New(Options{}).Problems(ix, p); len(got) != 1 || !strings.Contains(got[0], "port 15001") {
		t.Errorf("Problems = %q, want the TCP port 15001", got)
	}
}

func TestResources(t *testing.T) {
	ix := testIndex(t, core.DefaultMeshConfig())
	g := New(Options{})
	for typ, want := range map[string]int{api.ListenerType: 11, api.RouteType: 4, api.ClusterType: 5, api.EndpointType: 0} {
		got := g.Resources(ix, productpage, typ)
		if len(got) != want {
			t.Errorf("%s: %d resources, want %d", api.ShortType(typ), len(got), want)
		}
		for _, r := range got {
			if r.Name == "" || r.Message == nil {
				t.Errorf("%s: resource %+v", api.ShortType(typ), r)
			}
		}
	}
	if got := g.Resources(ix, &api.Proxy{Type: api.Proxyless, Namespace: "shop"}, api.ListenerType); got != nil {
		t.Errorf("proxyless: %d listeners", len(got))
	}
}

func TestServerTLSModes(t *testing.T) {
	for _, tt := range []struct {
		name          string
		tls           *networking.ServerTLSSettings
		certs         []string
		ca            string
		requireClient bool
	}{
		{"simple credential", &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_SIMPLE, CredentialName: "c"}, []string{"kubernetes://c"}, "", false},
		{"mutual credential", &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_MUTUAL, CredentialName: "c"}, []string{"kubernetes://c"}, "kubernetes://c-cacert", true},
		{"optional mutual", &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_OPTIONAL_MUTUAL, CredentialName: "c"}, []string{"kubernetes://c"}, "kubernetes://c-cacert", false},
		{"separate CA credential", &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_MUTUAL, CredentialName: "c", CaCertCredentialName: "ca"}, []string{"kubernetes://c"}, "kubernetes://ca", true},
		{"several credentials", &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_SIMPLE, CredentialNames: []string{"rsa", "ecdsa"}}, []string{"kubernetes://rsa", "kubernetes://ecdsa"}, "", false},
		{"builtin", &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_SIMPLE, CredentialName: "builtin://"}, []string{"default"}, "", false},
		{"istio mutual", &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_ISTIO_MUTUAL}, []string{"default"}, "ROOTCA", true},
		{"files", &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_MUTUAL, ServerCertificate: "/c.pem", PrivateKey: "/k.pem", CaCertificates: "/ca.pem"}, []string{"file-cert:/c.pem~/k.pem"}, "file-root:/ca.pem", true},
		{"mutual without a CA", &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_MUTUAL, ServerCertificate: "/c.pem", PrivateKey: "/k.pem"}, []string{"file-cert:/c.pem~/k.pem"}, "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := serverTLSContext(tt.tls, true)
			if errs := validateDeep(tt.name, ctx); len(errs) > 0 {
				t.Fatal(errs)
			}
			var certs []string
			for _, s := range ctx.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs() {
				certs = append(certs, s.GetName())
			}
			ca := ctx.GetCommonTlsContext().GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName()
			if !slices.Equal(certs, tt.certs) || ca != tt.ca || ctx.GetRequireClientCertificate().GetValue() != tt.requireClient {
				t.Errorf("certs %v, CA %q, require client cert %v; want %v, %q, %v", certs, ca, ctx.GetRequireClientCertificate().GetValue(), tt.certs, tt.ca, tt.requireClient)
			}
		})
	}
}

// TestGatewayTLSTermination covers a TLS server that terminates TLS and
// proxies TCP by the bound VirtualService's tcp route.
func TestGatewayTLSTermination(t *testing.T) {
	ix := buildIndex(t, core.DefaultMeshConfig(), `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: data}
spec:
  hosts: [db.data.svc.cluster.local]
  ports: [{name: tcp, number: 5432, protocol: TCP}]
  endpoints: [{address: 10.1.0.1}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: edge}
spec:
  selector: {app: gw}
  servers:
  - port: {number: 5433, name: tls-db, protocol: TLS}
    hosts: ["data/db.example.com"]
    tls: {mode: SIMPLE, credentialName: db-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: data}
spec:
  hosts: [db.example.com]
  gateways: [edge/gw]
  tcp:
  - match: [{port: 5433}]
    route: [{destination: {host: db}}]
`)
	p := &api.Proxy{Type: api.Gateway, Namespace: "edge", Labels: map[string]string{"app": "gw"}}
	out := genAll(ix, p)
	checkOutput(t, ix, p, out)
	l := findListener(out.listeners, "0.0.0.0_5433")
	if l == nil || len(l.GetFilterChains()) != 1 {
		t.Fatalf("listeners = %v", listenerNames(out.listeners))
	}
	fc := l.GetFilterChains()[0]
	if got := fc.GetFilterChainMatch().GetServerNames(); !slices.Equal(got, []string{"db.example.com"}) {
		t.Errorf("server names = %v", got)
	}
	if got := tcpOf(t, fc).GetCluster(); got != "outbound|5432||db.data.svc.cluster.local" {
		t.Errorf("cluster = %s", got)
	}
	var ctx tlsv3.DownstreamTlsContext
	if err := fc.GetTransportSocket().GetTypedConfig().UnmarshalTo(&ctx); err != nil {
		t.Fatal(err)
	}
	if alpn := ctx.GetCommonTlsContext().GetAlpnProtocols(); len(alpn) != 0 {
		t.Errorf("a TCP server must not offer HTTP ALPN, got %v", alpn)
	}
	if len(out.routes) != 0 {
		t.Errorf("a TLS server that is not HTTPS needs no routes, got %d", len(out.routes))
	}
}
