package envoy

import (
	"net/netip"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
)

func (g *Generator) sidecarListeners(v *sidecarView) []*listenerv3.Listener {
	out := []*listenerv3.Listener{g.virtualOutbound(v), g.virtualInbound(v)}
	return append(out, g.outboundListeners(v)...)
}

// egressCluster is where traffic to unknown destinations goes.
func (v *sidecarView) egressCluster() string {
	if v.allowAny {
		return PassthroughCluster
	}
	return BlackHoleCluster
}

func (g *Generator) catchAllChain(v *sidecarView, listener, name string, port uint32, match *listenerv3.FilterChainMatch, cluster string) *listenerv3.FilterChain {
	c := Chain{Class: SidecarOutbound, Proxy: v.p, Index: v.ix, Listener: listener, Port: port, Protocol: model.ProtocolTCP, Passthrough: true}
	return &listenerv3.FilterChain{
		Name:             name,
		FilterChainMatch: match,
		Filters:          g.tcpProxyFilters(c, cluster, []weightedCluster{{name: cluster}}),
	}
}

// virtualOutbound receives every outbound connection the workload makes
// and hands it to the listener of its original destination; what no
// listener takes goes to the passthrough or the black hole. Connections
// to 15001 itself would loop and go to the black hole.
func (g *Generator) virtualOutbound(v *sidecarView) *listenerv3.Listener {
	name := VirtualOutboundListener
	l := &listenerv3.Listener{
		Name:             name,
		Address:          socketAddress(Wildcard, VirtualOutboundPort),
		UseOriginalDst:   wrapperspb.Bool(true),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		FilterChains: []*listenerv3.FilterChain{
			g.catchAllChain(v, name, VirtualOutboundBlackholeChain, VirtualOutboundPort,
				&listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(VirtualOutboundPort)}, BlackHoleCluster),
			g.catchAllChain(v, name, VirtualOutboundCatchAllChain, VirtualOutboundPort, nil, v.egressCluster()),
		},
	}
	return g.finishListener(SidecarOutbound, Chain{Proxy: v.p}, l)
}

// outEntry collects the filter chains of one outbound listener.
type outEntry struct {
	v          *sidecarView
	name       string
	bind       string
	port       uint32
	http       bool
	chains     []*listenerv3.FilterChain
	fallback   *listenerv3.FilterChain
	matchTaken map[string]bool
}

func matchKey(m *listenerv3.FilterChainMatch) string {
	var b strings.Builder
	for _, s := range m.GetServerNames() {
		b.WriteString(s)
		b.WriteByte(',')
	}
	b.WriteByte('|')
	for _, r := range m.GetPrefixRanges() {
		b.WriteString(r.GetAddressPrefix())
		b.WriteByte('/')
		b.WriteString(r.GetPrefixLen().String())
		b.WriteByte(',')
	}
	return b.String()
}

// add adds a chain unless one with the same match is there (the first
// wins, as in Istio; what describes the loser for Problems). Chains that
// match everything become the fallback.
func (e *outEntry) add(fc *listenerv3.FilterChain, what string) {
	if fc.GetFilterChainMatch() == nil || (len(fc.GetFilterChainMatch().GetServerNames()) == 0 && len(fc.GetFilterChainMatch().GetPrefixRanges()) == 0) {
		if e.fallback != nil {
			e.v.problems = append(e.v.problems, "listener "+e.name+": "+what+" left out: the port already forwards everything elsewhere (give the service an address)")
			return
		}
		fc.FilterChainMatch = nil
		e.fallback = fc
		return
	}
	k := matchKey(fc.GetFilterChainMatch())
	if e.matchTaken[k] {
		e.v.problems = append(e.v.problems, "listener "+e.name+": "+what+" left out: an earlier chain has the same match")
		return
	}
	e.matchTaken[k] = true
	e.chains = append(e.chains, fc)
}

// outboundListeners builds a listener per outbound port: 0.0.0.0_<port>
// for HTTP ports (the HTTP chain matches plaintext HTTP, the rest falls
// through), for TLS ports (SNI chains) and TCP ports of services without
// an address; <address>_<port> for TCP and TLS services with one.
func (g *Generator) outboundListeners(v *sidecarView) []*listenerv3.Listener {
	entries := map[string]*outEntry{}
	var order []*outEntry
	entry := func(bind string, port uint32) *outEntry {
		name := ListenerName(bind, port)
		if e := entries[name]; e != nil {
			return e
		}
		e := &outEntry{v: v, name: name, bind: bind, port: port, matchTaken: map[string]bool{}}
		entries[name] = e
		order = append(order, e)
		return e
	}
	for _, port := range v.httpPorts {
		entry(Wildcard, port).http = true
	}
	for _, sp := range v.l4 {
		bind, cidr := listenAddress(sp.svc)
		if bind == Wildcard && reservedPort(sp.listenPort) {
			v.problems = append(v.problems, "service "+sp.svc.Hostname+" port "+portString(sp.listenPort)+" left out: Envoy uses the port itself")
			continue
		}
		e := entry(bind, sp.listenPort)
		if isTLS(sp.protocol) {
			g.tlsChains(v, e, sp, cidr)
		} else {
			g.tcpChains(v, e, sp, cidr)
		}
	}
	out := make([]*listenerv3.Listener, 0, len(order))
	for _, e := range order {
		out = append(out, g.outboundListener(v, e))
	}
	return out
}

