package security

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	security "istio.io/api/security/v1beta1"
)

// Target is what evaluates the RBAC rules, which decides the attributes
// available.
type Target uint8

// Targets.
const (
	// EnvoyHTTP is Envoy's HTTP RBAC filter on a connection manager: every
	// attribute Istio documents.
	EnvoyHTTP Target = iota
	// EnvoyTCP is Envoy's network RBAC filter on a TCP chain: connection
	// attributes only (peers, addresses, ports, SNI).
	EnvoyTCP
	// GRPC is grpc-go's RBAC filter on a proxyless server (gRFC A41): no
	// JWT or other dynamic metadata, no SNI, no grpc- or :scheme headers.
	GRPC
)

func (t Target) String() string {
	switch t {
	case EnvoyTCP:
		return "Envoy TCP"
	case GRPC:
		return "proxyless gRPC"
	}
	return "Envoy HTTP"
}

// Reasons an attribute cannot be evaluated, shared with galley's
// findings through Evaluable.
const (
	reasonNoJWT      = "has no JWT filter, so request principals and request.auth claims are unknown to it"
	reasonHTTPOnly   = "sees connections, not HTTP requests"
	reasonNoSNI      = "does not see the TLS server name (gRPC's RBAC matches connection.sni against \"\")"
	reasonMetadata   = "has no Envoy filter metadata"
	reasonGRPCHeader = "rejects RBAC header matchers on grpc- headers and :scheme"
	reasonUnknownKey = "does not know this condition key"
	reasonBadValue   = "cannot parse a value of this attribute"
)

// Evaluable reports whether target t can evaluate a rule attribute, and
// if not, why (a phrase that follows the target's name). attr is a source
// or operation field name as written in YAML ("principals", "paths",
// "requestPrincipals") or a condition key ("request.auth.claims[group]",
// "request.headers[x-user]"). Galley's proxyless warnings ask the same
// question, so the warnings and the generated rules agree.
func Evaluable(t Target, attr string) (bool, string) {
	switch attr {
	case "principals", "notPrincipals", "namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts",
		"trustDomains", "notTrustDomains", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
		"ports", "notPorts",
		"source.ip", "remote.ip", "source.namespace", "source.principal", "source.serviceAccount", "source.trustDomain",
		"destination.ip", "destination.port":
		return true, ""
	case "requestPrincipals", "notRequestPrincipals", "request.auth.principal", "request.auth.audiences", "request.auth.presenter":
		return t == EnvoyHTTP, map[bool]string{true: reasonHTTPOnly, false: reasonNoJWT}[t == EnvoyTCP]
	case "hosts", "notHosts", "methods", "notMethods", "paths", "notPaths":
		return t != EnvoyTCP, reasonHTTPOnly
	case "connection.sni":
		return t != GRPC, reasonNoSNI
	}
	switch {
	case strings.HasPrefix(attr, "request.auth.claims["):
		if t == EnvoyTCP {
			return false, reasonHTTPOnly
		}
		return t == EnvoyHTTP, reasonNoJWT
	case strings.HasPrefix(attr, "request.headers["):
		switch t {
		case EnvoyTCP:
			return false, reasonHTTPOnly
		case GRPC:
			name := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(attr, "request.headers["), "]"))
			if name == ":scheme" || strings.HasPrefix(name, "grpc-") {
				return false, reasonGRPCHeader
			}
		}
		return true, ""
	case strings.HasPrefix(attr, "experimental.envoy.filters."):
		if t == EnvoyTCP {
			return false, reasonHTTPOnly
		}
		return t == EnvoyHTTP, reasonMetadata
	}
	return false, reasonUnknownKey
}

// Issue is one part of a rule a target cannot evaluate, and what was
// generated instead.
type Issue struct {
	// Policy is namespace/name.
	Policy string
	// Field is the path of the attribute in the policy
	// (spec.rules[0].from[1].source.requestPrincipals,
	// spec.rules[0].when[0]).
	Field  string
	Target Target
	Reason string
	// Dropped says the whole rule was left out (ALLOW and AUDIT); otherwise
	// only the attribute was (DENY and CUSTOM), so the rule matches more.
	Dropped bool
}

