package envoy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/pilot/generate"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/xds/api"
)

// gwServer is one Gateway server as a gateway proxy serves it.
type gwServer struct {
	gw       *index.Gateway
	s        *networking.Server
	protocol model.Protocol
	// hosts are the server's hosts with "./" and "*/" resolved: ns/host
	// for hosts of one namespace's VirtualServices, host for any.
	hosts []string
	// route is the RDS name of HTTP servers and HTTPS servers that
	// terminate TLS; empty for the others.
	route string
	// sni are the server's host names without namespaces, for SNI matches.
	sni []string
}

// terminatesHTTP reports whether the server ends in an HTTP connection
// manager: plain HTTP, or HTTPS that terminates TLS.
func (s *gwServer) terminatesHTTP() bool { return s.route != "" }

// passthrough reports whether TLS passes through to the destination.
func (s *gwServer) passthrough() bool {
	m := s.s.GetTls().GetMode()
	return s.s.GetTls() != nil && (m == networking.ServerTLSSettings_PASSTHROUGH || m == networking.ServerTLSSettings_AUTO_PASSTHROUGH)
}

// gwPort is one gateway listener: the servers merged on a bind and port.
type gwPort struct {
	bind      string
	port      uint32
	plaintext bool // HTTP or TCP servers without TLS
	servers   []*gwServer
	sni       map[string]bool
}

func (p *gwPort) address() string { return cmp.Or(p.bind, Wildcard) }

// mergedGateway is what a gateway proxy serves: the servers of every
// Gateway that selects it, merged per port as Istio merges them.
type mergedGateway struct {
	ix     *index.Index
	p      *api.Proxy
	scope  *generate.Scope
	ports  []*gwPort
	routes map[string][]*gwServer
	// Rejected lists servers left out and why.
	Rejected []string
}

// mergeGateways merges the servers of the Gateways selecting p. On one
// port, plain HTTP servers share a listener and route http.<port>; TLS
// servers share a listener and are told apart by SNI (duplicate host names
// are rejected); TCP servers and mixes of plain and TLS are rejected after
// the first server.
func mergeGateways(ix *index.Index, p *api.Proxy) *mergedGateway {
	m := &mergedGateway{ix: ix, p: p, scope: generate.NewScope(ix, p, generate.Envoy), routes: map[string][]*gwServer{}}
	byKey := map[string]*gwPort{}
	for _, gw := range ix.GatewaysFor(p.Labels) {
		for i, s := range gw.Spec.GetServers() {
			if s.GetPort() == nil || s.GetPort().GetNumber() == 0 {
				continue
			}
			srv := &gwServer{gw: gw, s: s, protocol: model.ParseProtocol(s.GetPort().GetProtocol()), hosts: sanitizeServerHosts(s.GetHosts(), gw.Object.Namespace)}
			reject := func(why string) {
				m.Rejected = append(m.Rejected, fmt.Sprintf("Gateway %s server %d (port %d): %s", gw.Name(), i, s.GetPort().GetNumber(), why))
			}
			port := s.GetPort().GetNumber()
			tlsServer := s.GetTls() != nil && !srv.protocol.IsHTTP()
			switch {
			case srv.protocol.IsHTTP():
				srv.route = GatewayHTTPRouteName(port, s.GetBind())
			case srv.protocol == model.ProtocolHTTPS && s.GetTls() == nil:
				reject("HTTPS server without tls settings")
				continue
			case srv.protocol == model.ProtocolHTTPS && !srv.passthrough():
				srv.route = GatewayHTTPSRouteName(port, s.GetPort().GetName(), gw.Object.Name, gw.Object.Namespace, s.GetBind())
			}
			if tlsServer {
				srv.sni = serverSNI(srv.hosts)
			}
			key := s.GetBind() + "\x00" + portString(port)
			gp := byKey[key]
			if gp == nil {
				gp = &gwPort{bind: s.GetBind(), port: port, plaintext: !tlsServer, sni: map[string]bool{}}
				byKey[key] = gp
				m.ports = append(m.ports, gp)
			} else {
				switch {
				case gp.plaintext != !tlsServer:
					reject("port already serves " + map[bool]string{true: "plain text", false: "TLS"}[gp.plaintext])
					continue
				case gp.plaintext && (!srv.protocol.IsHTTP() || !gp.servers[0].protocol.IsHTTP()):
					reject("a TCP server cannot share its port")
					continue
				case !gp.plaintext && srv.route != "" && len(m.routes[srv.route]) > 0:
					reject("duplicate HTTPS route " + srv.route)
					continue
				}
			}
			if tlsServer && !srv.passthrough() {
				dup := ""
				for _, h := range srv.sni {
					if gp.sni[h] {
						dup = h
					}
				}
				if dup != "" {
					reject("duplicate host " + dup + " on the port")
					continue
				}
				for _, h := range srv.sni {
					gp.sni[h] = true
				}
			}
			gp.servers = append(gp.servers, srv)
			if srv.route != "" {
				m.routes[srv.route] = append(m.routes[srv.route], srv)
			}
		}
	}
	slices.SortFunc(m.ports, func(a, b *gwPort) int { return cmp.Or(cmp.Compare(a.port, b.port), strings.Compare(a.bind, b.bind)) })
	return m
}