// listenAddress is where a TCP or TLS service's listener binds: its first
// address when that is an IP, else the wildcard (with the address as a
// destination prefix when it is a CIDR).
func listenAddress(svc *model.Service) (bind string, cidr *corev3.CidrRange) {
	if len(svc.Addresses) == 0 {
		return Wildcard, nil
	}
	a := svc.Addresses[0]
	if p, err := netip.ParsePrefix(a); err == nil {
		if p.Bits() == p.Addr().BitLen() {
			return p.Addr().String(), nil
		}
		return Wildcard, &corev3.CidrRange{AddressPrefix: p.Masked().Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}
	}
	if ip, err := netip.ParseAddr(a); err == nil && !ip.IsUnspecified() {
		return ip.String(), nil
	}
	return Wildcard, nil
}

func cidrRanges(subnets []string) []*corev3.CidrRange {
	var out []*corev3.CidrRange
	for _, s := range subnets {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, &corev3.CidrRange{AddressPrefix: p.Masked().Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))})
		} else if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, &corev3.CidrRange{AddressPrefix: ip.String(), PrefixLen: wrapperspb.UInt32(uint32(ip.BitLen()))})
		}
	}
	return out
}

func withCIDR(cidr *corev3.CidrRange) []*corev3.CidrRange {
	if cidr == nil {
		return nil
	}
	return []*corev3.CidrRange{cidr}
}

// tlsChains adds the chains of a TLS service port: one per matching tls
// rule of its VirtualServices (by SNI), else one to the service itself,
// matched by its host name on the shared wildcard listener.
func (g *Generator) tlsChains(v *sidecarView, e *outEntry, sp svcPort, cidr *corev3.CidrRange) {
	c := Chain{Class: SidecarOutbound, Proxy: v.p, Index: v.ix, Listener: e.name, Port: e.port, Protocol: sp.protocol, Service: sp.svc}
	matched := false
	for _, vs := range v.ix.MeshVirtualServices(v.ns, sp.svc.Hostname) {
		for _, rule := range vs.Spec.GetTls() {
			if len(rule.GetRoute()) == 0 {
				continue
			}
			for _, m := range rule.GetMatch() {
				if !l4Applies(v.ix, m, vs.Namespace(), index.MeshGateway, sp.listenPort, v.p) {
					continue
				}
				clusters := routeClusters(v.scope, vs.Namespace(), rule.GetRoute(), sp.listenPort)
				match := &listenerv3.FilterChainMatch{ServerNames: sniNames(m.GetSniHosts()), PrefixRanges: withCIDR(cidr)}
				if subnets := cidrRanges(m.GetDestinationSubnets()); len(subnets) > 0 {
					match.PrefixRanges = subnets
				}
				e.add(&listenerv3.FilterChain{
					FilterChainMatch: match,
					Filters:          g.tcpProxyFilters(c, l4StatPrefix(vs, clusters), clusters),
					Metadata:         configMetadata(vs),
				}, "tls route of VirtualService "+vs.Namespace()+"/"+vs.Object.Name)
				matched = true
			}
		}
	}
	if matched {
		return
	}
	match := &listenerv3.FilterChainMatch{PrefixRanges: withCIDR(cidr)}
	if e.bind == Wildcard {
		match.ServerNames = sniNames([]string{sp.svc.Hostname})
	}
	e.add(&listenerv3.FilterChain{
		FilterChainMatch: match,
		Filters:          g.tcpProxyFilters(c, sp.cluster(), []weightedCluster{{name: sp.cluster()}}),
	}, "TLS service "+sp.svc.Hostname)
}

// sniNames returns the SNI names to match: none when "*" is among them.
func sniNames(hosts []string) []string {
	for _, h := range hosts {
		if h == "*" {
			return nil
		}
	}
	return sortedUnique(hosts)
}

