package core

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ExtensionProvider is an external authorizer that AuthorizationPolicies
// with action CUSTOM name by provider.name, as in Istio's
// meshConfig.extensionProviders. Exactly one of EnvoyExtAuthzGRPC and
// EnvoyExtAuthzHTTP is set.
type ExtensionProvider struct {
	Name              string               `mapstructure:"name" doc:"the name AuthorizationPolicy provider.name refers to"`
	EnvoyExtAuthzGRPC *ExtAuthzGRPCService `mapstructure:"envoyExtAuthzGrpc" doc:"an ext_authz service speaking Envoy's gRPC authorization API"`
	EnvoyExtAuthzHTTP *ExtAuthzHTTPService `mapstructure:"envoyExtAuthzHttp" doc:"an ext_authz service answering plain HTTP checks"`
}

// ExtAuthzGRPCService is an ext_authz server reached over gRPC.
type ExtAuthzGRPCService struct {
	// Service is the host name of a service the mesh knows
	// (authz.tools.svc.cluster.local, or a ServiceEntry host).
	Service string `mapstructure:"service" doc:"host name of the authorizer's service (a registry service or ServiceEntry host)"`
	Port    uint32 `mapstructure:"port" doc:"port of the authorizer's service"`
	// Timeout bounds each check; 0 means Envoy's default (200ms).
	Timeout time.Duration `mapstructure:"timeout" doc:"time a check may take; 0 is Envoy's default (200ms)"`
	// FailOpen lets requests through when the authorizer cannot be reached.
	FailOpen bool `mapstructure:"failOpen" doc:"allow requests when the authorizer is unreachable or errs (default: deny)"`
	// StatusOnError is the HTTP status of requests denied because the
	// authorizer failed; 0 means 403.
	StatusOnError int `mapstructure:"statusOnError" doc:"HTTP status sent when the check itself fails; 0 is 403"`
	// IncludeRequestBodyBytes sends up to that many body bytes with the
	// check; 0 sends none.
	IncludeRequestBodyBytes uint32 `mapstructure:"includeRequestBodyBytes" doc:"request body bytes sent with each check; 0 sends none"`
}

// ExtAuthzHTTPService is an ext_authz server reached over plain HTTP.
type ExtAuthzHTTPService struct {
	Service       string        `mapstructure:"service" doc:"host name of the authorizer's service"`
	Port          uint32        `mapstructure:"port" doc:"port of the authorizer's service"`
	Timeout       time.Duration `mapstructure:"timeout" doc:"time a check may take; 0 is Envoy's default (200ms)"`
	FailOpen      bool          `mapstructure:"failOpen" doc:"allow requests when the authorizer is unreachable or errs (default: deny)"`
	StatusOnError int           `mapstructure:"statusOnError" doc:"HTTP status sent when the check itself fails; 0 is 403"`
	// PathPrefix is prepended to the request path in the check request.
	PathPrefix string `mapstructure:"pathPrefix" doc:"prefix added to the path of the check request"`
	// IncludeRequestHeadersInCheck are the request headers sent to the
	// authorizer besides Envoy's defaults (Host, Method, Path,
	// Content-Length, Authorization).
	IncludeRequestHeadersInCheck []string `mapstructure:"includeRequestHeadersInCheck" doc:"request headers sent with the check"`
	// HeadersToUpstreamOnAllow are authorizer response headers copied to
	// the request when it is allowed.
	HeadersToUpstreamOnAllow []string `mapstructure:"headersToUpstreamOnAllow" doc:"authorizer response headers added to allowed requests"`
	// HeadersToDownstreamOnDeny are authorizer response headers sent to the
	// client when it is denied.
	HeadersToDownstreamOnDeny []string `mapstructure:"headersToDownstreamOnDeny" doc:"authorizer response headers sent back with a denial"`
}