func (i Issue) String() string {
	effect := "the attribute is ignored, so the rule matches more requests"
	if i.Dropped {
		effect = "the rule is left out, so it never matches"
	}
	return fmt.Sprintf("%s %s: %s %s; %s", i.Policy, i.Field, i.Target, i.Reason, effect)
}

// translator turns the rules of one policy into RBAC policies for one
// target.
type translator struct {
	trustDomain string
	policy      Policy
	target      Target
	// broad: an attribute the target cannot evaluate matches everything
	// (DENY, CUSTOM, AUDIT); otherwise it drops the rule (ALLOW).
	broad bool

	issues  []Issue
	dropped bool
}

func (t *translator) unsupported(field, reason string) {
	t.issues = append(t.issues, Issue{Policy: t.policy.Name(), Field: field, Target: t.target, Reason: reason, Dropped: !t.broad})
	if !t.broad {
		t.dropped = true
	}
}

// check reports whether attr can be evaluated, recording an issue if not.
func (t *translator) check(field, attr string) bool {
	ok, reason := Evaluable(t.target, attr)
	if !ok {
		t.unsupported(field, reason)
	}
	return ok
}

// RBACPolicyName names the RBAC policy of one rule: namespace/name[i].
func RBACPolicyName(p Policy, rule int) string {
	return p.Name() + "[" + strconv.Itoa(rule) + "]"
}

// RBACPolicies translates the rules of policies, all of one action, for
// target t. broad says how an attribute t cannot evaluate fails: true
// makes the rule match more (DENY, CUSTOM, AUDIT), false drops the rule
// (ALLOW). The result is keyed by RBACPolicyName; a policy without rules
// adds nothing (for ALLOW that still denies, since the filter is there).
func (c *Config) RBACPolicies(t Target, broad bool, policies []Policy) (map[string]*rbacv3.Policy, []Issue) {
	out := map[string]*rbacv3.Policy{}
	var issues []Issue
	for _, p := range policies {
		for i, r := range p.Spec.GetRules() {
			tr := &translator{trustDomain: c.Mesh.TrustDomain, policy: p, target: t, broad: broad}
			rp := tr.rule("spec.rules["+strconv.Itoa(i)+"]", r)
			issues = append(issues, tr.issues...)
			if tr.dropped || rp == nil {
				continue
			}
			out[RBACPolicyName(p, i)] = rp
		}
	}
	return out, issues
}

// rule translates one rule: (any source) AND (any operation) AND every
// condition.
func (t *translator) rule(path string, r *security.Rule) *rbacv3.Policy {
	if r == nil {
		return nil
	}
	var perms []*rbacv3.Permission
	var princs []*rbacv3.Principal
	if len(r.GetFrom()) > 0 {
		var alts []*rbacv3.Principal
		for i, f := range r.GetFrom() {
			alts = append(alts, t.source(path+".from["+strconv.Itoa(i)+"].source", f.GetSource()))
		}
		princs = append(princs, orIDs(alts))
	}
	if len(r.GetTo()) > 0 {
		var alts []*rbacv3.Permission
		for i, to := range r.GetTo() {
			alts = append(alts, t.operation(path+".to["+strconv.Itoa(i)+"].operation", to.GetOperation()))
		}
		perms = append(perms, orRules(alts))
	}
	for i, cond := range r.GetWhen() {
		perm, princ := t.condition(path+".when["+strconv.Itoa(i)+"]", cond)
		if perm != nil {
			perms = append(perms, perm)
		}
		if princ != nil {
			princs = append(princs, princ)
		}
	}
	if t.dropped {
		return nil
	}
	return &rbacv3.Policy{
		Permissions: []*rbacv3.Permission{andRules(perms)},
		Principals:  []*rbacv3.Principal{andIDs(princs)},
	}
}

// field is one source or operation attribute: values ORed, notValues
// negated.
type fieldSpec struct {
	name   string
	values []string
	not    bool
}

