package envoy

import (
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/xds/api"
)

// Refs are the names listeners and routes refer to, each sorted and
// without duplicates. A push is consistent when every one exists: clusters
// in CDS (or Envoy's bootstrap), routes in RDS, secrets in SDS.
type Refs struct {
	Clusters []string
	Routes   []string
	// Secrets are SDS secrets fetched from meshd over ADS (gateway
	// credentials).
	Secrets []string
	// AgentSecrets are SDS secrets fetched from the node agent through the
	// sds-grpc bootstrap cluster (workload certificate, trust bundle,
	// certificate files).
	AgentSecrets []string
}

// References collects what listeners and route configurations refer to,
// looking inside filter configurations (HTTP connection managers, TCP
// proxies, inline route configurations, TLS transport sockets).
func References(listeners []*listenerv3.Listener, routes []*routev3.RouteConfiguration) Refs {
	var r Refs
	for _, l := range listeners {
		chains := l.GetFilterChains()
		if d := l.GetDefaultFilterChain(); d != nil {
			chains = append(chains[:len(chains):len(chains)], d)
		}
		for _, fc := range chains {
			r.transportSocket(fc.GetTransportSocket())
			for _, f := range fc.GetFilters() {
				r.filter(f)
			}
		}
	}
	for _, rc := range routes {
		r.routeConfig(rc)
	}
	for _, s := range []*[]string{&r.Clusters, &r.Routes, &r.Secrets, &r.AgentSecrets} {
		*s = sortedUnique(*s)
	}
	return r
}

func (r *Refs) filter(f *listenerv3.Filter) {
	a := f.GetTypedConfig()
	if a == nil {
		return
	}
	var h hcmv3.HttpConnectionManager
	var t tcpv3.TcpProxy
	switch {
	case a.MessageIs(&h):
		if a.UnmarshalTo(&h) != nil {
			return
		}
		if n := h.GetRds().GetRouteConfigName(); n != "" {
			r.Routes = append(r.Routes, n)
		}
		r.routeConfig(h.GetRouteConfig())
	case a.MessageIs(&t):
		if a.UnmarshalTo(&t) != nil {
			return
		}
		if c := t.GetCluster(); c != "" {
			r.Clusters = append(r.Clusters, c)
		}
		for _, w := range t.GetWeightedClusters().GetClusters() {
			r.Clusters = append(r.Clusters, w.GetName())
		}
	}
}

func (r *Refs) routeConfig(rc *routev3.RouteConfiguration) {
	for _, vh := range rc.GetVirtualHosts() {
		for _, rt := range vh.GetRoutes() {
			a := rt.GetRoute()
			if a == nil {
				continue
			}
			if c := a.GetCluster(); c != "" {
				r.Clusters = append(r.Clusters, c)
			}
			for _, w := range a.GetWeightedClusters().GetClusters() {
				r.Clusters = append(r.Clusters, w.GetName())
			}
			for _, m := range a.GetRequestMirrorPolicies() {
				r.Clusters = append(r.Clusters, m.GetCluster())
			}
		}
	}
}

func (r *Refs) transportSocket(ts *corev3.TransportSocket) {
	a := ts.GetTypedConfig()
	if a == nil {
		return
	}
	var d tlsv3.DownstreamTlsContext
	if !a.MessageIs(&d) || a.UnmarshalTo(&d) != nil {
		return
	}
	add := func(s *tlsv3.SdsSecretConfig) {
		if s == nil {
			return
		}
		if s.GetSdsConfig().GetAds() != nil {
			r.Secrets = append(r.Secrets, s.GetName())
			return
		}
		r.AgentSecrets = append(r.AgentSecrets, s.GetName())
		for _, g := range s.GetSdsConfig().GetApiConfigSource().GetGrpcServices() {
			r.Clusters = append(r.Clusters, g.GetEnvoyGrpc().GetClusterName())
		}
	}
	c := d.GetCommonTlsContext()
	for _, s := range c.GetTlsCertificateSdsSecretConfigs() {
		add(s)
	}
	add(c.GetValidationContextSdsSecretConfig())
	add(c.GetCombinedValidationContext().GetValidationContextSdsSecretConfig())
}

// Secrets returns the SDS secrets p's listeners fetch from meshd over ADS:
// the gateway credentials meshd must serve it.
func (g *Generator) Secrets(ix *index.Index, p *api.Proxy) []string {
	return References(g.Listeners(ix, p), nil).Secrets
}

// Key returns what p's Envoy output depends on besides the index, for
// api.Generator.Key: the proxy type, namespace (Sidecar and visibility
// scoping, short host names), labels (Sidecar and Gateway selection,
// source-label matches) and, for sidecars, the workload ports found from
// its addresses. Proxies with equal keys get equal listeners, routes and
// clusters from one index. It reads nothing else from the proxy.
func Key(ix *index.Index, p *api.Proxy) string {
	var b strings.Builder
	b.WriteString(string(p.Type))
	b.WriteByte('|')
	b.WriteString(p.Namespace)
	b.WriteByte('|')
	keys := make([]string, 0, len(p.Labels))
	for k := range p.Labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(p.Labels[k])
		b.WriteByte(0)
	}
	if p.Type == api.Sidecar {
		b.WriteByte('|')
		for _, in := range inboundPorts(ix, p) {
			b.WriteString(portString(in.port))
			b.WriteByte('/')
			b.WriteString(string(in.protocol))
			b.WriteByte('/')
			b.WriteString(in.endpointAddr)
			b.WriteByte(':')
			b.WriteString(portString(in.endpointPort))
			if in.service != nil {
				b.WriteByte('/')
				b.WriteString(in.service.Hostname)
			}
			b.WriteByte(',')
		}
	}
	return b.String()
}

// ImpliedClusters returns the outbound clusters pilot's shared CDS
// generator builds for what p sees, by Istio's naming: outbound|PORT||HOST
// for every port of every visible service and outbound|PORT|SUBSET|HOST
// for each subset of the DestinationRule that applies. The Envoy tests use
// it to check references; the CDS generator is the authority.
func ImpliedClusters(ix *index.Index, p *api.Proxy) []string {
	var sc *index.Sidecar
	if p.Type == api.Sidecar {
		sc = ix.SidecarFor(p.Namespace, p.Labels)
	}
	var out []string
	for _, s := range ix.Services(p.Namespace, sc) {
		dr := ix.DestinationRule(p.Namespace, s.Namespace, s.Hostname)
		for _, port := range s.Ports {
			out = append(out, index.ClusterName(port.Number, "", s.Hostname))
			if dr != nil {
				for _, ss := range dr.Spec.GetSubsets() {
					out = append(out, index.ClusterName(port.Number, ss.GetName(), s.Hostname))
				}
			}
		}
	}
	return out
}