// RateLimit is a local (per proxy) token bucket on the inbound traffic of
// the workloads it selects, enforced by Envoy's local rate limit filters.
// On HTTP ports it counts requests (those matching Match, or all), on TCP
// ports new connections.
type RateLimit struct {
	// Name identifies the limit in stats (local_rate_limit.<name>) and in
	// errors.
	Name string `mapstructure:"name" doc:"unique name; the stat prefix of the limit"`
	// Namespace scopes the selector; the root namespace selects workloads
	// of every namespace.
	Namespace string `mapstructure:"namespace" doc:"namespace of the workloads; the root namespace means every namespace"`
	// Selector selects workloads by label; empty selects every workload of
	// the namespace.
	Selector map[string]string `mapstructure:"selector" doc:"workload labels; empty selects every workload of the namespace"`
	// Ports narrows the limit to these inbound (workload) ports.
	Ports []uint32 `mapstructure:"ports" doc:"inbound ports the limit applies to; empty means all"`
	// Match narrows the limit to some requests (HTTP ports only).
	Match *RateLimitMatch `mapstructure:"match" doc:"requests the limit counts; empty counts all"`
	// TokenBucket is the limit.
	TokenBucket TokenBucket `mapstructure:"tokenBucket"`
	// PerConnection gives every downstream connection its own bucket.
	PerConnection bool `mapstructure:"perConnection" doc:"one bucket per client connection instead of one per proxy"`
}

// RateLimitMatch selects the requests a RateLimit counts. All given
// fields must match.
type RateLimitMatch struct {
	// Paths use AuthorizationPolicy's forms: exact, prefix "/api/*",
	// suffix "*.png", or "*".
	Paths   []string          `mapstructure:"paths" doc:"request paths: exact, /prefix*, *suffix or *"`
	Methods []string          `mapstructure:"methods" doc:"HTTP methods"`
	Headers map[string]string `mapstructure:"headers" doc:"request headers that must have exactly these values"`
}

// TokenBucket is a token bucket: MaxTokens to start with and at most,
// TokensPerFill more every FillInterval, one per request.
type TokenBucket struct {
	MaxTokens     uint32        `mapstructure:"maxTokens" doc:"bucket size: the largest burst"`
	TokensPerFill uint32        `mapstructure:"tokensPerFill" doc:"tokens added every fillInterval; 0 means maxTokens"`
	FillInterval  time.Duration `mapstructure:"fillInterval" doc:"refill period, at least 50ms"`
}

// Providers returns the extension providers, nil when none are set.
func (m MeshConfig) Providers() []ExtensionProvider {
	if m.ExtensionProviders == nil {
		return nil
	}
	return *m.ExtensionProviders
}

// Provider returns the extension provider named name.
func (m MeshConfig) Provider(name string) (ExtensionProvider, bool) {
	for _, p := range m.Providers() {
		if p.Name == name {
			return p, true
		}
	}
	return ExtensionProvider{}, false
}

// LocalRateLimits returns the rate limits, nil when none are set.
func (m MeshConfig) LocalRateLimits() []RateLimit {
	if m.RateLimits == nil {
		return nil
	}
	return *m.RateLimits
}