func (t *translator) source(path string, s *security.Source) *rbacv3.Principal {
	if s == nil {
		return anyPrincipal()
	}
	var all []*rbacv3.Principal
	add := func(f fieldSpec, one func(string) *rbacv3.Principal) {
		if len(f.values) == 0 || !t.check(path+"."+f.name, f.name) {
			return
		}
		alts, ok := collect(f.values, one)
		if !ok {
			t.unsupported(path+"."+f.name, reasonBadValue)
			return
		}
		p := orIDs(alts)
		if f.not {
			p = notID(p)
		}
		all = append(all, p)
	}
	ns := t.policy.Object.Namespace
	add(fieldSpec{"principals", s.GetPrincipals(), false}, t.principal)
	add(fieldSpec{"notPrincipals", s.GetNotPrincipals(), true}, t.principal)
	add(fieldSpec{"requestPrincipals", s.GetRequestPrincipals(), false}, requestPrincipal)
	add(fieldSpec{"notRequestPrincipals", s.GetNotRequestPrincipals(), true}, requestPrincipal)
	add(fieldSpec{"namespaces", s.GetNamespaces(), false}, namespacePrincipal)
	add(fieldSpec{"notNamespaces", s.GetNotNamespaces(), true}, namespacePrincipal)
	add(fieldSpec{"serviceAccounts", s.GetServiceAccounts(), false}, func(v string) *rbacv3.Principal { return t.serviceAccount(ns, v) })
	add(fieldSpec{"notServiceAccounts", s.GetNotServiceAccounts(), true}, func(v string) *rbacv3.Principal { return t.serviceAccount(ns, v) })
	add(fieldSpec{"trustDomains", s.GetTrustDomains(), false}, trustDomainPrincipal)
	add(fieldSpec{"notTrustDomains", s.GetNotTrustDomains(), true}, trustDomainPrincipal)
	add(fieldSpec{"ipBlocks", s.GetIpBlocks(), false}, directIP)
	add(fieldSpec{"notIpBlocks", s.GetNotIpBlocks(), true}, directIP)
	add(fieldSpec{"remoteIpBlocks", s.GetRemoteIpBlocks(), false}, remoteIP)
	add(fieldSpec{"notRemoteIpBlocks", s.GetNotRemoteIpBlocks(), true}, remoteIP)
	return andIDs(all)
}

func (t *translator) operation(path string, o *security.Operation) *rbacv3.Permission {
	if o == nil {
		return anyPermission()
	}
	var all []*rbacv3.Permission
	add := func(f fieldSpec, one func(string) *rbacv3.Permission) {
		if len(f.values) == 0 || !t.check(path+"."+f.name, f.name) {
			return
		}
		alts, ok := collect(f.values, one)
		if !ok {
			t.unsupported(path+"."+f.name, reasonBadValue)
			return
		}
		p := orRules(alts)
		if f.not {
			p = notRule(p)
		}
		all = append(all, p)
	}
	add(fieldSpec{"hosts", o.GetHosts(), false}, hostPermission)
	add(fieldSpec{"notHosts", o.GetNotHosts(), true}, hostPermission)
	add(fieldSpec{"ports", o.GetPorts(), false}, portPermission)
	add(fieldSpec{"notPorts", o.GetNotPorts(), true}, portPermission)
	add(fieldSpec{"methods", o.GetMethods(), false}, methodPermission)
	add(fieldSpec{"notMethods", o.GetNotMethods(), true}, methodPermission)
	add(fieldSpec{"paths", o.GetPaths(), false}, pathPermission)
	add(fieldSpec{"notPaths", o.GetNotPaths(), true}, pathPermission)
	return andRules(all)
}

