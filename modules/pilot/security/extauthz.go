package security

import (
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	netextauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_authz/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/pilot/index"
)

// CUSTOM policies call an external authorizer for the requests their
// rules match. Envoy runs an RBAC filter whose shadow rules are those
// rules and records the matching rule's name in its dynamic metadata; the
// ext_authz filter after it runs only when that name is there. Policy
// names carry customPrefix so nothing else can turn the call on.
const (
	customPrefix     = "meshd-ext-authz:"
	customStatPrefix = "meshd_ext_authz_"
	customMetaKey    = customStatPrefix + "shadow_effective_policy_id"
	// Envoy writes RBAC metadata under the filter's canonical names.
	httpRBACMetadata    = "envoy.filters.http.rbac"
	networkRBACMetadata = "envoy.filters.network.rbac"
)

// defaultExtAuthzTimeout is Envoy's default check timeout.
const defaultExtAuthzTimeout = 200 * time.Millisecond

// customPlan is how a workload's CUSTOM policies are enforced: one
// provider, the policies that call it, and the policies that fail closed
// (their provider is not in mesh.extensionProviders, or differs from the
// one already in use: Envoy runs one ext_authz filter per chain, as Istio
// does).
type customPlan struct {
	provider   *core.ExtensionProvider
	calls      []Policy
	failClosed []Policy
	// problems explain failClosed, for debug views.
	problems []string
}

func (c *Config) planCustom(policies []Policy) customPlan {
	var plan customPlan
	for _, p := range policies {
		name := p.Spec.GetProvider().GetName()
		prov, ok := c.Mesh.Provider(name)
		switch {
		case !ok:
			plan.failClosed = append(plan.failClosed, p)
			plan.problems = append(plan.problems, p.Name()+": provider "+name+" is not in mesh.extensionProviders; its requests are denied")
		case plan.provider == nil:
			plan.provider = &prov
			plan.calls = append(plan.calls, p)
		case plan.provider.Name == name:
			plan.calls = append(plan.calls, p)
		default:
			plan.failClosed = append(plan.failClosed, p)
			plan.problems = append(plan.problems, p.Name()+": provider "+name+" differs from "+plan.provider.Name+", the one this workload already calls; its requests are denied")
		}
	}
	return plan
}

// prefixed renames RBAC policies so the ext_authz filter recognizes them.
func prefixed[V any](m map[string]V) map[string]V {
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[customPrefix+k] = v
	}
	return out
}

// enabledBy is the metadata matcher that turns ext_authz on when a CUSTOM
// shadow rule matched.
func enabledBy(filter string) *matcherv3.MetadataMatcher {
	return &matcherv3.MetadataMatcher{
		Filter: filter,
		Path:   segments([]string{customMetaKey}),
		Value: &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: customPrefix},
		}}},
	}
}

// authzCluster is the cluster of a provider's service.
func authzCluster(service string, port uint32) string {
	return index.ClusterName(port, "", service)
}

func timeoutOr(d, def time.Duration) *durationpb.Duration {
	if d <= 0 {
		d = def
	}
	return durationpb.New(d)
}

func statusOnError(code int) *typev3.HttpStatus {
	if code == 0 {
		code = 403
	}
	return &typev3.HttpStatus{Code: typev3.StatusCode(code)}
}

func exactList(names []string) *matcherv3.ListStringMatcher {
	if len(names) == 0 {
		return nil
	}
	l := &matcherv3.ListStringMatcher{}
	for _, n := range names {
		l.Patterns = append(l.Patterns, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: strings.ToLower(n)}, IgnoreCase: true})
	}
	return l
}

// httpExtAuthz is the HTTP ext_authz filter for a provider.
func httpExtAuthz(p *core.ExtensionProvider) *extauthzv3.ExtAuthz {
	x := &extauthzv3.ExtAuthz{
		TransportApiVersion:   corev3.ApiVersion_V3,
		FilterEnabledMetadata: enabledBy(httpRBACMetadata),
	}
	if g := p.EnvoyExtAuthzGRPC; g != nil {
		x.FailureModeAllow = g.FailOpen
		x.StatusOnError = statusOnError(g.StatusOnError)
		x.Services = &extauthzv3.ExtAuthz_GrpcService{GrpcService: grpcService(g.Service, g.Port, g.Timeout)}
		if g.IncludeRequestBodyBytes > 0 {
			x.WithRequestBody = &extauthzv3.BufferSettings{MaxRequestBytes: g.IncludeRequestBodyBytes, AllowPartialMessage: true}
		}
		return x
	}
	h := p.EnvoyExtAuthzHTTP
	x.FailureModeAllow = h.FailOpen
	x.StatusOnError = statusOnError(h.StatusOnError)
	hs := &extauthzv3.HttpService{
		ServerUri: &corev3.HttpUri{
			Uri:              "http://" + hostPort(h.Service, h.Port),
			HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: authzCluster(h.Service, h.Port)},
			Timeout:          timeoutOr(h.Timeout, defaultExtAuthzTimeout),
		},
		PathPrefix: h.PathPrefix,
	}
	if up := exactList(h.HeadersToUpstreamOnAllow); up != nil || len(h.HeadersToDownstreamOnDeny) > 0 {
		hs.AuthorizationResponse = &extauthzv3.AuthorizationResponse{AllowedUpstreamHeaders: up, AllowedClientHeaders: exactList(h.HeadersToDownstreamOnDeny)}
	}
	x.Services = &extauthzv3.ExtAuthz_HttpService{HttpService: hs}
	x.AllowedHeaders = exactList(h.IncludeRequestHeadersInCheck)
	return x
}

// networkExtAuthz is the TCP ext_authz filter for a gRPC provider; nil for
// an HTTP provider, which cannot check connections.
func networkExtAuthz(p *core.ExtensionProvider, statPrefix string) *netextauthzv3.ExtAuthz {
	g := p.EnvoyExtAuthzGRPC
	if g == nil {
		return nil
	}
	return &netextauthzv3.ExtAuthz{
		StatPrefix:             statPrefix,
		GrpcService:            grpcService(g.Service, g.Port, g.Timeout),
		FailureModeAllow:       g.FailOpen,
		TransportApiVersion:    corev3.ApiVersion_V3,
		FilterEnabledMetadata:  enabledBy(networkRBACMetadata),
		IncludePeerCertificate: true,
	}
}

func grpcService(service string, port uint32, timeout time.Duration) *corev3.GrpcService {
	return &corev3.GrpcService{
		TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{
			ClusterName: authzCluster(service, port),
			Authority:   service,
		}},
		Timeout: timeoutOr(timeout, defaultExtAuthzTimeout),
	}
}
