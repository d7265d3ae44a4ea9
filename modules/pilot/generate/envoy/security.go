package envoy

import (
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/security"
	"github.com/meshd/meshd/xds/api"
)

// Security is the extension that enforces Istio's security config on
// sidecars and gateways (package security does the translation):
//
//   - inbound ports get filter chains for their PeerAuthentication mode
//     (plaintext, mTLS, or both behind the TLS inspector), and so does the
//     inbound passthrough;
//   - connection managers of inbound chains and gateways get local rate
//     limits, JWT verification and RBAC (CUSTOM through ext_authz, AUDIT,
//     DENY, ALLOW), in that order, ahead of the built-in filters;
//   - TCP chains of inbound ports, the passthrough and gateways get the
//     network versions (connection rate limits, ext_authz, RBAC).
//
// Outbound chains get nothing: clients' mTLS is the clusters' business
// (auto mTLS). Pilot adds Security to Options.Extensions and KeyPart to
// the generator key.
type Security struct{}

// Interface guards.
var (
	_ InboundTLSExtension         = Security{}
	_ InboundPassthroughExtension = Security{}
	_ HTTPFilterExtension         = Security{}
	_ NetworkFilterExtension      = Security{}
)

// SecurityWorkload is the workload whose policies a proxy enforces.
func SecurityWorkload(p *api.Proxy) security.Workload {
	return security.Workload{Namespace: proxyNamespace(p), Labels: p.Labels}
}

// SecurityKeyPart is the generator key part of what Security reads from a
// proxy: the policies that select its workload.
func SecurityKeyPart(ix *index.Index, p *api.Proxy) string {
	if p.Type != api.Sidecar && p.Type != api.Gateway {
		return ""
	}
	return security.For(ix).KeyPart(SecurityWorkload(p))
}

func toInboundMatches(in []security.InboundChain) []InboundMatch {
	out := make([]InboundMatch, len(in))
	for i, c := range in {
		out[i] = InboundMatch{NameSuffix: c.NameSuffix, TransportProtocol: c.TransportProtocol, ApplicationProtocols: c.ApplicationProtocols, TransportSocket: c.TransportSocket}
	}
	return out
}

// InboundMatches implements InboundTLSExtension.
func (Security) InboundMatches(c Chain) []InboundMatch {
	if c.Class != SidecarInbound || c.Index == nil {
		return nil
	}
	return toInboundMatches(security.For(c.Index).EnvoyInbound(SecurityWorkload(c.Proxy), c.Port, c.Protocol.IsHTTP()))
}

// PassthroughMatches implements InboundPassthroughExtension.
func (Security) PassthroughMatches(c Chain) []InboundMatch {
	if c.Index == nil {
		return nil
	}
	return toInboundMatches(security.For(c.Index).EnvoyPassthrough(SecurityWorkload(c.Proxy)))
}

// HTTPFilters implements HTTPFilterExtension.
func (Security) HTTPFilters(c Chain) []*hcmv3.HttpFilter {
	if c.Class == SidecarOutbound || c.Index == nil {
		return nil
	}
	return security.For(c.Index).EnvoyHTTPFilters(SecurityWorkload(c.Proxy), c.Port)
}

// NetworkFilters implements NetworkFilterExtension: only for chains that
// end in a TCP proxy; connection managers get HTTPFilters instead.
func (Security) NetworkFilters(c Chain) []*listenerv3.Filter {
	if c.Class == SidecarOutbound || c.HTTP || c.Index == nil {
		return nil
	}
	return security.For(c.Index).EnvoyNetworkFilters(SecurityWorkload(c.Proxy), c.Port, c.Listener+"_"+portString(c.Port))
}

// KeyPart implements pilot's KeyExtension: SecurityKeyPart for a sidecar's
// or gateway's listeners, the only resources Security changes.
func (Security) KeyPart(ix *index.Index, p *api.Proxy, typeURL string) string {
	if typeURL != api.ListenerType {
		return ""
	}
	return SecurityKeyPart(ix, p)
}