// tcpChains adds the chains of a TCP service port: its VirtualServices'
// first tcp rule that applies (rules with destinationSubnets add a chain
// per subnet and keep looking), else one to the service itself.
func (g *Generator) tcpChains(v *sidecarView, e *outEntry, sp svcPort, cidr *corev3.CidrRange) {
	c := Chain{Class: SidecarOutbound, Proxy: v.p, Index: v.ix, Listener: e.name, Port: e.port, Protocol: sp.protocol, Service: sp.svc}
	what := func(vs *index.VirtualService) string {
		return "tcp route of VirtualService " + vs.Namespace() + "/" + vs.Object.Name + " for " + sp.svc.Hostname
	}
	for _, vs := range v.ix.MeshVirtualServices(v.ns, sp.svc.Hostname) {
		for _, rule := range vs.Spec.GetTcp() {
			if len(rule.GetRoute()) == 0 {
				continue
			}
			clusters := routeClusters(v.scope, vs.Namespace(), rule.GetRoute(), sp.listenPort)
			chain := func(ranges []*corev3.CidrRange) *listenerv3.FilterChain {
				return &listenerv3.FilterChain{
					FilterChainMatch: &listenerv3.FilterChainMatch{PrefixRanges: ranges},
					Filters:          g.tcpProxyFilters(c, l4StatPrefix(vs, clusters), clusters),
					Metadata:         configMetadata(vs),
				}
			}
			if len(rule.GetMatch()) == 0 {
				e.add(chain(withCIDR(cidr)), what(vs))
				return
			}
			for _, m := range rule.GetMatch() {
				if !l4Applies(v.ix, m, vs.Namespace(), index.MeshGateway, sp.listenPort, v.p) {
					continue
				}
				subnets := cidrRanges(m.GetDestinationSubnets())
				if len(subnets) == 0 {
					e.add(chain(withCIDR(cidr)), what(vs))
					return
				}
				e.add(chain(subnets), what(vs))
			}
		}
	}
	e.add(&listenerv3.FilterChain{
		FilterChainMatch: &listenerv3.FilterChainMatch{PrefixRanges: withCIDR(cidr)},
		Filters:          g.tcpProxyFilters(c, sp.cluster(), []weightedCluster{{name: sp.cluster()}}),
	}, "TCP service "+sp.svc.Hostname)
}

func (g *Generator) outboundListener(v *sidecarView, e *outEntry) *listenerv3.Listener {
	l := &listenerv3.Listener{
		Name:                             e.name,
		Address:                          socketAddress(e.bind, e.port),
		BindToPort:                       wrapperspb.Bool(false),
		TrafficDirection:                 corev3.TrafficDirection_OUTBOUND,
		ContinueOnListenerFiltersTimeout: true,
		ListenerFiltersTimeout:           durationpb.New(0),
	}
	if e.http {
		c := Chain{Class: SidecarOutbound, Proxy: v.p, Index: v.ix, Listener: e.name, Port: e.port, Protocol: model.ProtocolHTTP}
		l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{
			FilterChainMatch: &listenerv3.FilterChainMatch{
				TransportProtocol:    rawBufferTransport,
				ApplicationProtocols: plaintextHTTPALPNs,
			},
			Filters: g.httpFilters(c, hcmOptions{
				statPrefix: "outbound_" + e.name,
				rds:        SidecarRouteName(e.port),
			}),
		})
	}
	l.FilterChains = append(l.FilterChains, e.chains...)
	switch {
	case e.fallback != nil && len(l.FilterChains) == 0:
		l.FilterChains = []*listenerv3.FilterChain{e.fallback}
	case e.fallback != nil:
		l.DefaultFilterChain = e.fallback
	default:
		l.DefaultFilterChain = g.catchAllChain(v, e.name, PassthroughFilterChain, e.port, nil, v.egressCluster())
	}
	l.ListenerFilters = listenerFilters(l.FilterChains)
	return g.finishListener(SidecarOutbound, Chain{Proxy: v.p}, l)
}