// sanitizeServerHosts resolves "./host" to "<gateway namespace>/host" and
// "*/host" to "host" ("*/*" to "*").
func sanitizeServerHosts(hosts []string, ns string) []string {
	out := make([]string, 0, len(hosts))
	for _, h := range hosts {
		hns, host, ok := strings.Cut(h, "/")
		switch {
		case !ok:
			out = append(out, h)
		case hns == ".":
			out = append(out, ns+"/"+host)
		case hns == "*":
			out = append(out, host)
		default:
			out = append(out, h)
		}
	}
	return out
}

// serverSNI returns a TLS server's host names without namespaces, sorted.
func serverSNI(hosts []string) []string {
	out := make([]string, 0, len(hosts))
	for _, h := range hosts {
		if _, host, ok := strings.Cut(h, "/"); ok {
			h = host
		}
		out = append(out, h)
	}
	return sortedUnique(out)
}

// hostsForNamespace returns the server hosts a VirtualService in ns may
// bind to, without namespaces.
func hostsForNamespace(hosts []string, ns string) []string {
	var out []string
	for _, h := range hosts {
		hns, host, ok := strings.Cut(h, "/")
		switch {
		case !ok:
			out = append(out, h)
		case hns == ns || hns == "*":
			out = append(out, host)
		}
	}
	return out
}

