package security

import (
	"math"
	"regexp"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ratelimitcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	netlrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/local_ratelimit/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/core"
)

// rateLimitDescriptorKey is the descriptor entry a rate limit's match
// produces; its value is the limit's name.
const rateLimitDescriptorKey = "meshd_rate_limit"

func tokenBucket(tb core.TokenBucket) *typev3.TokenBucket {
	per := tb.TokensPerFill
	if per == 0 {
		per = tb.MaxTokens
	}
	return &typev3.TokenBucket{
		MaxTokens:     tb.MaxTokens,
		TokensPerFill: wrapperspb.UInt32(per),
		FillInterval:  durationpb.New(tb.FillInterval),
	}
}

// unlimited is a default bucket no traffic empties, for limits that count
// only matching requests (Envoy wants the descriptors' fill interval to be
// a multiple of the default bucket's, so it shares the limit's).
func unlimited(tb core.TokenBucket) *typev3.TokenBucket {
	return &typev3.TokenBucket{
		MaxTokens:     math.MaxUint32,
		TokensPerFill: wrapperspb.UInt32(math.MaxUint32),
		FillInterval:  durationpb.New(tb.FillInterval),
	}
}

var always = &corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED}}

// httpRateLimit is the local rate limit filter of one limit: every request
// takes a token from its bucket, or only the requests its match selects
// (the match becomes a descriptor with the limit's bucket, all other
// requests fall to an unlimited default). Limited gRPC calls fail with
// RESOURCE_EXHAUSTED, other requests with 429.
func httpRateLimit(r core.RateLimit) *lrlv3.LocalRateLimit {
	l := &lrlv3.LocalRateLimit{
		StatPrefix:                            "local_rate_limit." + r.Name,
		FilterEnabled:                         always,
		FilterEnforced:                        always,
		LocalRateLimitPerDownstreamConnection: r.PerConnection,
		RateLimitedAsResourceExhausted:        true,
	}
	if r.Match == nil {
		l.TokenBucket = tokenBucket(r.TokenBucket)
		return l
	}
	l.TokenBucket = unlimited(r.TokenBucket)
	l.AlwaysConsumeDefaultTokenBucket = wrapperspb.Bool(false)
	l.RateLimits = []*routev3.RateLimit{{Actions: []*routev3.RateLimit_Action{{
		ActionSpecifier: &routev3.RateLimit_Action_HeaderValueMatch_{HeaderValueMatch: &routev3.RateLimit_Action_HeaderValueMatch{
			DescriptorKey:   rateLimitDescriptorKey,
			DescriptorValue: r.Name,
			ExpectMatch:     wrapperspb.Bool(true),
			Headers:         matchHeaders(r.Match),
		}},
	}}}}
	l.Descriptors = []*ratelimitcommonv3.LocalRateLimitDescriptor{{
		Entries:     []*ratelimitcommonv3.RateLimitDescriptor_Entry{{Key: rateLimitDescriptorKey, Value: r.Name}},
		TokenBucket: tokenBucket(r.TokenBucket),
	}}
	return l
}

// matchHeaders turns a rate limit match into header matchers, all of
// which must match: the path (without its query) against any of the
// paths, the method against any of the methods, and each header exactly.
func matchHeaders(m *core.RateLimitMatch) []*routev3.HeaderMatcher {
	var out []*routev3.HeaderMatcher
	re := func(name, expr string) {
		out = append(out, &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
			StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: expr}}},
		}})
	}
	if len(m.Paths) > 0 {
		alts := make([]string, len(m.Paths))
		for i, p := range m.Paths {
			switch {
			case p == "*":
				alts[i] = "[^?]*"
			case strings.HasSuffix(p, "*"):
				alts[i] = regexp.QuoteMeta(p[:len(p)-1]) + "[^?]*"
			case strings.HasPrefix(p, "*"):
				alts[i] = "[^?]*" + regexp.QuoteMeta(p[1:])
			default:
				alts[i] = regexp.QuoteMeta(p)
			}
		}
		re(":path", "("+strings.Join(alts, "|")+`)(\?.*)?`)
	}
	if len(m.Methods) > 0 {
		alts := make([]string, len(m.Methods))
		for i, meth := range m.Methods {
			alts[i] = regexp.QuoteMeta(meth)
		}
		re(":method", strings.Join(alts, "|"))
	}
	names := make([]string, 0, len(m.Headers))
	for k := range m.Headers {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		out = append(out, &routev3.HeaderMatcher{Name: strings.ToLower(k), HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact(m.Headers[k])}})
	}
	return out
}

// tcpRateLimit limits new connections on a TCP port; limits with an HTTP
// match do not apply to TCP ports.
func tcpRateLimit(r core.RateLimit) *netlrlv3.LocalRateLimit {
	if r.Match != nil {
		return nil
	}
	return &netlrlv3.LocalRateLimit{StatPrefix: "local_rate_limit." + r.Name, TokenBucket: tokenBucket(r.TokenBucket)}
}
