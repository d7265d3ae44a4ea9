// Package envoy builds what Envoy sidecars and gateways receive that
// proxyless gRPC clients do not: listeners (LDS), route configurations
// (RDS), and the few clusters only Envoy needs (PassthroughCluster,
// BlackHoleCluster, InboundPassthroughCluster, and the inbound|PORT||
// clusters of the workload's own ports). The outbound|PORT|SUBSET|HOST
// clusters, their endpoints and the translation of VirtualService http
// rules into routes come from pilot's shared generate package; the
// listeners here refer to clusters by name only.
//
// Names and shapes follow Istio's, so an Istio user reading Envoy's
// /debug/config_dump finds what they know (docs/envoy-output.md):
//
//   - sidecars: virtualOutbound on 15001 with original-destination
//     handling and a passthrough or blackhole default; 0.0.0.0_<port>
//     listeners per outbound HTTP port using RDS route "<port>", TCP proxy
//     listeners per TCP port (<vip>_<port> for services with an address),
//     SNI filter chains for TLS ports; virtualInbound on 15006 with one
//     filter chain per workload port;
//   - gateways: one listener per Gateway server port, 0.0.0.0_<port>, with
//     http.<port> and https.<port>.<port name>.<gateway>.<namespace> route
//     configurations, TLS termination with SDS secrets named after
//     credentialName, SNI passthrough and TCP.
//
// A Generator is safe for concurrent use; every call reads only the index
// and the proxy. What each call reads from the proxy is listed at Key.
package envoy

import (
	"cmp"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/xds/api"
)

// Options configure a Generator.
type Options struct {
	// Extensions implement any of the *Extension interfaces of this
	// package; they add filters and settings to every chain they apply to.
	Extensions []any
}

// Generator builds Envoy listeners, routes and clusters.
type Generator struct {
	ext []any
}

// New returns a Generator.
func New(opts Options) *Generator {
	return &Generator{ext: slices.Clone(opts.Extensions)}
}

var defaultGenerator = New(Options{})

// Listeners returns the listeners of a sidecar or gateway proxy, built by
// a Generator without extensions.
func Listeners(ix *index.Index, p *api.Proxy) []*listenerv3.Listener {
	return defaultGenerator.Listeners(ix, p)
}

// Routes returns the route configurations of a sidecar or gateway proxy,
// built by a Generator without extensions.
func Routes(ix *index.Index, p *api.Proxy) []*routev3.RouteConfiguration {
	return defaultGenerator.Routes(ix, p)
}

// ExtraClusters returns the clusters only Envoy proxies need.
func ExtraClusters(ix *index.Index, p *api.Proxy) []*clusterv3.Cluster {
	return defaultGenerator.Clusters(ix, p)
}

// Listeners returns p's listeners, sorted by name. Proxyless clients get
// none from here.
func (g *Generator) Listeners(ix *index.Index, p *api.Proxy) []*listenerv3.Listener {
	var out []*listenerv3.Listener
	switch p.Type {
	case api.Sidecar:
		out = g.sidecarListeners(newSidecarView(ix, p))
	case api.Gateway:
		out = g.gatewayListeners(mergeGateways(ix, p))
	}
	slices.SortFunc(out, func(a, b *listenerv3.Listener) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

// Routes returns p's route configurations, sorted by name: exactly those
// its listeners refer to.
func (g *Generator) Routes(ix *index.Index, p *api.Proxy) []*routev3.RouteConfiguration {
	var out []*routev3.RouteConfiguration
	switch p.Type {
	case api.Sidecar:
		out = g.sidecarRoutes(newSidecarView(ix, p))
	case api.Gateway:
		out = g.gatewayRoutes(mergeGateways(ix, p))
	}
	slices.SortFunc(out, func(a, b *routev3.RouteConfiguration) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

// Clusters returns the clusters only Envoy proxies need, sorted by name:
// PassthroughCluster and BlackHoleCluster for every Envoy, and for
// sidecars InboundPassthroughCluster and one inbound|PORT|| cluster per
// workload port.
func (g *Generator) Clusters(ix *index.Index, p *api.Proxy) []*clusterv3.Cluster {
	if p.Type != api.Sidecar && p.Type != api.Gateway {
		return nil
	}
	out := []*clusterv3.Cluster{passthroughCluster(), blackHoleCluster()}
	if p.Type == api.Sidecar {
		out = append(out, inboundPassthroughCluster())
		for _, in := range inboundPorts(ix, p) {
			out = append(out, inboundCluster(in))
		}
	}
	slices.SortFunc(out, func(a, b *clusterv3.Cluster) int { return cmp.Compare(a.GetName(), b.GetName()) })
	return out
}

// Problems returns what p's listeners leave out of the config and why:
// Gateway servers that conflict on a port, TCP services that cannot share a
// port, service ports Envoy uses itself. It is for debug views and logs;
// none of it makes the output invalid.
func (g *Generator) Problems(ix *index.Index, p *api.Proxy) []string {
	switch p.Type {
	case api.Sidecar:
		v := newSidecarView(ix, p)
		g.outboundListeners(v)
		return v.problems
	case api.Gateway:
		m := mergeGateways(ix, p)
		g.gatewayListeners(m)
		return m.Rejected
	}
	return nil
}

// Resources returns p's resources of one xDS type as the xds module takes
// them: listeners (api.ListenerType), route configurations
// (api.RouteType) or the Envoy-only clusters (api.ClusterType, to add to
// the shared outbound clusters). Other types, and proxyless clients, get
// nil.
func (g *Generator) Resources(ix *index.Index, p *api.Proxy, typeURL string) []api.Resource {
	var out []api.Resource
	switch typeURL {
	case api.ListenerType:
		for _, l := range g.Listeners(ix, p) {
			out = append(out, api.Resource{Name: l.GetName(), Message: l})
		}
	case api.RouteType:
		for _, r := range g.Routes(ix, p) {
			out = append(out, api.Resource{Name: r.GetName(), Message: r})
		}
	case api.ClusterType:
		for _, c := range g.Clusters(ix, p) {
			out = append(out, api.Resource{Name: c.GetName(), Message: c})
		}
	}
	return out
}
