package security

import (
	"maps"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/modules/pilot/generate"
	"github.com/meshd/meshd/modules/pilot/security/authn"
)

// HTTP and network filter names. Names only need to be unique within a
// chain (Envoy picks the implementation by the config's type); the RBAC
// filter that gates ext_authz keeps Envoy's canonical name, under which
// it writes the metadata ext_authz reads.
const (
	FilterRateLimitPrefix = "meshd.local_ratelimit."
	FilterJWT             = JWTFilterName
	FilterCustom          = httpRBACMetadata
	FilterExtAuthz        = "envoy.filters.http.ext_authz"
	FilterAudit           = "meshd.authz.audit"
	FilterDeny            = "meshd.authz.deny"
	FilterAllow           = "meshd.authz.allow"

	NetworkFilterRateLimit = "envoy.filters.network.local_ratelimit"
	NetworkFilterCustom    = networkRBACMetadata
	NetworkFilterExtAuthz  = "envoy.filters.network.ext_authz"
	NetworkFilterAudit     = "meshd.authz.audit"
	NetworkFilterDeny      = "meshd.authz.deny"
	NetworkFilterAllow     = "meshd.authz.allow"
)

// InboundChain is one way traffic may reach a sidecar's workload port:
// the transport match of its filter chain and the socket terminating it.
type InboundChain struct {
	NameSuffix           string
	TransportProtocol    string
	ApplicationProtocols []string
	TransportSocket      *corev3.TransportSocket
}

// EnvoyInbound returns how a sidecar's workload port is reached under the
// port's PeerAuthentication mode:
//
//   - DISABLE: one plaintext chain;
//   - STRICT: one chain that terminates mTLS (a plaintext client fails the
//     handshake);
//   - PERMISSIVE: the TLS inspector tells the two apart: raw_buffer
//     connections get the plaintext chain, TLS ones the mTLS chain
//     (whatever ALPN the client offers: Envoy clients send Istio's, gRPC
//     clients only h2).
//
// http selects the ALPN the mTLS chain offers (h2 and http/1.1 for HTTP
// ports, none for TCP).
func (c *Config) EnvoyInbound(w Workload, port uint32, http bool) []InboundChain {
	switch c.Authn.Mode(w.Namespace, w.Labels, port) {
	case authn.Disable:
		return []InboundChain{{}}
	case authn.Strict:
		return []InboundChain{{NameSuffix: "-mtls", TransportSocket: c.downstreamMTLS(http)}}
	}
	return []InboundChain{
		{TransportProtocol: "raw_buffer"},
		{NameSuffix: "-mtls", TransportProtocol: "tls", TransportSocket: c.downstreamMTLS(http)},
	}
}

// downstreamMTLS is the mTLS a sidecar terminates: its own certificate
// and the mesh roots from the node agent (SDS "default" and "ROOTCA"), a
// client certificate required, and its URI SAN in the mesh's trust
// domain.
func (c *Config) downstreamMTLS(http bool) *corev3.TransportSocket {
	var alpn []string
	if http {
		alpn = []string{"h2", "http/1.1"}
	}
	ctx := &tlsv3.DownstreamTlsContext{
		CommonTlsContext: &tlsv3.CommonTlsContext{
			AlpnProtocols: alpn,
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{
				Name: generate.SecretDefault, SdsConfig: generate.AgentSDS(),
			}},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext: &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
					SanType: tlsv3.SubjectAltNameMatcher_URI,
					Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + c.Mesh.TrustDomain + "/"}},
				}}},
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: generate.SecretRootCA, SdsConfig: generate.AgentSDS()},
			}},
		},
		RequireClientCertificate: wrapperspb.Bool(true),
	}
	return &corev3.TransportSocket{Name: generate.TransportSocketTLS, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: Typed(ctx)}}
}

// EnvoyPassthrough returns the chains of a sidecar's inbound passthrough
// (ports no service declares) under the workload's own mode, so STRICT
// leaves no plaintext way in; nil keeps the plaintext passthrough
// (DISABLE).
func (c *Config) EnvoyPassthrough(w Workload) []InboundChain {
	if c.Authn.Mode(w.Namespace, w.Labels, 0) == authn.Disable {
		return nil
	}
	return c.EnvoyInbound(w, 0, false)
}

