package security

import (
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/meshd/meshd/modules/pilot/index"
)

// defaultJWKSTimeout bounds a JWKS fetch when the rule sets no timeout.
const defaultJWKSTimeout = 5 * time.Second

// jwksCacheDuration is how long Envoy keeps fetched keys.
const jwksCacheDuration = 5 * time.Minute

// JWTAuthn builds Envoy's JWT filter config for the RequestAuthentications
// that apply to a workload, nil when none has rules. As in Istio, a
// request without a token passes (it just has no request principal), a
// request with a token that no rule verifies is rejected with 401, and a
// verified token's payload goes to the filter's metadata (JWTPayloadKey)
// where AuthorizationPolicy's requestPrincipals and request.auth.*
// conditions match it.
//
// jwksUri is fetched by Envoy through the cluster of the URI's host:
// outbound|<port>||<host>, which exists when the host is a service the
// mesh knows (a ServiceEntry for an external issuer). Without one the
// fetch fails and tokens are rejected: closed, not open.
func (c *Config) JWTAuthn(policies []JWTPolicy) *jwtv3.JwtAuthentication {
	providers := map[string]*jwtv3.JwtProvider{}
	var reqs []*jwtv3.JwtRequirement
	for _, p := range policies {
		for i, r := range p.Spec.GetJwtRules() {
			name := p.Object.Namespace + "/" + p.Object.Name + "[" + strconv.Itoa(i) + "]"
			jp := &jwtv3.JwtProvider{
				Issuer:               r.GetIssuer(),
				Audiences:            r.GetAudiences(),
				Forward:              r.GetForwardOriginalToken(),
				ForwardPayloadHeader: r.GetOutputPayloadToHeader(),
				PayloadInMetadata:    JWTPayloadKey,
				FromParams:           r.GetFromParams(),
				FromCookies:          r.GetFromCookies(),
			}
			for _, h := range r.GetFromHeaders() {
				jp.FromHeaders = append(jp.FromHeaders, &jwtv3.JwtHeader{Name: h.GetName(), ValuePrefix: h.GetPrefix()})
			}
			for _, ch := range r.GetOutputClaimToHeaders() {
				jp.ClaimToHeaders = append(jp.ClaimToHeaders, &jwtv3.JwtClaimToHeader{HeaderName: ch.GetHeader(), ClaimName: ch.GetClaim()})
			}
			switch {
			case r.GetJwks() != "":
				jp.JwksSourceSpecifier = &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{
					Specifier: &corev3.DataSource_InlineString{InlineString: r.GetJwks()},
				}}
			case r.GetJwksUri() != "":
				timeout := defaultJWKSTimeout
				if d := r.GetTimeout(); d != nil && d.AsDuration() > 0 {
					timeout = d.AsDuration()
				}
				jp.JwksSourceSpecifier = &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{
					HttpUri: &corev3.HttpUri{
						Uri:              r.GetJwksUri(),
						HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: jwksCluster(r.GetJwksUri())},
						Timeout:          durationpb.New(timeout),
					},
					CacheDuration: durationpb.New(jwksCacheDuration),
				}}
			default:
				// No keys: Envoy cannot verify any token of this issuer, so
				// tokens it names are rejected.
				jp.JwksSourceSpecifier = &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{
					Specifier: &corev3.DataSource_InlineString{InlineString: `{"keys":[]}`},
				}}
			}
			providers[name] = jp
			reqs = append(reqs, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: name}})
		}
	}
	if len(providers) == 0 {
		return nil
	}
	// A token must verify with one of the providers; no token at all is
	// fine (allow_missing), an invalid one is not.
	reqs = append(reqs, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_AllowMissing{AllowMissing: &emptypb.Empty{}}})
	return &jwtv3.JwtAuthentication{
		Providers: providers,
		Rules: []*jwtv3.RequirementRule{{
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			RequirementType: &jwtv3.RequirementRule_Requires{Requires: &jwtv3.JwtRequirement{
				RequiresType: &jwtv3.JwtRequirement_RequiresAny{RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: reqs}},
			}},
		}},
		BypassCorsPreflight: true,
	}
}

// jwksCluster is the cluster Envoy fetches a JWKS URI through.
func jwksCluster(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "outbound|443||invalid.jwks.uri"
	}
	host := u.Hostname()
	port := 443
	if u.Scheme == "http" {
		port = 80
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err == nil {
			port = n
		}
	}
	return index.ClusterName(uint32(port), "", host)
}

// tokenSources are the headers a proxyless server would have to read a
// token from, for the fail-closed rule below.
func tokenHeaders(policies []JWTPolicy) []string {
	seen := map[string]bool{}
	var out []string
	add := func(h string) {
		h = strings.ToLower(h)
		if !seen[h] {
			seen[h] = true
			out = append(out, h)
		}
	}
	for _, p := range policies {
		for _, r := range p.Spec.GetJwtRules() {
			if len(r.GetFromHeaders()) == 0 && len(r.GetFromParams()) == 0 && len(r.GetFromCookies()) == 0 {
				add("authorization")
			}
			for _, h := range r.GetFromHeaders() {
				add(h.GetName())
			}
			if len(r.GetFromCookies()) > 0 {
				add("cookie")
			}
		}
	}
	return out
}

// unverifiedTokenRule is the DENY rule a proxyless server gets for
// RequestAuthentications: gRPC has no JWT filter, so it cannot tell a
// valid token from a forged one, and rejects every request that carries
// one (requests without a token pass, as they would through Envoy).
func unverifiedTokenRule(policies []JWTPolicy) *rbacv3.Policy {
	headers := tokenHeaders(policies)
	if len(headers) == 0 {
		return nil
	}
	var alts []*rbacv3.Principal
	for _, h := range headers {
		alts = append(alts, &rbacv3.Principal{Identifier: &rbacv3.Principal_Header{Header: &routev3.HeaderMatcher{
			Name: h, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true},
		}}})
	}
	return &rbacv3.Policy{Permissions: []*rbacv3.Permission{anyPermission()}, Principals: []*rbacv3.Principal{orIDs(alts)}}
}

// hostPort splits host:port for error messages.
func hostPort(host string, port uint32) string {
	return net.JoinHostPort(host, strconv.FormatUint(uint64(port), 10))
}