// intersectHosts returns, for each pair of a server host and a
// VirtualService host that match (either may be a wildcard), the more
// specific of the two, deduplicated, lower-cased and in order.
func intersectHosts(server, vs []string) []string {
	var out []string
	add := func(h string) {
		h = strings.ToLower(h)
		if !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	for _, a := range server {
		for _, b := range vs {
			switch {
			case index.HostMatches(a, b):
				add(b)
			case index.HostMatches(b, a):
				add(a)
			}
		}
	}
	return out
}

// gatewayListeners builds one listener per merged port. Ports whose
// servers produce no filter chain (no VirtualService binds them) are left
// out: Envoy refuses a listener without chains.
func (g *Generator) gatewayListeners(m *mergedGateway) []*listenerv3.Listener {
	out := make([]*listenerv3.Listener, 0, len(m.ports))
	for _, gp := range m.ports {
		name := ListenerName(gp.address(), gp.port)
		var chains []*listenerv3.FilterChain
		if gp.plaintext && gp.servers[0].protocol.IsHTTP() {
			s := gp.servers[0]
			c := m.chain(name, gp, s)
			chains = append(chains, &listenerv3.FilterChain{
				Filters: g.httpFilters(c, hcmOptions{statPrefix: "outbound_" + name, rds: s.route}),
			})
		} else {
			for _, s := range gp.servers {
				chains = append(chains, g.gatewayServerChains(m, name, gp, s)...)
			}
		}
		if len(chains) == 0 {
			m.Rejected = append(m.Rejected, fmt.Sprintf("listener %s: no VirtualService routes its servers", name))
			continue
		}
		l := &listenerv3.Listener{
			Name:             name,
			Address:          socketAddress(gp.address(), gp.port),
			TrafficDirection: corev3.TrafficDirection_OUTBOUND,
			FilterChains:     chains,
		}
		l.ListenerFilters = listenerFilters(chains)
		out = append(out, g.finishListener(Gateway, Chain{Proxy: m.p}, l))
	}
	return out
}

func (m *mergedGateway) chain(listener string, gp *gwPort, s *gwServer) Chain {
	return Chain{Class: Gateway, Proxy: m.p, Index: m.ix, Listener: listener, Port: gp.port, Protocol: s.protocol, Server: s.s, Gateway: s.gw.Name()}
}

// gatewayServerChains builds the chains of a TLS or TCP server: HTTPS
// terminating TLS into an HTTP connection manager, TLS passthrough routed
// by SNI from the VirtualServices' tls rules, TLS terminated into a TCP
// proxy, or plain TCP, both routed by the tcp rules.
func (g *Generator) gatewayServerChains(m *mergedGateway, listener string, gp *gwPort, s *gwServer) []*listenerv3.FilterChain {
	c := m.chain(listener, gp, s)
	switch {
	case s.terminatesHTTP():
		statPrefix := s.s.GetName()
		if statPrefix == "" {
			statPrefix = "outbound_" + listener
		}
		return []*listenerv3.FilterChain{{
			FilterChainMatch: &listenerv3.FilterChainMatch{ServerNames: sniNames(s.sni)},
			TransportSocket:  downstreamTLS(serverTLSContext(s.s.GetTls(), true)),
			Filters:          g.httpFilters(c, hcmOptions{statPrefix: statPrefix, rds: s.route}),
		}}
	case s.passthrough():
		return g.passthroughChains(m, c, gp, s)
	}
	vs, clusters := m.tcpRoute(s, gp.port)
	if len(clusters) == 0 {
		return nil
	}
	fc := &listenerv3.FilterChain{
		Filters:  g.tcpProxyFilters(c, l4StatPrefix(vs, clusters), clusters),
		Metadata: configMetadata(vs),
	}
	if s.s.GetTls() != nil {
		fc.FilterChainMatch = &listenerv3.FilterChainMatch{ServerNames: sniNames(s.sni)}
		fc.TransportSocket = downstreamTLS(serverTLSContext(s.s.GetTls(), false))
	}
	return []*listenerv3.FilterChain{fc}
}

// tcpRoute finds the first tcp rule of a VirtualService bound to the
// server's gateway, whose hosts meet the server's, that applies.
func (m *mergedGateway) tcpRoute(s *gwServer, port uint32) (*index.VirtualService, []weightedCluster) {
	gw := s.gw.Name()
	for _, vs := range m.ix.GatewayVirtualServices(gw) {
		if len(intersectHosts(hostsForNamespace(s.hosts, vs.Namespace()), vs.Hosts)) == 0 {
			continue
		}
		for _, rule := range vs.Spec.GetTcp() {
			if len(rule.GetRoute()) == 0 {
				continue
			}
			applies := len(rule.GetMatch()) == 0
			for _, mt := range rule.GetMatch() {
				applies = applies || l4Applies(m.ix, mt, vs.Namespace(), gw, port, m.p)
			}
			if applies {
				return vs, routeClusters(m.scope, vs.Namespace(), rule.GetRoute(), port)
			}
		}
	}
	return nil, nil
}

// passthroughChains routes TLS by SNI without terminating it: one chain
// per tls match of the VirtualServices bound to the server's gateway.
// A host name already matched on the port is skipped.
func (g *Generator) passthroughChains(m *mergedGateway, c Chain, gp *gwPort, s *gwServer) []*listenerv3.FilterChain {
	var out []*listenerv3.FilterChain
	gw := s.gw.Name()
	for _, vs := range m.ix.GatewayVirtualServices(gw) {
		if len(intersectHosts(hostsForNamespace(s.hosts, vs.Namespace()), vs.Hosts)) == 0 {
			continue
		}
		for _, rule := range vs.Spec.GetTls() {
			if len(rule.GetRoute()) == 0 {
				continue
			}
			for _, mt := range rule.GetMatch() {
				if !l4Applies(m.ix, mt, vs.Namespace(), gw, gp.port, m.p) {
					continue
				}
				sni := sniNames(mt.GetSniHosts())
				dup := len(sni) == 0 && gp.sni["*"]
				for _, h := range sni {
					dup = dup || gp.sni[h]
				}
				if dup {
					m.Rejected = append(m.Rejected, fmt.Sprintf("VirtualService %s/%s: duplicate SNI %v on port %d", vs.Namespace(), vs.Object.Name, mt.GetSniHosts(), gp.port))
					continue
				}
				if len(sni) == 0 {
					gp.sni["*"] = true
				}
				for _, h := range sni {
					gp.sni[h] = true
				}
				clusters := routeClusters(m.scope, vs.Namespace(), rule.GetRoute(), gp.port)
				out = append(out, &listenerv3.FilterChain{
					FilterChainMatch: &listenerv3.FilterChainMatch{ServerNames: sni},
					Filters:          g.tcpProxyFilters(c, l4StatPrefix(vs, clusters), clusters),
					Metadata:         configMetadata(vs),
				})
			}
		}
	}
	return out
}

func downstreamTLS(ctx *tlsv3.DownstreamTlsContext) *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name:       wellknown.TransportSocketTLS,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed(ctx)},
	}
}