// virtualInbound receives every connection to the workload: a chain per
// workload port (to its inbound cluster), a passthrough chain for ports no
// service declares, and the black hole for 15006 itself.
func (g *Generator) virtualInbound(v *sidecarView) *listenerv3.Listener {
	name := VirtualInboundListener
	passthrough := Chain{Class: SidecarInbound, Proxy: v.p, Index: v.ix, Listener: name, Port: VirtualInboundPort, Protocol: model.ProtocolTCP, Passthrough: true}
	chains := []*listenerv3.FilterChain{{
		Name:             VirtualInboundBlackholeChain,
		FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(VirtualInboundPort)},
		Filters:          g.tcpProxyFilters(passthrough, BlackHoleCluster, []weightedCluster{{name: BlackHoleCluster}}),
	}}
	for _, m := range g.passthroughMatches(passthrough) {
		fc := &listenerv3.FilterChain{
			Name:            VirtualInboundPassthroughChain + m.NameSuffix,
			Filters:         g.tcpProxyFilters(passthrough, InboundPassthroughCluster, []weightedCluster{{name: InboundPassthroughCluster}}),
			TransportSocket: m.TransportSocket,
		}
		if m.TransportProtocol != "" || len(m.ApplicationProtocols) > 0 {
			fc.FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: m.TransportProtocol, ApplicationProtocols: m.ApplicationProtocols}
		}
		chains = append(chains, fc)
	}
	for _, in := range inboundPorts(v.ix, v.p) {
		chains = append(chains, g.inboundChains(v, in)...)
	}
	l := &listenerv3.Listener{
		Name:                             name,
		Address:                          socketAddress(Wildcard, VirtualInboundPort),
		TrafficDirection:                 corev3.TrafficDirection_INBOUND,
		ContinueOnListenerFiltersTimeout: true,
		ListenerFiltersTimeout:           durationpb.New(0),
		FilterChains:                     chains,
	}
	l.ListenerFilters = listenerFilters(chains, origDstFilter)
	return g.finishListener(SidecarInbound, Chain{Proxy: v.p}, l)
}

// passthroughMatches asks the extensions how the inbound passthrough is
// reached: one plaintext chain unless one says otherwise.
func (g *Generator) passthroughMatches(c Chain) []InboundMatch {
	for _, e := range g.ext {
		if x, ok := e.(InboundPassthroughExtension); ok {
			if m := x.PassthroughMatches(c); len(m) > 0 {
				return m
			}
		}
	}
	return []InboundMatch{{}}
}

// inboundChains builds a workload port's chains: one per way traffic may
// arrive (plaintext unless an InboundTLSExtension says otherwise), each an
// HTTP connection manager with an inline route to inbound|PORT|| for HTTP
// ports, else a TCP proxy to it.
func (g *Generator) inboundChains(v *sidecarView, in inboundPort) []*listenerv3.FilterChain {
	name := ListenerName(Wildcard, in.port)
	cluster := inboundClusterName(in.port)
	c := Chain{Class: SidecarInbound, Proxy: v.p, Index: v.ix, Listener: VirtualInboundListener, Port: in.port, Protocol: in.protocol, Service: in.service}
	matches := []InboundMatch{{}}
	for _, e := range g.ext {
		if x, ok := e.(InboundTLSExtension); ok {
			if m := x.InboundMatches(c); len(m) > 0 {
				matches = m
				break
			}
		}
	}
	out := make([]*listenerv3.FilterChain, 0, len(matches))
	for _, m := range matches {
		var filters []*listenerv3.Filter
		if in.protocol.IsHTTP() {
			filters = g.httpFilters(c, hcmOptions{
				statPrefix:  "inbound_" + name,
				routeConfig: inboundRouteConfig(in, cluster),
				http2:       in.protocol.IsHTTP2(),
			})
		} else {
			filters = g.tcpProxyFilters(c, cluster, []weightedCluster{{name: cluster}})
		}
		out = append(out, &listenerv3.FilterChain{
			Name: name + m.NameSuffix,
			FilterChainMatch: &listenerv3.FilterChainMatch{
				DestinationPort:      wrapperspb.UInt32(in.port),
				TransportProtocol:    m.TransportProtocol,
				ApplicationProtocols: m.ApplicationProtocols,
			},
			Filters:         filters,
			TransportSocket: m.TransportSocket,
		})
	}
	return out
}

// inboundRouteConfig routes every request on an inbound HTTP port to the
// workload, with no timeout of its own.
func inboundRouteConfig(in inboundPort, cluster string) *routev3.RouteConfiguration {
	op := ":" + portString(in.port) + "/*"
	if in.service != nil {
		op = in.service.Hostname + op
	}
	return &routev3.RouteConfiguration{
		Name:             cluster,
		ValidateClusters: wrapperspb.Bool(false),
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    InboundVirtualHostName(in.port),
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Name:      "default",
				Match:     &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action:    &routev3.Route_Route{Route: noTimeoutAction(cluster)},
				Decorator: &routev3.Decorator{Operation: op},
			}},
		}},
	}
}

// noTimeoutAction routes to cluster with Envoy's 15 s default timeout and
// gRPC's timeout header both turned off, as Istio does for routes without
// a VirtualService timeout.
func noTimeoutAction(cluster string) *routev3.RouteAction {
	return &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
		Timeout:          durationpb.New(0),
		MaxStreamDuration: &routev3.RouteAction_MaxStreamDuration{
			MaxStreamDuration:    durationpb.New(0),
			GrpcTimeoutHeaderMax: durationpb.New(0),
		},
	}
}
