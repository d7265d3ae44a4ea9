package envoy

import (
	"slices"
	"testing"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/pilot/generate"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/xds/api"
)

func TestResourceNames(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{ListenerName(Wildcard, 80), "0.0.0.0_80"},
		{ListenerName("240.240.0.20", 3306), "240.240.0.20_3306"},
		{SidecarRouteName(9080), "9080"},
		{GatewayHTTPRouteName(80, ""), "http.80"},
		{GatewayHTTPRouteName(80, "10.0.0.1"), "http.80.10.0.0.1"},
		{GatewayHTTPSRouteName(443, "https", "gw", "edge", ""), "https.443.https.gw.edge"},
		{GatewayHTTPSRouteName(443, "https", "gw", "edge", "10.0.0.1"), "https.443.https.gw.edge.10.0.0.1"},
		{VirtualHostName("reviews.shop.svc.cluster.local", 9080), "reviews.shop.svc.cluster.local:9080"},
		{InboundVirtualHostName(9080), "inbound|http|9080"},
		{inboundClusterName(9080), "inbound|9080||"},
		{CredentialSecretName("bookinfo-cert"), "kubernetes://bookinfo-cert"},
		{CredentialSecretName("kubernetes-gateway://edge/cert"), "kubernetes-gateway://edge/cert"},
		{CredentialSecretName("builtin://"), "default"},
		{CredentialCASecretName("admin"), "kubernetes://admin-cacert"},
		{FileCertSecretName("/etc/c.pem", "/etc/k.pem"), "file-cert:/etc/c.pem~/etc/k.pem"},
		{FileRootSecretName("/etc/ca.pem"), "file-root:/etc/ca.pem"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestHostDomains(t *testing.T) {
	svc := func(host string, addrs ...string) *model.Service {
		return &model.Service{Hostname: host, Addresses: addrs}
	}
	for _, tt := range []struct {
		name string
		svc  *model.Service
		ns   string
		want []string
	}{
		{"same namespace", svc("reviews.shop.svc.cluster.local"), "shop",
			[]string{"reviews.shop.svc.cluster.local", "reviews.shop.svc.cluster.local.", "reviews", "reviews.shop", "reviews.shop.svc"}},
		{"other namespace", svc("reviews.shop.svc.cluster.local"), "web",
			[]string{"reviews.shop.svc.cluster.local", "reviews.shop.svc.cluster.local.", "reviews.shop", "reviews.shop.svc"}},
		{"external with address", svc("api.example.com", "240.0.0.1", "10.0.0.0/8"), "web",
			[]string{"api.example.com", "api.example.com.", "240.0.0.1"}},
		{"wildcard", svc("*.example.com"), "web", []string{"*.example.com"}},
		{"other cluster domain", svc("reviews.shop.svc.corp.local"), "shop",
			[]string{"reviews.shop.svc.corp.local", "reviews.shop.svc.corp.local."}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := HostDomains(tt.svc, tt.ns, "cluster.local"); !slices.Equal(got, tt.want) {
				t.Errorf("HostDomains = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestGatewayHostRules(t *testing.T) {
	if got := sanitizeServerHosts([]string{"./a.com", "*/b.com", "shop/c.com", "d.com", "*/*"}, "edge"); !slices.Equal(got, []string{"edge/a.com", "b.com", "shop/c.com", "d.com", "*"}) {
		t.Errorf("sanitizeServerHosts = %v", got)
	}
	if got := hostsForNamespace([]string{"edge/a.com", "b.com", "shop/c.com", "*/d.com"}, "shop"); !slices.Equal(got, []string{"b.com", "c.com", "d.com"}) {
		t.Errorf("hostsForNamespace = %v", got)
	}
	if got := serverSNI([]string{"shop/b.com", "a.com", "edge/b.com"}); !slices.Equal(got, []string{"a.com", "b.com"}) {
		t.Errorf("serverSNI = %v", got)
	}
	if got := sniNames([]string{"b.com", "*", "a.com"}); got != nil {
		t.Errorf("sniNames with * = %v, want none", got)
	}
	for _, tt := range []struct {
		server, vs, want []string
	}{
		{[]string{"*.example.com"}, []string{"a.example.com", "b.other.com"}, []string{"a.example.com"}},
		{[]string{"a.example.com"}, []string{"*.example.com"}, []string{"a.example.com"}},
		{[]string{"*"}, []string{"X.example.com", "y.com"}, []string{"x.example.com", "y.com"}},
		{[]string{"a.com"}, []string{"b.com"}, nil},
		{[]string{"*.example.com"}, []string{"*.a.example.com"}, []string{"*.a.example.com"}},
	} {
		if got := intersectHosts(tt.server, tt.vs); !slices.Equal(got, tt.want) {
			t.Errorf("intersectHosts(%v, %v) = %v, want %v", tt.server, tt.vs, got, tt.want)
		}
	}
}

func TestListenAddress(t *testing.T) {
	for _, tt := range []struct {
		addrs    []string
		bind     string
		cidr     string
		cidrBits uint32
	}{
		{nil, Wildcard, "", 0},
		{[]string{"240.0.0.1"}, "240.0.0.1", "", 0},
		{[]string{"240.0.0.1/32"}, "240.0.0.1", "", 0},
		{[]string{"10.1.0.0/16"}, Wildcard, "10.1.0.0", 16},
		{[]string{"0.0.0.0"}, Wildcard, "", 0},
		{[]string{"not-an-ip"}, Wildcard, "", 0},
	} {
		bind, cidr := listenAddress(&model.Service{Addresses: tt.addrs})
		if bind != tt.bind || cidr.GetAddressPrefix() != tt.cidr || cidr.GetPrefixLen().GetValue() != tt.cidrBits {
			t.Errorf("listenAddress(%v) = %s, %v", tt.addrs, bind, cidr)
		}
	}
}

func TestParseDefaultEndpoint(t *testing.T) {
	for _, tt := range []struct {
		in   string
		addr string
		port uint32
		ok   bool
	}{
		{"", loopback, 8080, true},
		{"127.0.0.1:8081", "127.0.0.1", 8081, true},
		{"0.0.0.0:9000", loopback, 9000, true},
		{"[::1]:9000", "::1", 9000, true},
		{"unix:///var/run/app.sock", "", 0, false},
		{"127.0.0.1", "", 0, false},
		{"127.0.0.1:0", "", 0, false},
	} {
		addr, port, ok := parseDefaultEndpoint(tt.in, 8080)
		if addr != tt.addr || port != tt.port || ok != tt.ok {
			t.Errorf("parseDefaultEndpoint(%q) = %s, %d, %v", tt.in, addr, port, ok)
		}
	}
}

func TestOutboundPolicy(t *testing.T) {
	sc := func(mode networking.OutboundTrafficPolicy_Mode) *index.Sidecar {
		return &index.Sidecar{Spec: &networking.Sidecar{OutboundTrafficPolicy: &networking.OutboundTrafficPolicy{Mode: mode}}}
	}
	allow, only := core.DefaultMeshConfig(), registryOnly()
	for _, tt := range []struct {
		mesh core.MeshConfig
		sc   *index.Sidecar
		want string
	}{
		{allow, nil, core.OutboundAllowAny},
		{only, nil, core.OutboundRegistryOnly},
		{allow, sc(networking.OutboundTrafficPolicy_REGISTRY_ONLY), core.OutboundRegistryOnly},
		{only, sc(networking.OutboundTrafficPolicy_ALLOW_ANY), core.OutboundAllowAny},
		{only, &index.Sidecar{Spec: &networking.Sidecar{}}, core.OutboundRegistryOnly},
		{core.MeshConfig{}, nil, core.OutboundAllowAny},
	} {
		if got := outboundPolicy(tt.mesh, tt.sc); got != tt.want {
			t.Errorf("outboundPolicy(%s, %v) = %s, want %s", tt.mesh.OutboundTrafficPolicy, tt.sc, got, tt.want)
		}
	}
}

func TestL4Matching(t *testing.T) {
	ix := testIndex(t, core.DefaultMeshConfig())
	p := &api.Proxy{Type: api.Sidecar, Namespace: "shop", Labels: map[string]string{"app": "web", "version": "v1"}}
	for _, tt := range []struct {
		name    string
		m       *networking.L4MatchAttributes
		gateway string
		want    bool
	}{
		{"no match", nil, index.MeshGateway, true},
		{"port", &networking.L4MatchAttributes{Port: 3306}, index.MeshGateway, true},
		{"other port", &networking.L4MatchAttributes{Port: 3307}, index.MeshGateway, false},
		{"source labels", &networking.L4MatchAttributes{SourceLabels: map[string]string{"app": "web"}}, index.MeshGateway, true},
		{"other source labels", &networking.L4MatchAttributes{SourceLabels: map[string]string{"app": "db"}}, index.MeshGateway, false},
		{"source namespace", &networking.L4MatchAttributes{SourceNamespace: "shop"}, index.MeshGateway, true},
		{"other source namespace", &networking.L4MatchAttributes{SourceNamespace: "db"}, index.MeshGateway, false},
		{"mesh listed", &networking.L4MatchAttributes{Gateways: []string{"mesh"}}, index.MeshGateway, true},
		{"only a gateway listed", &networking.L4MatchAttributes{Gateways: []string{"edge/gw"}}, index.MeshGateway, false},
		{"gateway by short name", &networking.L4MatchAttributes{Gateways: []string{"gw"}}, "db/gw", true},
		{"gateways ignore source labels", &networking.L4MatchAttributes{SourceLabels: map[string]string{"app": "db"}}, "db/gw", true},
	} {
		if got := l4Applies(ix, tt.m, "db", tt.gateway, 3306, p); got != tt.want {
			t.Errorf("%s: l4Applies = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestDestinationCluster(t *testing.T) {
	ix := testIndex(t, core.DefaultMeshConfig())
	scope := generate.NewScope(ix, productpage, generate.Envoy)
	dest := func(host, subset string, port uint32) *networking.Destination {
		d := &networking.Destination{Host: host, Subset: subset}
		if port != 0 {
			d.Port = &networking.PortSelector{Number: port}
		}
		return d
	}
	for _, tt := range []struct {
		d    *networking.Destination
		want string
	}{
		{dest("reviews", "v1", 0), "outbound|9080|v1|reviews.shop.svc.cluster.local"},                    // the service's only port
		{dest("ratings", "", 0), "outbound|7777||ratings.shop.svc.cluster.local"},                        // two ports: the listener port
		{dest("ratings", "", 9090), "outbound|9090||ratings.shop.svc.cluster.local"},                     // the named port
		{dest("mysql.db.svc.cluster.local", "", 0), "outbound|3306||mysql.db.svc.cluster.local"},         // FQDN
		{dest("unknown.example.com", "", 0), "outbound|7777||unknown.example.com"},                       // not a service
		{dest("private.shop.svc.cluster.local", "", 0), "outbound|8080||private.shop.svc.cluster.local"}, // visible in shop
	} {
		if got := destinationCluster(scope, "shop", tt.d, 7777); got != tt.want {
			t.Errorf("destinationCluster(%v) = %s, want %s", tt.d, got, tt.want)
		}
	}
}