// condition translates one when condition to a permission or a principal
// (whichever side of Envoy's RBAC holds the attribute).
func (t *translator) condition(path string, c *security.Condition) (*rbacv3.Permission, *rbacv3.Principal) {
	key := c.GetKey()
	if !t.check(path, key) {
		return nil, nil
	}
	ns := t.policy.Object.Namespace
	var princ func(string) *rbacv3.Principal
	var perm func(string) *rbacv3.Permission
	switch {
	case key == "source.ip":
		princ = directIP
	case key == "remote.ip":
		princ = remoteIP
	case key == "source.namespace":
		princ = namespacePrincipal
	case key == "source.principal":
		princ = t.principal
	case key == "source.serviceAccount":
		princ = func(v string) *rbacv3.Principal { return t.serviceAccount(ns, v) }
	case key == "source.trustDomain":
		princ = trustDomainPrincipal
	case key == "request.auth.principal":
		princ = requestPrincipal
	case key == "request.auth.audiences":
		princ = func(v string) *rbacv3.Principal { return jwtClaim([]string{"aud"}, v) }
	case key == "request.auth.presenter":
		princ = func(v string) *rbacv3.Principal { return jwtClaim([]string{"azp"}, v) }
	case strings.HasPrefix(key, "request.auth.claims["):
		claim := bracketed(strings.TrimPrefix(key, "request.auth.claims"))
		princ = func(v string) *rbacv3.Principal { return jwtClaim(claim, v) }
	case strings.HasPrefix(key, "request.headers["):
		name := strings.TrimSuffix(strings.TrimPrefix(key, "request.headers["), "]")
		princ = func(v string) *rbacv3.Principal {
			return &rbacv3.Principal{Identifier: &rbacv3.Principal_Header{Header: headerMatch(name, v, false)}}
		}
	case strings.HasPrefix(key, "experimental.envoy.filters."):
		filter, rest, _ := strings.Cut(strings.TrimPrefix(key, "experimental."), "[")
		keys := bracketed("[" + rest)
		princ = func(v string) *rbacv3.Principal { return metadataPrincipal(filter, keys, stringPattern(v, "", false)) }
	case key == "destination.ip":
		perm = func(v string) *rbacv3.Permission {
			cidr := cidrOf(v)
			if cidr == nil {
				return nil
			}
			return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: cidr}}
		}
	case key == "destination.port":
		perm = portPermission
	case key == "connection.sni":
		perm = func(v string) *rbacv3.Permission {
			return &rbacv3.Permission{Rule: &rbacv3.Permission_RequestedServerName{RequestedServerName: stringPattern(v, "", false)}}
		}
	default:
		t.unsupported(path, reasonUnknownKey)
		return nil, nil
	}
	if princ != nil {
		vs, ok1 := collect(c.GetValues(), princ)
		nvs, ok2 := collect(c.GetNotValues(), princ)
		if !ok1 || !ok2 {
			t.unsupported(path, reasonBadValue)
			return nil, nil
		}
		var parts []*rbacv3.Principal
		if len(vs) > 0 {
			parts = append(parts, orIDs(vs))
		}
		if len(nvs) > 0 {
			parts = append(parts, notID(orIDs(nvs)))
		}
		return nil, andIDs(parts)
	}
	vs, ok1 := collect(c.GetValues(), perm)
	nvs, ok2 := collect(c.GetNotValues(), perm)
	if !ok1 || !ok2 {
		t.unsupported(path, reasonBadValue)
		return nil, nil
	}
	var parts []*rbacv3.Permission
	if len(vs) > 0 {
		parts = append(parts, orRules(vs))
	}
	if len(nvs) > 0 {
		parts = append(parts, notRule(orRules(nvs)))
	}
	return andRules(parts), nil
}

// collect translates each value; false when one cannot be (galley rejects
// such values, but an unparsable value must never be read as "matches
// nothing", which a negation would turn into "matches everything").
func collect[T any](values []string, f func(string) *T) ([]*T, bool) {
	out := make([]*T, 0, len(values))
	for _, v := range values {
		m := f(v)
		if m == nil {
			return nil, false
		}
		out = append(out, m)
	}
	return out, true
}

// bracketed splits "[a][b]" into [a b].
func bracketed(s string) []string {
	var out []string
	for strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			break
		}
		out = append(out, s[1:end])
		s = s[end+1:]
	}
	return out
}

// Principals.

// principal matches a peer identity written trust-domain/ns/NS/sa/SA,
// with "*" at either end, against the peer certificate's URI SAN
// (spiffe://...).
func (t *translator) principal(v string) *rbacv3.Principal {
	return authenticated(stringPattern(v, "spiffe://", false))
}

func (t *translator) serviceAccount(policyNS, v string) *rbacv3.Principal {
	ns, sa, ok := strings.Cut(v, "/")
	if !ok {
		ns, sa = policyNS, v
	}
	return authenticated(exact("spiffe://" + t.trustDomain + "/ns/" + ns + "/sa/" + sa))
}

// namespacePrincipal matches peers of a namespace by the /ns/NS/ part of
// their identity.
func namespacePrincipal(v string) *rbacv3.Principal {
	return authenticated(regex(".*/ns/" + segmentPattern(v) + "/.*"))
}

func trustDomainPrincipal(v string) *rbacv3.Principal {
	return authenticated(regex("spiffe://" + segmentPattern(v) + "/.*"))
}