// serverTLSContext terminates a Gateway server's TLS:
//   - credentialName (or credentialNames): certificate from SDS secret
//     kubernetes://<name> over ADS, client CA from <name>-cacert (or
//     caCertCredentialName) for MUTUAL;
//   - ISTIO_MUTUAL: the gateway's workload certificate (default) and the
//     mesh trust bundle (ROOTCA) from the node agent;
//   - certificate files: file-cert:<cert>~<key> and file-root:<ca> from
//     the node agent.
func serverTLSContext(t *networking.ServerTLSSettings, http bool) *tlsv3.DownstreamTlsContext {
	mode := t.GetMode()
	mutual := mode == networking.ServerTLSSettings_MUTUAL || mode == networking.ServerTLSSettings_ISTIO_MUTUAL
	verify := mutual || mode == networking.ServerTLSSettings_OPTIONAL_MUTUAL
	common := &tlsv3.CommonTlsContext{}
	if http {
		common.AlpnProtocols = []string{"h2", "http/1.1"}
	}
	sds := func(name string, src *corev3.ConfigSource) *tlsv3.SdsSecretConfig {
		return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: src}
	}
	var caSecret *tlsv3.SdsSecretConfig
	creds := t.GetCredentialNames()
	if len(creds) == 0 && t.GetCredentialName() != "" {
		creds = []string{t.GetCredentialName()}
	}
	switch {
	case mode == networking.ServerTLSSettings_ISTIO_MUTUAL:
		common.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{sds(WorkloadSecret, agentSDSSource())}
		caSecret = sds(RootSecret, agentSDSSource())
	case len(creds) > 0:
		for _, cn := range creds {
			name := CredentialSecretName(cn)
			src := credentialSource()
			if name == WorkloadSecret {
				src = agentSDSSource()
			}
			common.TlsCertificateSdsSecretConfigs = append(common.TlsCertificateSdsSecretConfigs, sds(name, src))
		}
		if verify {
			ca := CredentialCASecretName(creds[0])
			if t.GetCaCertCredentialName() != "" {
				ca = CredentialSecretName(t.GetCaCertCredentialName())
			}
			caSecret = sds(ca, credentialSource())
		}
	default:
		common.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{
			sds(FileCertSecretName(t.GetServerCertificate(), t.GetPrivateKey()), agentSDSSource()),
		}
		if verify && t.GetCaCertificates() != "" {
			caSecret = sds(FileRootSecretName(t.GetCaCertificates()), agentSDSSource())
		}
	}
	if verify && caSecret != nil {
		dflt := &tlsv3.CertificateValidationContext{
			VerifyCertificateSpki: t.GetVerifyCertificateSpki(),
			VerifyCertificateHash: t.GetVerifyCertificateHash(),
		}
		for _, san := range t.GetSubjectAltNames() {
			st := tlsv3.SubjectAltNameMatcher_DNS
			if strings.Contains(san, "://") {
				st = tlsv3.SubjectAltNameMatcher_URI
			}
			dflt.MatchTypedSubjectAltNames = append(dflt.MatchTypedSubjectAltNames, &tlsv3.SubjectAltNameMatcher{
				SanType: st,
				Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: san}},
			})
		}
		common.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         dflt,
				ValidationContextSdsSecretConfig: caSecret,
			},
		}
	}
	if min, max := t.GetMinProtocolVersion(), t.GetMaxProtocolVersion(); min != networking.ServerTLSSettings_TLS_AUTO || max != networking.ServerTLSSettings_TLS_AUTO || len(t.GetCipherSuites()) > 0 {
		common.TlsParams = &tlsv3.TlsParameters{
			TlsMinimumProtocolVersion: tlsv3.TlsParameters_TlsProtocol(min),
			TlsMaximumProtocolVersion: tlsv3.TlsParameters_TlsProtocol(max),
			CipherSuites:              t.GetCipherSuites(),
		}
	}
	return &tlsv3.DownstreamTlsContext{
		CommonTlsContext: common,
		// Envoy refuses to require a client certificate it cannot verify.
		RequireClientCertificate: wrapperspb.Bool(mutual && caSecret != nil),
	}
}

