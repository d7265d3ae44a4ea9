package envoy

import (
	"cmp"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/pilot/generate"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/xds/api"
)

// svcPort is a service port as a sidecar's outbound side exposes it: on
// listenPort with protocol (the service port's own, unless a Sidecar
// egress listener declares a port).
type svcPort struct {
	svc        *model.Service
	port       model.Port
	listenPort uint32
	protocol   model.Protocol
}

func (sp svcPort) cluster() string { return index.ClusterName(sp.port.Number, "", sp.svc.Hostname) }

func isTLS(p model.Protocol) bool { return p == model.ProtocolTLS || p == model.ProtocolHTTPS }

// sidecarView is what one sidecar sees, computed the same way for its
// listeners and its routes so that every route name a listener names
// exists.
type sidecarView struct {
	ix *index.Index
	p  *api.Proxy
	// scope is the shared generators' view of the same proxy, for route
	// translation and destination lookups.
	scope    *generate.Scope
	ns       string
	sc       *index.Sidecar
	allowAny bool
	// byHost holds every service the proxy sees.
	byHost map[string]*model.Service
	// http holds the HTTP services per outbound port, sorted by host.
	http      map[uint32][]svcPort
	httpPorts []uint32
	// l4 holds the TCP and TLS service ports, sorted by port then host.
	l4 []svcPort
	// problems lists what the listeners had to leave out, and why.
	problems []string
}

func newSidecarView(ix *index.Index, p *api.Proxy) *sidecarView {
	scope := generate.NewScope(ix, p, generate.Envoy)
	v := &sidecarView{
		ix:     ix,
		p:      p,
		scope:  scope,
		ns:     scope.Namespace,
		sc:     scope.Sidecar,
		byHost: map[string]*model.Service{},
		http:   map[uint32][]svcPort{},
	}
	v.allowAny = outboundPolicy(ix.Mesh, v.sc) != core.OutboundRegistryOnly
	type seenKey struct {
		host string
		port uint32
	}
	// Only several egress listeners can offer a service port twice.
	var seen map[seenKey]bool
	egress := egressOf(v.sc)
	if len(egress) > 1 {
		seen = map[seenKey]bool{}
	}
	add := func(sp svcPort) {
		if seen != nil {
			key := seenKey{sp.svc.Hostname, sp.listenPort}
			if seen[key] {
				return
			}
			seen[key] = true
		}
		v.byHost[sp.svc.Hostname] = sp.svc
		if sp.protocol.IsHTTP() {
			v.http[sp.listenPort] = append(v.http[sp.listenPort], sp)
		} else {
			v.l4 = append(v.l4, sp)
		}
	}
	if len(egress) == 0 {
		services := ix.Services(v.ns, v.sc)
		v.byHost = make(map[string]*model.Service, len(services))
		for _, s := range services {
			for _, port := range s.Ports {
				add(svcPort{svc: s, port: port, listenPort: port.Number, protocol: port.Protocol})
			}
		}
	} else {
		// Egress listeners with a port come first and own their port; a
		// listener without one (at most one, last) adds every other port.
		all := ix.Services(v.ns, nil)
		locked := map[uint32]bool{}
		for _, l := range egress {
			n := l.GetPort().GetNumber()
			if n == 0 {
				continue
			}
			proto := model.ParseProtocol(l.GetPort().GetProtocol())
			for _, s := range all {
				if !index.EgressHostsAllow(l.GetHosts(), v.ns, s.Namespace, s.Hostname) {
					continue
				}
				port, ok := s.Port(n)
				if !ok && len(s.Ports) == 1 {
					port, ok = s.Ports[0], true
				}
				if ok {
					add(svcPort{svc: s, port: port, listenPort: n, protocol: proto})
				}
			}
			locked[n] = true
		}
		for _, l := range egress {
			if l.GetPort().GetNumber() != 0 {
				continue
			}
			for _, s := range all {
				if !index.EgressHostsAllow(l.GetHosts(), v.ns, s.Namespace, s.Hostname) {
					continue
				}
				for _, port := range s.Ports {
					if !locked[port.Number] {
						add(svcPort{svc: s, port: port, listenPort: port.Number, protocol: port.Protocol})
					}
				}
			}
		}
	}
	for port, sps := range v.http {
		if reservedPort(port) {
			continue // HTTP listeners are always on the wildcard address
		}
		slices.SortFunc(sps, func(a, b svcPort) int { return strings.Compare(a.svc.Hostname, b.svc.Hostname) })
		v.httpPorts = append(v.httpPorts, port)
	}
	slices.Sort(v.httpPorts)
	slices.SortFunc(v.l4, func(a, b svcPort) int {
		return cmp.Or(cmp.Compare(a.listenPort, b.listenPort), strings.Compare(a.svc.Hostname, b.svc.Hostname))
	})
	return v
}