// segmentPattern is a regular expression for one identity segment with
// an optional '*' at either end ("*" alone: any non-empty segment).
func segmentPattern(v string) string {
	switch {
	case v == "*":
		return "[^/]+"
	case strings.HasPrefix(v, "*"):
		return "[^/]*" + regexp.QuoteMeta(v[1:])
	case strings.HasSuffix(v, "*"):
		return regexp.QuoteMeta(v[:len(v)-1]) + "[^/]*"
	}
	return regexp.QuoteMeta(v)
}

func directIP(v string) *rbacv3.Principal {
	cidr := cidrOf(v)
	if cidr == nil {
		return nil
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidr}}
}

func remoteIP(v string) *rbacv3.Principal {
	cidr := cidrOf(v)
	if cidr == nil {
		return nil
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: cidr}}
}

// cidrOf reads an address or CIDR block; nil for neither (galley rejects
// those before they get here).
func cidrOf(v string) *corev3.CidrRange {
	if p, err := netip.ParsePrefix(v); err == nil {
		return &corev3.CidrRange{AddressPrefix: p.Masked().Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}
	}
	if a, err := netip.ParseAddr(v); err == nil {
		return &corev3.CidrRange{AddressPrefix: a.String(), PrefixLen: wrapperspb.UInt32(uint32(a.BitLen()))}
	}
	return nil
}

// JWT attributes. Envoy's jwt_authn filter writes each verified token's
// payload into its dynamic metadata under JWTPayloadKey; the rules match
// the claims there.

// JWTFilterName is the name of Envoy's JWT filter, under which it writes
// dynamic metadata.
const JWTFilterName = "envoy.filters.http.jwt_authn"

// JWTPayloadKey is the metadata key of a verified token's payload.
const JWTPayloadKey = "payload"

// requestPrincipal matches iss/sub, with "*" at either end. The issuer
// may contain '/', so the split is at the last '/': the subject is what
// follows it. "*" alone matches any verified token.
func requestPrincipal(v string) *rbacv3.Principal {
	switch {
	case v == "*":
		return metadataPrincipal(JWTFilterName, []string{JWTPayloadKey, "iss"}, nil)
	case strings.HasSuffix(v, "*"):
		pre := v[:len(v)-1]
		if i := strings.LastIndexByte(pre, '/'); i >= 0 {
			return andIDs([]*rbacv3.Principal{
				jwtClaim([]string{"iss"}, pre[:i]),
				jwtClaim([]string{"sub"}, pre[i+1:]+"*"),
			})
		}
		return jwtClaim([]string{"iss"}, v)
	case strings.HasPrefix(v, "*"):
		suf := v[1:]
		if i := strings.LastIndexByte(suf, '/'); i >= 0 {
			return andIDs([]*rbacv3.Principal{
				jwtClaim([]string{"iss"}, "*"+suf[:i]),
				jwtClaim([]string{"sub"}, suf[i+1:]),
			})
		}
		return jwtClaim([]string{"sub"}, v)
	}
	i := strings.LastIndexByte(v, '/')
	if i < 0 {
		// Not iss/sub: no verified token's principal looks like this.
		return neverPrincipal()
	}
	return andIDs([]*rbacv3.Principal{jwtClaim([]string{"iss"}, v[:i]), jwtClaim([]string{"sub"}, v[i+1:])})
}

// jwtClaim matches a claim of the verified payload (a path for nested
// claims) whose value, or one of whose list items, matches v. An empty
// pattern part ("iss" of "/sub") matches only an empty claim.
func jwtClaim(claim []string, v string) *rbacv3.Principal {
	path := append([]string{JWTPayloadKey}, claim...)
	if v == "*" {
		return metadataPrincipal(JWTFilterName, path, nil)
	}
	sm := stringPattern(v, "", false)
	return orIDs([]*rbacv3.Principal{
		metadataPrincipal(JWTFilterName, path, sm),
		{Identifier: &rbacv3.Principal_Metadata{Metadata: &matcherv3.MetadataMatcher{
			Filter: JWTFilterName,
			Path:   segments(path),
			Value: &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_ListMatch{ListMatch: &matcherv3.ListMatcher{
				MatchPattern: &matcherv3.ListMatcher_OneOf{OneOf: &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: sm}}},
			}}},
		}}},
	})
}