// gatewayRoutes builds a route configuration per RDS name the listeners
// use: a virtual host per host name where a server's hosts meet those of a
// VirtualService bound to its Gateway; httpsRedirect servers require TLS
// on theirs. A configuration with no virtual host gets a blackhole one so
// requests get 404 rather than an RDS error.
func (g *Generator) gatewayRoutes(m *mergedGateway) []*routev3.RouteConfiguration {
	names := make([]string, 0, len(m.routes))
	for n := range m.routes {
		names = append(names, n)
	}
	slices.Sort(names)
	out := make([]*routev3.RouteConfiguration, 0, len(names))
	for _, name := range names {
		out = append(out, g.gatewayRouteConfig(m, name, m.routes[name]))
	}
	return out
}

func (g *Generator) gatewayRouteConfig(m *mergedGateway, name string, servers []*gwServer) *routev3.RouteConfiguration {
	vhosts := map[string]*routev3.VirtualHost{}
	var order []string
	port := servers[0].s.GetPort().GetNumber()
	proto := servers[0].protocol
	if proto == model.ProtocolHTTPS {
		proto = model.ProtocolHTTP // terminated here
	}
	translated := map[*index.VirtualService][]*routev3.Route{}
	for _, s := range servers {
		gw := s.gw.Name()
		redirect := s.s.GetTls().GetHttpsRedirect()
		for _, vs := range m.ix.GatewayVirtualServices(gw) {
			hosts := intersectHosts(hostsForNamespace(s.hosts, vs.Namespace()), vs.Hosts)
			if len(hosts) == 0 {
				continue
			}
			routes, ok := translated[vs]
			if !ok {
				routes = generate.HTTPRoutes(m.scope, vs, port, proto, gw)
				translated[vs] = routes
			}
			if len(routes) == 0 {
				continue // only tcp or tls rules, or none that apply here
			}
			for _, h := range hosts {
				vh := vhosts[h]
				if vh == nil {
					vh = &routev3.VirtualHost{Name: VirtualHostName(h, port), Domains: []string{h}}
					vhosts[h] = vh
					order = append(order, h)
				}
				vh.Routes = append(vh.Routes, routes...)
				if redirect {
					vh.RequireTls = routev3.VirtualHost_ALL
				}
			}
		}
		if redirect {
			for _, h := range serverSNI(s.hosts) {
				h = strings.ToLower(h)
				if vh := vhosts[h]; vh != nil {
					vh.RequireTls = routev3.VirtualHost_ALL
					continue
				}
				vhosts[h] = &routev3.VirtualHost{Name: VirtualHostName(h, port), Domains: []string{h}, RequireTls: routev3.VirtualHost_ALL}
				order = append(order, h)
			}
		}
	}
	var list []*routev3.VirtualHost
	for _, h := range order {
		list = append(list, vhosts[h])
	}
	if len(list) == 0 {
		list = []*routev3.VirtualHost{{Name: VirtualHostName("blackhole", port), Domains: []string{"*"}}}
	}
	slices.SortFunc(list, func(a, b *routev3.VirtualHost) int { return strings.Compare(a.GetName(), b.GetName()) })
	return &routev3.RouteConfiguration{
		Name:                           name,
		VirtualHosts:                   list,
		ValidateClusters:               wrapperspb.Bool(false),
		IgnorePortInHostMatching:       true,
		MaxDirectResponseBodySizeBytes: wrapperspb.UInt32(maxDirectResponseBody),
	}
}