// proxyNamespace is the namespace a proxy's config is scoped by: its own,
// or "default" when it names none, as the shared generators assume.
func proxyNamespace(p *api.Proxy) string {
	if p.Namespace == "" {
		return "default"
	}
	return p.Namespace
}

// egressOf returns a Sidecar's egress listeners; nil for no Sidecar.
func egressOf(sc *index.Sidecar) []*networking.IstioEgressListener {
	if sc == nil {
		return nil
	}
	return sc.Spec.GetEgress()
}

// outboundPolicy is the Sidecar's outboundTrafficPolicy mode when it sets
// one, else the mesh's.
func outboundPolicy(mesh core.MeshConfig, sc *index.Sidecar) string {
	if sc != nil {
		if p := sc.Spec.GetOutboundTrafficPolicy(); p != nil {
			return p.GetMode().String()
		}
	}
	if mesh.OutboundTrafficPolicy == "" {
		return core.OutboundAllowAny
	}
	return mesh.OutboundTrafficPolicy
}

// inboundPort is one port the workload receives traffic on.
type inboundPort struct {
	// port is where traffic arrives (the endpoint's port); it names the
	// filter chain and the inbound|PORT|| cluster.
	port     uint32
	protocol model.Protocol
	// endpointAddr:endpointPort is where the inbound cluster sends it.
	endpointAddr string
	endpointPort uint32
	// service is the first service that declares the port, if any.
	service *model.Service
}

// inboundPorts returns the workload's ports, sorted: those of the
// Sidecar's ingress listeners when it has any, otherwise those of the
// services whose endpoints have the proxy's addresses (the first service,
// by host name, decides a port's protocol).
func inboundPorts(ix *index.Index, p *api.Proxy) []inboundPort {
	targets := ix.ServiceTargets(p.IPs)
	var out []inboundPort
	seen := map[uint32]bool{}
	if sc := ix.SidecarFor(proxyNamespace(p), p.Labels); sc != nil && len(sc.Spec.GetIngress()) > 0 {
		for _, in := range sc.Spec.GetIngress() {
			n := in.GetPort().GetNumber()
			if n == 0 || seen[n] || reservedPort(n) {
				continue
			}
			addr, port, ok := parseDefaultEndpoint(in.GetDefaultEndpoint(), n)
			if !ok {
				continue
			}
			seen[n] = true
			ip := inboundPort{port: n, protocol: model.ParseProtocol(in.GetPort().GetProtocol()), endpointAddr: addr, endpointPort: port}
			for _, t := range targets {
				if t.Endpoint.Port == n {
					ip.service = t.Service
					break
				}
			}
			out = append(out, ip)
		}
	} else {
		for _, t := range targets {
			n := t.Endpoint.Port
			if n == 0 || seen[n] || reservedPort(n) {
				continue
			}
			seen[n] = true
			out = append(out, inboundPort{port: n, protocol: t.Port.Protocol, endpointAddr: loopback, endpointPort: n, service: t.Service})
		}
	}
	slices.SortFunc(out, func(a, b inboundPort) int { return cmp.Compare(a.port, b.port) })
	return out
}

const loopback = "127.0.0.1"

// parseDefaultEndpoint reads a Sidecar ingress defaultEndpoint
// (127.0.0.1:8080, 0.0.0.0:8080, [::1]:8080). Unix sockets are not
// supported; an empty endpoint means loopback on the ingress port.
func parseDefaultEndpoint(s string, port uint32) (string, uint32, bool) {
	if s == "" {
		return loopback, port, true
	}
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, false
	}
	n, err := strconv.ParseUint(ps, 10, 32)
	if err != nil || n == 0 {
		return "", 0, false
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return "", 0, false
	}
	if a.IsUnspecified() {
		// 0.0.0.0 means "the workload's address"; loopback reaches it from
		// inside the workload's network namespace.
		return loopback, uint32(n), true
	}
	return a.String(), uint32(n), true
}
