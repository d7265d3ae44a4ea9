package security

import (
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// request is what an RBAC engine sees of a request, for the tests'
// evaluator: a small model of Envoy's and grpc-go's RBAC semantics over
// the matchers this package generates.
type request struct {
	principal string // peer URI SAN; "" on a plaintext connection
	sourceIP  string
	remoteIP  string
	destIP    string
	port      uint32
	path      string
	method    string
	authority string
	headers   map[string]string
	sni       string
	// claims is the verified JWT payload, nil without one.
	claims map[string]any
}

// engine says what the evaluator may look at: Envoy's HTTP RBAC sees all
// of it; grpc-go sees no dynamic metadata and matches SNI against "".
type engine struct{ grpc bool }

func (e engine) header(r request, name string) (string, bool) {
	switch strings.ToLower(name) {
	case ":path":
		return r.path, true
	case ":method":
		if e.grpc {
			return "POST", true
		}
		return r.method, true
	case ":authority", "host":
		return r.authority, r.authority != ""
	}
	v, ok := r.headers[strings.ToLower(name)]
	return v, ok
}

var regexps sync.Map

// compiled compiles a full-match regular expression once.
func compiled(re string) *regexp.Regexp {
	if r, ok := regexps.Load(re); ok {
		return r.(*regexp.Regexp)
	}
	r := regexp.MustCompile("^(?:" + re + ")$")
	regexps.Store(re, r)
	return r
}

func stringMatch(m *matcherv3.StringMatcher, v string) bool {
	if m.GetIgnoreCase() {
		v = strings.ToLower(v)
	}
	lower := func(s string) string {
		if m.GetIgnoreCase() {
			return strings.ToLower(s)
		}
		return s
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return v == lower(p.Exact)
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(v, lower(p.Prefix))
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(v, lower(p.Suffix))
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(v, lower(p.Contains))
	case *matcherv3.StringMatcher_SafeRegex:
		return compiled(p.SafeRegex.GetRegex()).MatchString(v)
	}
	panic("unknown string matcher")
}

func (e engine) headerMatch(h *routev3.HeaderMatcher, r request) bool {
	v, ok := e.header(r, h.GetName())
	var m bool
	switch p := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_PresentMatch:
		m = ok == p.PresentMatch
	case *routev3.HeaderMatcher_StringMatch:
		m = ok && stringMatch(p.StringMatch, v)
	default:
		panic("unknown header matcher")
	}
	return m != h.GetInvertMatch()
}

func inCIDR(c *corev3.CidrRange, ip string) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	p, err := netip.ParsePrefix(c.GetAddressPrefix() + "/" + strconv.FormatUint(uint64(c.GetPrefixLen().GetValue()), 10))
	return err == nil && p.Contains(a)
}

func (e engine) metadata(m *matcherv3.MetadataMatcher, r request) bool {
	if e.grpc {
		// grpc-go: metadata never matches (an inverted one always does).
		return m.GetInvert()
	}
	var found bool
	var v any
	if m.GetFilter() == JWTFilterName && r.claims != nil {
		cur := any(map[string]any{JWTPayloadKey: r.claims})
		found = true
		for _, seg := range m.GetPath() {
			mm, ok := cur.(map[string]any)
			if !ok {
				found = false
				break
			}
			if cur, ok = mm[seg.GetKey()]; !ok {
				found = false
				break
			}
		}
		v = cur
	}
	var out bool
	switch p := m.GetValue().GetMatchPattern().(type) {
	case *matcherv3.ValueMatcher_PresentMatch:
		out = found
	case *matcherv3.ValueMatcher_StringMatch:
		s, ok := v.(string)
		out = found && ok && stringMatch(p.StringMatch, s)
	case *matcherv3.ValueMatcher_ListMatch:
		list, ok := v.([]any)
		if found && ok {
			for _, x := range list {
				if s, ok := x.(string); ok && stringMatch(p.ListMatch.GetOneOf().GetStringMatch(), s) {
					out = true
				}
			}
		}
	default:
		panic("unknown value matcher")
	}
	return out != m.GetInvert()
}

func (e engine) permission(p *rbacv3.Permission, r request) bool {
	switch x := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		return true
	case *rbacv3.Permission_AndRules:
		for _, s := range x.AndRules.GetRules() {
			if !e.permission(s, r) {
				return false
			}
		}
		return true
	case *rbacv3.Permission_OrRules:
		for _, s := range x.OrRules.GetRules() {
			if e.permission(s, r) {
				return true
			}
		}
		return false
	case *rbacv3.Permission_NotRule:
		return !e.permission(x.NotRule, r)
	case *rbacv3.Permission_Header:
		return e.headerMatch(x.Header, r)
	case *rbacv3.Permission_UrlPath:
		path, _, _ := strings.Cut(r.path, "?")
		return stringMatch(x.UrlPath.GetPath(), path)
	case *rbacv3.Permission_DestinationIp:
		return inCIDR(x.DestinationIp, r.destIP)
	case *rbacv3.Permission_DestinationPort:
		return x.DestinationPort == r.port
	case *rbacv3.Permission_RequestedServerName:
		if e.grpc {
			return stringMatch(x.RequestedServerName, "")
		}
		return stringMatch(x.RequestedServerName, r.sni)
	case *rbacv3.Permission_Metadata:
		return e.metadata(x.Metadata, r)
	}
	panic("unknown permission")
}

func (e engine) principal(p *rbacv3.Principal, r request) bool {
	switch x := p.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		return true
	case *rbacv3.Principal_AndIds:
		for _, s := range x.AndIds.GetIds() {
			if !e.principal(s, r) {
				return false
			}
		}
		return true
	case *rbacv3.Principal_OrIds:
		for _, s := range x.OrIds.GetIds() {
			if e.principal(s, r) {
				return true
			}
		}
		return false
	case *rbacv3.Principal_NotId:
		return !e.principal(x.NotId, r)
	case *rbacv3.Principal_Authenticated_:
		if r.principal == "" {
			return false
		}
		if x.Authenticated.GetPrincipalName() == nil {
			return true
		}
		return stringMatch(x.Authenticated.GetPrincipalName(), r.principal)
	case *rbacv3.Principal_DirectRemoteIp:
		return inCIDR(x.DirectRemoteIp, r.sourceIP)
	case *rbacv3.Principal_SourceIp:
		return inCIDR(x.SourceIp, r.sourceIP)
	case *rbacv3.Principal_RemoteIp:
		ip := r.remoteIP
		if e.grpc || ip == "" {
			ip = r.sourceIP
		}
		return inCIDR(x.RemoteIp, ip)
	case *rbacv3.Principal_Header:
		return e.headerMatch(x.Header, r)
	case *rbacv3.Principal_Metadata:
		return e.metadata(x.Metadata, r)
	}
	panic("unknown principal")
}

// matches reports whether any of the RBAC policies matches r.
func (e engine) matches(pols map[string]*rbacv3.Policy, r request) bool {
	for _, p := range pols {
		perm, princ := false, false
		for _, x := range p.GetPermissions() {
			perm = perm || e.permission(x, r)
		}
		for _, x := range p.GetPrincipals() {
			princ = princ || e.principal(x, r)
		}
		if perm && princ {
			return true
		}
	}
	return false
}
