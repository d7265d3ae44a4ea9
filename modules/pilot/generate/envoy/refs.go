package envoy

import (
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshd/meshd/modules/pilot/generate"
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

// Key returns the generator key for p's Envoy output: pilot's shared key
// (generate.Key: proxy type, namespace, the Sidecar that applies, which
// route sourceLabels selectors its labels match, its locality when
// endpoints depend on it) followed by KeyPart. Proxies with equal keys get
// equal listeners, routes and clusters from one index.
func Key(ix *index.Index, p *api.Proxy) string {
	return generate.Key(ix, p) + "|" + KeyPart(ix, p)
}

// KeyPart is what the Envoy output reads from a proxy beyond what
// generate.Key covers: for a gateway, which Gateways its labels select;
// for a sidecar, its workload ports (found from its addresses, or from its
// Sidecar's ingress listeners) and the services behind them. It depends on
// the index, so keys must be recomputed on every full push; an endpoint
// change that adds or removes a connected sidecar's own address or port
// must be a full push for that sidecar, not EDS only.
func KeyPart(ix *index.Index, p *api.Proxy) string {
	var b strings.Builder
	switch p.Type {
	case api.Gateway:
		b.WriteString("gw=")
		for _, gw := range ix.GatewaysFor(p.Labels) {
			b.WriteString(gw.Name())
			b.WriteByte(',')
		}
	case api.Sidecar:
		b.WriteString("in=")
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