// ValidateSecurity checks mesh.extensionProviders and mesh.rateLimits.
func (m MeshConfig) ValidateSecurity() error {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("mesh.%s: %s", path, fmt.Sprintf(format, args...)))
	}
	names := map[string]bool{}
	for i, p := range m.Providers() {
		at := "extensionProviders[" + strconv.Itoa(i) + "]"
		switch {
		case p.Name == "":
			add(at+".name", "must not be empty")
		case names[p.Name]:
			add(at+".name", "%q is used twice", p.Name)
		}
		names[p.Name] = true
		switch {
		case p.EnvoyExtAuthzGRPC != nil && p.EnvoyExtAuthzHTTP != nil:
			add(at, "set one of envoyExtAuthzGrpc and envoyExtAuthzHttp, not both")
		case p.EnvoyExtAuthzGRPC != nil:
			g := p.EnvoyExtAuthzGRPC
			checkService(add, at+".envoyExtAuthzGrpc", g.Service, g.Port, g.Timeout, g.StatusOnError)
		case p.EnvoyExtAuthzHTTP != nil:
			h := p.EnvoyExtAuthzHTTP
			checkService(add, at+".envoyExtAuthzHttp", h.Service, h.Port, h.Timeout, h.StatusOnError)
			if h.PathPrefix != "" && !strings.HasPrefix(h.PathPrefix, "/") {
				add(at+".envoyExtAuthzHttp.pathPrefix", "%q must start with /", h.PathPrefix)
			}
			for j, list := range [][]string{h.IncludeRequestHeadersInCheck, h.HeadersToUpstreamOnAllow, h.HeadersToDownstreamOnDeny} {
				field := [...]string{"includeRequestHeadersInCheck", "headersToUpstreamOnAllow", "headersToDownstreamOnDeny"}[j]
				for k, name := range list {
					if !headerName(name) {
						add(at+".envoyExtAuthzHttp."+field+"["+strconv.Itoa(k)+"]", "%q is not a header name", name)
					}
				}
			}
		default:
			add(at, "set envoyExtAuthzGrpc or envoyExtAuthzHttp")
		}
	}
	limits := map[string]bool{}
	for i, r := range m.LocalRateLimits() {
		at := "rateLimits[" + strconv.Itoa(i) + "]"
		switch {
		case r.Name == "":
			add(at+".name", "must not be empty")
		case limits[r.Name]:
			add(at+".name", "%q is used twice", r.Name)
		case !statName(r.Name):
			add(at+".name", "%q may use only letters, digits, '-', '_' and '.'", r.Name)
		}
		limits[r.Name] = true
		if r.Namespace == "" {
			add(at+".namespace", "must not be empty (the root namespace %s selects every namespace)", m.RootNamespace)
		}
		for k, v := range r.Selector {
			if k == "" || v == "" {
				add(at+".selector", "labels need a key and a value, got %q=%q", k, v)
			}
		}
		for j, p := range r.Ports {
			if p == 0 || p > 65535 {
				add(at+".ports["+strconv.Itoa(j)+"]", "%d is not in 1..65535", p)
			}
		}
		tb := r.TokenBucket
		if tb.MaxTokens == 0 {
			add(at+".tokenBucket.maxTokens", "must be at least 1")
		}
		if tb.FillInterval < 50*time.Millisecond {
			add(at+".tokenBucket.fillInterval", "%s is below Envoy's minimum of 50ms", tb.FillInterval)
		} else if tb.FillInterval%time.Millisecond != 0 {
			add(at+".tokenBucket.fillInterval", "%s is finer than a millisecond", tb.FillInterval)
		}
		if r.Match == nil {
			continue
		}
		if len(r.Match.Paths)+len(r.Match.Methods)+len(r.Match.Headers) == 0 {
			add(at+".match", "is empty; remove it to count every request")
		}
		for j, p := range r.Match.Paths {
			if n := strings.Count(p, "*"); p == "" || n > 1 || n == 1 && p != "*" && !strings.HasPrefix(p, "*") && !strings.HasSuffix(p, "*") {
				add(at+".match.paths["+strconv.Itoa(j)+"]", "%q must be exact, /prefix*, *suffix or *", p)
			}
		}
		for j, meth := range r.Match.Methods {
			if meth == "" || strings.ContainsAny(meth, " \t*") {
				add(at+".match.methods["+strconv.Itoa(j)+"]", "%q is not an HTTP method", meth)
			}
		}
		for name := range r.Match.Headers {
			if !headerName(name) || strings.HasPrefix(name, ":") {
				add(at+".match.headers", "%q is not a header name", name)
			}
		}
	}
	return errors.Join(errs...)
}

func checkService(add func(path, format string, args ...any), at, service string, port uint32, timeout time.Duration, status int) {
	if service == "" {
		add(at+".service", "must not be empty")
	}
	if port == 0 || port > 65535 {
		add(at+".port", "%d is not in 1..65535", port)
	}
	if timeout < 0 {
		add(at+".timeout", "must not be negative")
	}
	if status != 0 && (status < 200 || status > 599 || http.StatusText(status) == "") {
		add(at+".statusOnError", "%d is not an HTTP status", status)
	}
}

func headerName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || i == 0 && c == ':') {
			return false
		}
	}
	return true
}

func statName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}
