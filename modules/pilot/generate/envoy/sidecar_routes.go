package envoy

import (
	"slices"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/modules/pilot/generate"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
)

func portString(p uint32) string { return strconv.FormatUint(uint64(p), 10) }

// maxDirectResponseBody is Istio's limit on direct_response bodies (1 MiB).
const maxDirectResponseBody = 1 << 20

// sidecarRoutes returns one route configuration per outbound HTTP port,
// named by the port: a virtual host per service on the port (the routes of
// its VirtualService, or one default route to outbound|PORT||HOST), the
// VirtualServices' other host names, and the allow_any or block_all
// catch-all last.
func (g *Generator) sidecarRoutes(v *sidecarView) []*routev3.RouteConfiguration {
	extra := v.virtualServiceOnlyHosts()
	out := make([]*routev3.RouteConfiguration, 0, len(v.httpPorts))
	for _, port := range v.httpPorts {
		out = append(out, g.sidecarRouteConfig(v, port, extra))
	}
	return out
}

// vsHost is a VirtualService host name that is not a service.
type vsHost struct {
	host string
	vs   *index.VirtualService
}

// virtualServiceOnlyHosts returns, per mesh VirtualService the proxy sees,
// its exact host names that name no service the proxy sees. They get
// virtual hosts of their own next to the services the VirtualService
// routes, or on port 80 when it matches no service, as in Istio.
func (v *sidecarView) virtualServiceOnlyHosts() map[*index.VirtualService][]string {
	out := map[*index.VirtualService][]string{}
	for _, vs := range v.ix.MeshVirtualServicesIn(v.ns) {
		for _, h := range vs.Hosts {
			if strings.HasPrefix(h, "*") || v.byHost[h] != nil {
				continue
			}
			if sc := v.sc; sc != nil && len(sc.Spec.GetEgress()) > 0 && !egressAllowsAny(sc, v.ns, vs.Namespace(), h) {
				continue
			}
			out[vs] = append(out[vs], strings.ToLower(h))
		}
	}
	return out
}

func egressAllowsAny(sc *index.Sidecar, ns, vsNS, host string) bool {
	for _, l := range sc.Spec.GetEgress() {
		if index.EgressHostsAllow(l.GetHosts(), ns, vsNS, host) {
			return true
		}
	}
	return false
}

func (g *Generator) sidecarRouteConfig(v *sidecarView, port uint32, extra map[*index.VirtualService][]string) *routev3.RouteConfiguration {
	domains := make(map[string]bool, 6*len(v.http[port])+1)
	vhosts := make([]*routev3.VirtualHost, 0, len(v.http[port])+1)
	add := func(name string, ds []string, routes []*routev3.Route) {
		kept := ds[:0:0]
		for _, d := range ds {
			if k := strings.ToLower(d); !domains[k] {
				domains[k] = true
				kept = append(kept, d)
			}
		}
		if len(kept) > 0 {
			vhosts = append(vhosts, &routev3.VirtualHost{Name: name, Domains: kept, Routes: routes})
		}
	}
	type translation struct {
		vs    *index.VirtualService
		proto model.Protocol
	}
	translated := map[translation][]*routev3.Route{}
	routesOf := func(vs *index.VirtualService, proto model.Protocol) []*routev3.Route {
		k := translation{vs, proto}
		r, ok := translated[k]
		if !ok {
			r = generate.HTTPRoutes(v.scope, vs, port, proto, index.MeshGateway)
			translated[k] = r
		}
		return r
	}
	var used []*index.VirtualService
	for _, sp := range v.http[port] {
		host := sp.svc.Hostname
		var routes []*routev3.Route
		if vs := v.ix.VirtualServiceFor(v.ns, host); vs != nil {
			if routes = routesOf(vs, sp.protocol); len(routes) > 0 && !slices.Contains(used, vs) {
				used = append(used, vs)
			}
		}
		if len(routes) == 0 {
			routes = []*routev3.Route{generate.DefaultRoute(v.scope, sp.svc, sp.port)}
		}
		add(VirtualHostName(host, port), HostDomains(sp.svc, v.ns, v.ix.Mesh.ClusterDomain), routes)
	}
	if port == 80 {
		// VirtualServices that route no service the proxy sees, as in Istio.
		for _, vs := range v.ix.MeshVirtualServicesIn(v.ns) {
			if len(extra[vs]) > 0 && !slices.Contains(used, vs) && !routesAnyService(v, vs) {
				used = append(used, vs)
			}
		}
	}
	for _, vs := range used {
		routes := routesOf(vs, model.ProtocolHTTP)
		if len(routes) == 0 {
			continue
		}
		for _, h := range extra[vs] {
			add(VirtualHostName(h, port), []string{h, h + "."}, routes)
		}
	}
	slices.SortFunc(vhosts, func(a, b *routev3.VirtualHost) int { return strings.Compare(a.GetName(), b.GetName()) })
	if !domains["*"] {
		vhosts = append(vhosts, catchAllVirtualHost(v.allowAny))
	}
	return &routev3.RouteConfiguration{
		Name:                           SidecarRouteName(port),
		VirtualHosts:                   vhosts,
		ValidateClusters:               wrapperspb.Bool(false),
		IgnorePortInHostMatching:       true,
		MaxDirectResponseBodySizeBytes: wrapperspb.UInt32(maxDirectResponseBody),
	}
}

// routesAnyService reports whether vs is the VirtualService of any HTTP
// service the proxy sees.
func routesAnyService(v *sidecarView, vs *index.VirtualService) bool {
	for _, port := range v.httpPorts {
		for _, sp := range v.http[port] {
			if v.ix.VirtualServiceFor(v.ns, sp.svc.Hostname) == vs {
				return true
			}
		}
	}
	return false
}

// catchAllVirtualHost takes requests for hosts no virtual host names:
// through to their original destination (ALLOW_ANY) or a 502
// (REGISTRY_ONLY).
func catchAllVirtualHost(allowAny bool) *routev3.VirtualHost {
	match := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	if allowAny {
		return &routev3.VirtualHost{
			Name:    AllowAnyVirtualHost,
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Name:   AllowAnyVirtualHost,
				Match:  match,
				Action: &routev3.Route_Route{Route: noTimeoutAction(PassthroughCluster)},
			}},
		}
	}
	return &routev3.VirtualHost{
		Name:    BlockAllVirtualHost,
		Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Name:   BlockAllVirtualHost,
			Match:  match,
			Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 502}},
		}},
	}
}