// EnvoyHTTPFilters returns the security HTTP filters of a connection
// manager serving w on port (a sidecar's inbound port, a gateway's
// listener port), in evaluation order: local rate limits, JWT
// verification, CUSTOM (ext_authz), AUDIT, DENY, ALLOW.
func (c *Config) EnvoyHTTPFilters(w Workload, port uint32) []*hcmv3.HttpFilter {
	var out []*hcmv3.HttpFilter
	add := func(name string, m proto.Message) {
		out = append(out, &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: Typed(m)}})
	}
	for _, r := range c.RateLimits(w, port) {
		add(FilterRateLimitPrefix+r.Name, httpRateLimit(r))
	}
	if jwt := c.JWTAuthn(c.RequestAuthentications(w)); jwt != nil {
		add(FilterJWT, jwt)
	}
	a := c.AuthorizationPolicies(w)
	plan := c.planCustom(a.Custom)
	if plan.provider != nil {
		shadow, _ := c.RBACPolicies(EnvoyHTTP, true, plan.calls)
		add(FilterCustom, &rbachttpv3.RBAC{
			ShadowRules:           &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: prefixed(shadow)},
			ShadowRulesStatPrefix: customStatPrefix,
		})
		add(FilterExtAuthz, httpExtAuthz(plan.provider))
	}
	if len(a.Audit) > 0 {
		pols, _ := c.RBACPolicies(EnvoyHTTP, true, a.Audit)
		add(FilterAudit, &rbachttpv3.RBAC{Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_LOG, Policies: pols}})
	}
	if deny := c.denyPolicies(EnvoyHTTP, a.Deny, plan.failClosed); len(deny) > 0 {
		add(FilterDeny, &rbachttpv3.RBAC{Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: deny}})
	}
	if len(a.Allow) > 0 {
		pols, _ := c.RBACPolicies(EnvoyHTTP, false, a.Allow)
		add(FilterAllow, &rbachttpv3.RBAC{Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: pols}})
	}
	return out
}

// denyPolicies merges the DENY policies' rules and the rules of CUSTOM
// policies that cannot call their authorizer (they deny instead).
func (c *Config) denyPolicies(t Target, deny, failClosed []Policy) map[string]*rbacv3.Policy {
	out, _ := c.RBACPolicies(t, true, deny)
	if len(failClosed) > 0 {
		more, _ := c.RBACPolicies(t, true, failClosed)
		maps.Copy(out, more)
	}
	return out
}

// EnvoyNetworkFilters returns the security network filters of a TCP
// chain serving w on port: connection rate limits, CUSTOM (network
// ext_authz, gRPC providers only), AUDIT, DENY, ALLOW. Rules using HTTP
// attributes fail closed here (see RBACPolicies).
func (c *Config) EnvoyNetworkFilters(w Workload, port uint32, statPrefix string) []*listenerv3.Filter {
	var out []*listenerv3.Filter
	add := func(name string, m proto.Message) {
		out = append(out, &listenerv3.Filter{Name: name, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: Typed(m)}})
	}
	for _, r := range c.RateLimits(w, port) {
		if l := tcpRateLimit(r); l != nil {
			add(NetworkFilterRateLimit, l)
		}
	}
	a := c.AuthorizationPolicies(w)
	plan := c.planCustom(a.Custom)
	failClosed := plan.failClosed
	if plan.provider != nil {
		if x := networkExtAuthz(plan.provider, "tcp.ext_authz."+statPrefix); x != nil {
			shadow, _ := c.RBACPolicies(EnvoyTCP, true, plan.calls)
			add(NetworkFilterCustom, &rbacnetv3.RBAC{
				StatPrefix:            "tcp.ext_authz." + statPrefix,
				ShadowRules:           &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: prefixed(shadow)},
				ShadowRulesStatPrefix: customStatPrefix,
			})
			add(NetworkFilterExtAuthz, x)
		} else {
			// An HTTP authorizer cannot check a connection: deny what it
			// would have been asked about.
			failClosed = append(failClosed, plan.calls...)
		}
	}
	if len(a.Audit) > 0 {
		pols, _ := c.RBACPolicies(EnvoyTCP, true, a.Audit)
		add(NetworkFilterAudit, &rbacnetv3.RBAC{StatPrefix: "tcp.audit." + statPrefix, Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_LOG, Policies: pols}})
	}
	if deny := c.denyPolicies(EnvoyTCP, a.Deny, failClosed); len(deny) > 0 {
		add(NetworkFilterDeny, &rbacnetv3.RBAC{StatPrefix: "tcp.deny." + statPrefix, Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: deny}})
	}
	if len(a.Allow) > 0 {
		pols, _ := c.RBACPolicies(EnvoyTCP, false, a.Allow)
		add(NetworkFilterAllow, &rbacnetv3.RBAC{StatPrefix: "tcp.allow." + statPrefix, Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: pols}})
	}
	return out
}

// Typed packs m deterministically, so equal configs encode to equal
// bytes and pushes see no change.
func Typed(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		return &anypb.Any{} // only an invalid message fails; ValidateAll in the tests flags it
	}
	return a
}