// metadataPrincipal matches dynamic metadata of filter at path: against
// sm, or present when sm is nil.
func metadataPrincipal(filter string, path []string, sm *matcherv3.StringMatcher) *rbacv3.Principal {
	v := &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_PresentMatch{PresentMatch: true}}
	if sm != nil {
		v = &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: sm}}
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Metadata{Metadata: &matcherv3.MetadataMatcher{Filter: filter, Path: segments(path), Value: v}}}
}

func segments(path []string) []*matcherv3.MetadataMatcher_PathSegment {
	out := make([]*matcherv3.MetadataMatcher_PathSegment, len(path))
	for i, k := range path {
		out[i] = &matcherv3.MetadataMatcher_PathSegment{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: k}}
	}
	return out
}

// Permissions.

// hostPermission matches the request's authority, case-insensitively, as
// host names are.
func hostPermission(v string) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: headerMatch(":authority", v, true)}}
}

func portPermission(v string) *rbacv3.Permission {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		return nil
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: uint32(n)}}
}

func methodPermission(v string) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: headerMatch(":method", v, false)}}
}

// pathPermission matches the path without its query: exact, "/prefix*",
// "*suffix", "*", or a template with {*} (one segment) and {**} (the rest).
func pathPermission(v string) *rbacv3.Permission {
	var sm *matcherv3.StringMatcher
	if strings.Contains(v, "{*}") || strings.Contains(v, "{**}") {
		sm = regex(templateRegex(v))
	} else {
		sm = stringPattern(v, "", false)
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: sm}}}}
}

// templateRegex turns a path template into a regular expression: {*} is
// one segment, {**} any number (it is last; galley checks).
func templateRegex(v string) string {
	var b strings.Builder
	for i, seg := range strings.Split(v, "/") {
		if i > 0 {
			b.WriteByte('/')
		}
		switch seg {
		case "{*}":
			b.WriteString("[^/]+")
		case "{**}":
			b.WriteString(".*")
		default:
			b.WriteString(regexp.QuoteMeta(seg))
		}
	}
	return b.String()
}

// headerMatch matches a header's value with "*" at either end ("*":
// present).
func headerMatch(name, v string, ignoreCase bool) *routev3.HeaderMatcher {
	if v == "*" {
		return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}
	}
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: stringPattern(v, "", ignoreCase)}}
}

// String matchers.

// stringPattern matches v with "*" at either end: "*" is any non-empty
// value, "a*" a prefix, "*a" a suffix, anything else exact; prefix is
// prepended to exact and prefix patterns (spiffe:// for principals).
func stringPattern(v, prefix string, ignoreCase bool) *matcherv3.StringMatcher {
	var sm *matcherv3.StringMatcher
	switch {
	case v == "*":
		sm = regex(".+")
	case strings.HasSuffix(v, "*"):
		sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: prefix + v[:len(v)-1]}}
		if prefix+v[:len(v)-1] == "" {
			sm = regex(".+")
		}
	case strings.HasPrefix(v, "*"):
		sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v[1:]}}
	default:
		sm = exact(prefix + v)
	}
	sm.IgnoreCase = ignoreCase && sm.GetSafeRegex() == nil
	return sm
}

func exact(v string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}
}

func regex(re string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}
}

// Combinators. One element is itself; none is "any" for and, and the
// caller's choice for or.

func anyPrincipal() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
}

func anyPermission() *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
}

func neverPrincipal() *rbacv3.Principal { return notID(anyPrincipal()) }

func neverPermission() *rbacv3.Permission { return notRule(anyPermission()) }

func authenticated(sm *matcherv3.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: sm}}}
}

func andIDs(ps []*rbacv3.Principal) *rbacv3.Principal {
	switch len(ps) {
	case 0:
		return anyPrincipal()
	case 1:
		return ps[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ps}}}
}

func orIDs(ps []*rbacv3.Principal) *rbacv3.Principal {
	switch len(ps) {
	case 0:
		return neverPrincipal()
	case 1:
		return ps[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ps}}}
}

func notID(p *rbacv3.Principal) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: p}}
}

func andRules(ps []*rbacv3.Permission) *rbacv3.Permission {
	switch len(ps) {
	case 0:
		return anyPermission()
	case 1:
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func orRules(ps []*rbacv3.Permission) *rbacv3.Permission {
	switch len(ps) {
	case 0:
		return neverPermission()
	case 1:
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func notRule(p *rbacv3.Permission) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: p}}
}
