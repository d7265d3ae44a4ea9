package validate

import (
	"net/http"
	"regexp"
	"strconv"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/galley/api"
)

// jwtClaimPrefix marks a header match on a JWT claim, which Istio supports
// on gateways only.
const jwtClaimPrefix = "@request.auth.claims"

// maxRegexLen mirrors the cap Istio puts on regexes: Envoy limits RE2 program
// size, which always exceeds the pattern length.
const maxRegexLen = 1024

func (c *checker) virtualService(vs *networking.VirtualService) {
	delegate := len(vs.GetHosts()) == 0
	if delegate {
		// A VirtualService without hosts is only usable as a delegate.
		if len(vs.GetGateways()) > 0 {
			c.errf(api.CodeDelegate, "spec.gateways", "a VirtualService without hosts is a delegate and must not list gateways; the root VirtualService binds gateways")
		}
		if len(vs.GetTls()) > 0 {
			c.errf(api.CodeDelegate, "spec.tls", "a VirtualService without hosts is a delegate, and delegates support HTTP routes only")
		}
		if len(vs.GetTcp()) > 0 {
			c.errf(api.CodeDelegate, "spec.tcp", "a VirtualService without hosts is a delegate, and delegates support HTTP routes only")
		}
	}

	onGateway := false
	for i, gw := range vs.GetGateways() {
		c.gatewayName(at("spec", "gateways", i), gw)
		if gw != "mesh" {
			onGateway = true
		}
	}
	onMesh := !onGateway

	hostsValid := true
	for i, h := range vs.GetHosts() {
		p := at("spec", "hosts", i)
		if err := checkWildcardHost(h); err != nil {
			if !isIP(h) {
				c.errIf(api.CodeHost, p, err)
				hostsValid = false
			}
			continue
		}
		if h == "*" && onMesh {
			c.errf(api.CodeHost, p, "host \"*\" is only allowed on VirtualServices bound to a gateway; on the mesh it would capture all traffic")
			hostsValid = false
		}
	}
	if hostsValid {
		hosts := vs.GetHosts()
		for i := range hosts {
			for j := i + 1; j < len(hosts); j++ {
				if hostsOverlap(hosts[i], hosts[j]) {
					c.errf(api.CodeDuplicate, at("spec", "hosts", j), "host %q overlaps host %q listed earlier; list each host once", hosts[j], hosts[i])
				}
			}
		}
	}

	if len(vs.GetHttp()) == 0 && len(vs.GetTcp()) == 0 && len(vs.GetTls()) == 0 {
		c.errf(api.CodeRequired, "spec", "VirtualService has no routes; add http, tls or tcp routes")
	}
	for i, r := range vs.GetHttp() {
		c.httpRoute(at("spec", "http", i), r, delegate, onGateway)
	}
	for i, r := range vs.GetTls() {
		c.tlsRoute(at("spec", "tls", i), r, vs, onGateway)
	}
	for i, r := range vs.GetTcp() {
		c.tcpRoute(at("spec", "tcp", i), r)
	}
	c.exportTo("spec.exportTo", vs.GetExportTo(), false, false)
}

// hostsOverlap reports whether two host patterns match a common host, e.g.
// "*.example.com" and "api.example.com".
func hostsOverlap(a, b string) bool {
	aw, bw := strings.HasPrefix(a, "*"), strings.HasPrefix(b, "*")
	switch {
	case aw && bw:
		if len(a) < len(b) {
			return strings.HasSuffix(b[1:], a[1:])
		}
		return strings.HasSuffix(a[1:], b[1:])
	case aw:
		return strings.HasSuffix(b, a[1:])
	case bw:
		return strings.HasSuffix(a, b[1:])
	}
	return a == b
}

// gatewayName checks a gateway reference: "mesh", "namespace/name", or a
// bare name in the VirtualService's namespace.
func (c *checker) gatewayName(path, gw string) {
	if gw == "mesh" {
		return
	}
	ns, name, ok := strings.Cut(gw, "/")
	if !ok {
		if strings.Contains(gw, ".") {
			parts := strings.SplitN(gw, ".", 2)
			c.warnf(api.CodeDeprecated, path, "gateway reference %q uses the legacy name.namespace form; write %s/%s", gw, parts[1], parts[0])
		}
		if err := checkFQDN(gw); err != nil {
			c.errf(api.CodeMatch, path, "gateway reference %q is not a valid name; use \"namespace/name\" or \"mesh\"", gw)
		}
		return
	}
	if ns == "" || name == "" {
		c.errf(api.CodeMatch, path, "gateway reference %q must be namespace/name with both parts set", gw)
		return
	}
	if !isDNSLabel(ns) {
		c.errf(api.CodeMatch, path, "gateway reference %q has an invalid namespace %q", gw, ns)
	}
	if !isDNSLabel(name) {
		c.errf(api.CodeMatch, path, "gateway reference %q has an invalid name %q", gw, name)
	}
}

func (c *checker) httpRoute(p string, r *networking.HTTPRoute, inDelegate, onGateway bool) {
	if r == nil {
		c.errf(api.CodeRequired, p, "HTTP route must not be null")
		return
	}
	c.httpRouteActions(p, r, inDelegate)
	for i, m := range r.GetMatch() {
		c.httpMatch(at(p, "match", i), m, onGateway)
	}
	c.headerOps(p+".headers", r.GetHeaders())
	c.cors(p+".corsPolicy", r.GetCorsPolicy())
	c.fault(p+".fault", r.GetFault())

	//nolint:staticcheck // mirrorPercent is deprecated but still accepted.
	if mp := r.GetMirrorPercent(); mp != nil {
		if mp.GetValue() > 100 {
			c.errf(api.CodePercent, p+".mirrorPercent", "mirrorPercent %d is more than 100", mp.GetValue())
		}
		c.warnf(api.CodeDeprecated, p+".mirrorPercent", "mirrorPercent is deprecated; use mirrorPercentage: {value: %d}", mp.GetValue())
	}
	if mp := r.GetMirrorPercentage(); mp != nil {
		if v := mp.GetValue(); v < 0 || v > 100 {
			c.errf(api.CodeMirror, p+".mirrorPercentage.value", "mirror percentage %g is not in 0..100", v)
		}
	}
	if r.GetMirror() != nil {
		c.destination(p+".mirror", r.GetMirror(), api.CodeMirror)
	}
	for i, m := range r.GetMirrors() {
		mp := at(p, "mirrors", i)
		if m == nil || m.GetDestination() == nil {
			c.errf(api.CodeMirror, mp, "mirror needs a destination")
			continue
		}
		c.destination(mp+".destination", m.GetDestination(), api.CodeMirror)
		if pc := m.GetPercentage(); pc != nil {
			if v := pc.GetValue(); v < 0 || v > 100 {
				c.errf(api.CodeMirror, mp+".percentage.value", "mirror percentage %g is not in 0..100", v)
			}
		}
	}
	c.redirect(p+".redirect", r.GetRedirect(), r.GetMatch())
	c.directResponse(p+".directResponse", r.GetDirectResponse())
	c.retries(p+".retries", r.GetRetries())
	c.rewrite(p+".rewrite", r.GetRewrite())
	c.authorityRewrite(p, r)
	c.httpDestinations(p, r.GetRoute())
	if t := r.GetTimeout(); t != nil {
		c.duration(p+".timeout", t)
	}
	if d := r.GetDelegate(); d != nil {
		if d.GetName() == "" {
			c.errf(api.CodeDelegate, p+".delegate.name", "delegate needs the name of the VirtualService to delegate to")
		} else if !isK8sSubdomain(d.GetName()) {
			c.errf(api.CodeDelegate, p+".delegate.name", "delegate name %q is not a valid object name", d.GetName())
		}
		if ns := d.GetNamespace(); ns != "" && !isK8sLabel(ns) {
			c.errf(api.CodeDelegate, p+".delegate.namespace", "delegate namespace %q is not a valid namespace", ns)
		}
	}
}

// httpRouteActions checks that a route does one thing: forward, redirect,
// answer directly, or delegate.
func (c *checker) httpRouteActions(p string, r *networking.HTTPRoute, inDelegate bool) {
	if r.GetDelegate() != nil {
		if inDelegate {
			c.errf(api.CodeDelegate, p+".delegate", "a delegate VirtualService cannot delegate again; only one level of delegation is supported")
		}
		if r.GetRedirect() != nil {
			c.errf(api.CodeDelegate, p+".redirect", "a route with delegate must not also redirect; move the redirect into the delegate")
		}
		if len(r.GetRoute()) > 0 {
			c.errf(api.CodeDelegate, p+".route", "a route with delegate must not also have route destinations; move them into the delegate")
		}
		return
	}
	switch {
	case r.GetRedirect() != nil:
		for _, other := range []struct {
			set  bool
			name string
		}{
			{len(r.GetRoute()) > 0, "route"},
			{r.GetFault() != nil, "fault"},
			{r.GetRewrite() != nil, "rewrite"},
			{r.GetDirectResponse() != nil, "directResponse"},
		} {
			if other.set {
				c.errf(api.CodeRouteConflict, p+"."+other.name, "a route with redirect cannot also have %s; split it into two routes", other.name)
			}
		}
	case r.GetDirectResponse() != nil:
		for _, other := range []struct {
			set  bool
			name string
		}{
			{len(r.GetRoute()) > 0, "route"},
			{r.GetFault() != nil, "fault"},
			{r.GetRewrite() != nil, "rewrite"},
		} {
			if other.set {
				c.errf(api.CodeRouteConflict, p+"."+other.name, "a route with directResponse cannot also have %s", other.name)
			}
		}
	case len(r.GetRoute()) == 0:
		c.errf(api.CodeRequired, p, "HTTP route needs route destinations, a redirect, a directResponse or a delegate")
	}
	if r.GetMirror() != nil && len(r.GetMirrors()) > 0 {
		c.errf(api.CodeRouteConflict, p+".mirrors", "use either mirror or mirrors, not both")
	}
}

func (c *checker) httpMatch(p string, m *networking.HTTPMatchRequest, onGateway bool) {
	if m == nil {
		c.errf(api.CodeMatch, p, "match must not be null")
		return
	}
	for _, name := range sortedKeys(m.GetHeaders()) {
		hp := key(p, "headers", name)
		c.matchHeaderName(hp, name, onGateway)
		sm := m.GetHeaders()[name]
		if sm == nil {
			c.errf(api.CodeMatch, hp, "header match for %q must not be null", name)
			continue
		}
		c.stringMatch(hp, sm, false)
	}
	for _, name := range sortedKeys(m.GetWithoutHeaders()) {
		hp := key(p, "withoutHeaders", name)
		c.matchHeaderName(hp, name, onGateway)
		// A regex of "*" means "header present", not an RE2 pattern.
		if sm := m.GetWithoutHeaders()[name]; sm != nil && sm.GetRegex() != "*" {
			c.stringMatch(hp, sm, false)
		}
	}
	// An empty URI prefix is allowed (it matches everything); empty scheme,
	// method or authority prefixes are rejected by Envoy.
	c.stringMatch(p+".uri", m.GetUri(), true)
	c.stringMatch(p+".scheme", m.GetScheme(), false)
	c.stringMatch(p+".method", m.GetMethod(), false)
	c.stringMatch(p+".authority", m.GetAuthority(), false)
	for _, name := range sortedKeys(m.GetQueryParams()) {
		c.stringMatch(key(p, "queryParams", name), m.GetQueryParams()[name], false)
	}
	if m.GetPort() != 0 {
		c.port(p+".port", m.GetPort())
	}
	c.labels(p+".sourceLabels", m.GetSourceLabels(), api.CodeSelector)
	for i, gw := range m.GetGateways() {
		c.gatewayName(at(p, "gateways", i), gw)
	}
	if ns := m.GetSourceNamespace(); ns != "" && !isDNSLabel(ns) {
		c.errf(api.CodeMatch, p+".sourceNamespace", "sourceNamespace %q is not a valid namespace name", ns)
	}
}

// matchHeaderName checks the name of a header match.
func (c *checker) matchHeaderName(p, name string, onGateway bool) {
	switch {
	case name == "":
		c.errf(api.CodeHeader, p, "header name must not be empty")
	case strings.HasPrefix(name, jwtClaimPrefix+".") || strings.HasPrefix(name, jwtClaimPrefix+"["):
		if !onGateway {
			c.errf(api.CodeHeader, p, "JWT claim routing (%s) works only on VirtualServices bound to a gateway", name)
		}
	case pseudoHeaders[name]:
	case !isToken(name):
		c.errf(api.CodeHeader, p, "%q is not a valid HTTP header name: use letters, digits and !#$%%&'*+-.^_`|~", name)
	}
}

// stringMatch checks a StringMatch: prefixes must be non-empty (except for
// URIs) and regexes must compile as RE2.
func (c *checker) stringMatch(p string, sm *networking.StringMatch, emptyPrefixOK bool) {
	if sm == nil {
		return
	}
	switch mt := sm.GetMatchType().(type) {
	case *networking.StringMatch_Prefix:
		if mt.Prefix == "" && !emptyPrefixOK {
			c.errf(api.CodeMatch, p+".prefix", "prefix match must not be empty; remove the match to match everything")
		}
	case *networking.StringMatch_Regex:
		c.regex(p+".regex", mt.Regex)
	}
}

// regex checks an RE2 pattern.
func (c *checker) regex(p, re string) {
	if re == "" {
		c.errf(api.CodeRegex, p, "regex must not be empty")
		return
	}
	if len(re) > maxRegexLen {
		c.errf(api.CodeRegex, p, "regex is %d characters long; the limit is %d", len(re), maxRegexLen)
		return
	}
	if _, err := regexp.Compile(re); err != nil {
		msg := err.Error()
		msg = strings.TrimPrefix(msg, "error parsing regexp: ")
		c.errf(api.CodeRegex, p, "invalid RE2 regex %q: %s (RE2 has no lookaround or backreferences)", re, msg)
	}
}

// headerOps checks header manipulation: names and values.
func (c *checker) headerOps(p string, h *networking.Headers) {
	if h == nil {
		return
	}
	if req := h.GetRequest(); req != nil {
		rp := p + ".request"
		for _, op := range []struct {
			name string
			m    map[string]string
		}{{"set", req.GetSet()}, {"add", req.GetAdd()}} {
			for _, n := range sortedKeys(op.m) {
				hp := key(rp, op.name, n)
				c.headerOpName(hp, n, true)
				c.errIf(api.CodeHeader, hp, checkHeaderValue(op.m[n]))
			}
		}
		for i, n := range req.GetRemove() {
			c.headerOpName(at(rp, "remove", i), n, false)
		}
	}
	if resp := h.GetResponse(); resp != nil {
		rp := p + ".response"
		for _, op := range []struct {
			name string
			m    map[string]string
		}{{"set", resp.GetSet()}, {"add", resp.GetAdd()}} {
			for _, n := range sortedKeys(op.m) {
				hp := key(rp, op.name, n)
				c.headerOpName(hp, n, false)
				c.errIf(api.CodeHeader, hp, checkHeaderValue(op.m[n]))
			}
		}
		for i, n := range resp.GetRemove() {
			c.headerOpName(at(rp, "remove", i), n, false)
		}
	}
}

// headerOpName checks a header name to set, add or remove. Only request
// set/add may touch the authority (":authority" or "host").
func (c *checker) headerOpName(p, name string, authorityOK bool) {
	if name == "" {
		c.errf(api.CodeHeader, p, "header name must not be empty")
		return
	}
	isAuthority := strings.EqualFold(name, ":authority") || strings.EqualFold(name, "host")
	if isAuthority && authorityOK {
		return
	}
	if strings.HasPrefix(name, ":") || strings.EqualFold(name, "host") {
		c.errf(api.CodeHeader, p, "header %q cannot be modified here; pseudo-headers and Host are managed by the proxy", name)
		return
	}
	if !isToken(name) {
		c.errf(api.CodeHeader, p, "%q is not a valid HTTP header name", name)
	}
}

// corsMethods are the methods CORS allowMethods may list.
var corsMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodConnect: true,
	http.MethodOptions: true, http.MethodTrace: true, "*": true,
}

func (c *checker) cors(p string, cp *networking.CorsPolicy) {
	if cp == nil {
		return
	}
	//nolint:staticcheck // allowOrigin is deprecated but still accepted.
	if len(cp.GetAllowOrigin()) > 0 {
		c.warnf(api.CodeDeprecated, p+".allowOrigin", "allowOrigin is deprecated; use allowOrigins with exact, prefix or regex matches")
	}
	for i, o := range cp.GetAllowOrigins() {
		op := at(p, "allowOrigins", i)
		if o == nil || o.GetExact() == "" && o.GetPrefix() == "" && o.GetRegex() == "" {
			c.errf(api.CodeCORS, op, "allowOrigins entry needs a non-empty exact, prefix or regex")
			continue
		}
		if o.GetRegex() != "" {
			c.regex(op+".regex", o.GetRegex())
		}
	}
	for i, m := range cp.GetAllowMethods() {
		if !corsMethods[m] {
			c.errf(api.CodeCORS, at(p, "allowMethods", i), "%q is not an HTTP method; use GET, HEAD, POST, PUT, PATCH, DELETE, CONNECT, OPTIONS, TRACE or *", m)
		}
	}
	for _, f := range []struct {
		name string
		list []string
	}{{"allowHeaders", cp.GetAllowHeaders()}, {"exposeHeaders", cp.GetExposeHeaders()}} {
		for i, h := range f.list {
			if h != "*" && !isToken(h) {
				c.errf(api.CodeCORS, at(p, f.name, i), "%q is not a valid header name", h)
			}
		}
	}
	if ma := cp.GetMaxAge(); ma != nil {
		c.duration(p+".maxAge", ma)
		if ma.GetNanos() != 0 {
			c.errf(api.CodeCORS, p+".maxAge", "maxAge must be a whole number of seconds")
		}
	}
}

// grpcStatuses are the gRPC status code names fault injection accepts.
var grpcStatuses = map[string]bool{
	"OK": true, "CANCELLED": true, "UNKNOWN": true, "INVALID_ARGUMENT": true, "DEADLINE_EXCEEDED": true,
	"NOT_FOUND": true, "ALREADY_EXISTS": true, "PERMISSION_DENIED": true, "RESOURCE_EXHAUSTED": true,
	"FAILED_PRECONDITION": true, "ABORTED": true, "OUT_OF_RANGE": true, "UNIMPLEMENTED": true,
	"INTERNAL": true, "UNAVAILABLE": true, "DATA_LOSS": true, "UNAUTHENTICATED": true,
}

func (c *checker) fault(p string, f *networking.HTTPFaultInjection) {
	if f == nil {
		return
	}
	if f.GetAbort() == nil && f.GetDelay() == nil {
		c.errf(api.CodeFault, p, "fault needs an abort, a delay or both")
	}
	if a := f.GetAbort(); a != nil {
		ap := p + ".abort"
		c.fraction(ap+".percentage", a.GetPercentage())
		switch et := a.GetErrorType().(type) {
		case *networking.HTTPFaultInjection_Abort_HttpStatus:
			if et.HttpStatus < 200 || et.HttpStatus > 599 {
				c.errf(api.CodeFault, ap+".httpStatus", "abort httpStatus %d is not in 200..599", et.HttpStatus)
			}
		case *networking.HTTPFaultInjection_Abort_GrpcStatus:
			if !grpcStatuses[et.GrpcStatus] {
				c.errf(api.CodeFault, ap+".grpcStatus", "abort grpcStatus %q is not a gRPC status name such as UNAVAILABLE or NOT_FOUND", et.GrpcStatus)
			}
		case *networking.HTTPFaultInjection_Abort_Http2Error:
			c.errf(api.CodeFault, ap+".http2Error", "http2Error aborts are not supported; use httpStatus or grpcStatus")
		default:
			c.warnf(api.CodeFault, ap, "abort has no httpStatus or grpcStatus, so it does nothing")
		}
	}
	if d := f.GetDelay(); d != nil {
		dp := p + ".delay"
		c.fraction(dp+".percentage", d.GetPercentage())
		//nolint:staticcheck // percent is deprecated but still accepted.
		if d.GetPercent() != 0 {
			c.percent(dp+".percent", d.GetPercent())
			c.warnf(api.CodeDeprecated, dp+".percent", "delay.percent is deprecated; use percentage: {value: %d}", d.GetPercent())
		}
		switch dt := d.GetHttpDelayType().(type) {
		case *networking.HTTPFaultInjection_Delay_FixedDelay:
			c.duration(dp+".fixedDelay", dt.FixedDelay)
		case *networking.HTTPFaultInjection_Delay_ExponentialDelay:
			c.errf(api.CodeFault, dp+".exponentialDelay", "exponentialDelay is not supported; use fixedDelay")
		default:
			c.errf(api.CodeFault, dp, "delay needs fixedDelay")
		}
	}
}

// destination checks a route destination: host, subset and port.
func (c *checker) destination(p string, d *networking.Destination, code api.Code) {
	if d == nil {
		c.errf(code, p, "destination is required")
		return
	}
	switch h := d.GetHost(); {
	case h == "":
		c.errf(api.CodeRequired, p+".host", "destination needs a host")
	case h == "*":
		c.errf(api.CodeHost, p+".host", "destination host cannot be \"*\"; name the service to route to")
	default:
		c.errIf(api.CodeHost, p+".host", checkWildcardHost(h))
	}
	if s := d.GetSubset(); s != "" && !isDNSLabel(s) {
		c.errf(api.CodeSubset, p+".subset", "subset name %q is not a valid DNS label", s)
	}
	if d.GetPort() != nil {
		c.port(p+".port.number", d.GetPort().GetNumber())
	}
}

func (c *checker) httpDestinations(p string, ds []*networking.HTTPRouteDestination) {
	total, negative := int64(0), false
	for i, d := range ds {
		dp := at(p, "route", i)
		if d == nil {
			c.errf(api.CodeRequired, dp, "route destination must not be null")
			continue
		}
		c.destination(dp+".destination", d.GetDestination(), api.CodeRequired)
		c.headerOps(dp+".headers", d.GetHeaders())
		if d.GetWeight() < 0 {
			c.errf(api.CodeWeight, dp+".weight", "weight %d is negative", d.GetWeight())
			negative = true
		}
		total += int64(d.GetWeight())
	}
	c.weightSum(p, "route", len(ds), total, negative)
}

// weightSum checks the weights of several destinations. Istio rejects only
// an all-zero split; Envoy divides traffic in proportion to the weights, so
// a sum other than 100 works but rarely means what its author thought.
func (c *checker) weightSum(p, field string, n int, total int64, negative bool) {
	if n < 2 || negative {
		return
	}
	switch {
	case total == 0:
		c.errf(api.CodeWeight, p+"."+field, "all %d destinations have weight 0, so no traffic can be sent; give them weights that sum to 100", n)
	case total != 100:
		c.warnf(api.CodeWeightSum, p+"."+field, "weights sum to %d, not 100; traffic is split in proportion to the weights", total)
	}
}

func (c *checker) redirect(p string, r *networking.HTTPRedirect, matches []*networking.HTTPMatchRequest) {
	if r == nil {
		return
	}
	if r.GetUri() != "" && r.GetPrefixRewrite() != "" {
		c.errf(api.CodeRedirect, p, "redirect may set uri or prefixRewrite, not both")
	}
	if r.GetPrefixRewrite() != "" {
		for i, m := range matches {
			if m.GetUri() == nil {
				continue
			}
			if _, isPrefix := m.GetUri().GetMatchType().(*networking.StringMatch_Prefix); !isPrefix {
				c.errf(api.CodeRedirect, p+".prefixRewrite", "prefixRewrite needs every uri match to be a prefix match, but match[%d] is not", i)
				break
			}
		}
	}
	if r.GetUri() == "" && r.GetPrefixRewrite() == "" && r.GetAuthority() == "" && r.GetRedirectPort() == nil && r.GetScheme() == "" {
		c.errf(api.CodeRedirect, p, "redirect must change at least one of uri, prefixRewrite, authority, scheme or port")
	}
	if rc := r.GetRedirectCode(); rc != 0 && (rc < 300 || rc > 399) {
		c.errf(api.CodeRedirect, p+".redirectCode", "redirectCode %d is not a 3xx status", rc)
	}
	if s := r.GetScheme(); s != "" && s != "http" && s != "https" {
		c.errf(api.CodeRedirect, p+".scheme", "redirect scheme %q must be http or https", s)
	}
	if rp, ok := r.GetRedirectPort().(*networking.HTTPRedirect_Port); ok {
		c.port(p+".port", rp.Port)
	}
}

func (c *checker) directResponse(p string, d *networking.HTTPDirectResponse) {
	if d == nil {
		return
	}
	if s := d.GetStatus(); s < 200 || s > 599 {
		c.errf(api.CodeRedirect, p+".status", "directResponse status %d is not in 200..599", s)
	}
	if b := d.GetBody(); b != nil {
		size := len(b.GetString_()) + len(b.GetBytes())
		switch {
		case size > 1<<20:
			c.errf(api.CodeRedirect, p+".body", "directResponse body is %d bytes; the limit is 1 MiB", size)
		case size > 100<<10:
			c.warnf(api.CodeSurprising, p+".body", "directResponse body is %d bytes; bodies over 100 KiB slow down config distribution", size)
		}
	}
}

// retryOnPolicies are Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on
// conditions; retryOn may also list HTTP status codes.
var retryOnPolicies = map[string]bool{
	"5xx": true, "gateway-error": true, "reset": true, "reset-before-request": true,
	"connect-failure": true, "retriable-4xx": true, "refused-stream": true,
	"retriable-status-codes": true, "retriable-headers": true, "envoy-ratelimited": true,
	"http3-post-connect-failure": true,
	"cancelled":                  true, "deadline-exceeded": true, "internal": true, "resource-exhausted": true, "unavailable": true,
}

func (c *checker) retries(p string, r *networking.HTTPRetry) {
	if r == nil {
		return
	}
	if r.GetAttempts() < 0 {
		c.errf(api.CodeRetry, p+".attempts", "attempts %d is negative", r.GetAttempts())
	}
	if r.GetAttempts() == 0 && (r.GetPerTryTimeout() != nil || r.GetRetryOn() != "" || r.GetRetryRemoteLocalities() != nil) {
		c.errf(api.CodeRetry, p+".attempts", "attempts is 0, which disables retries, but perTryTimeout, retryOn or retryRemoteLocalities is set; set attempts or remove them")
	}
	c.duration(p+".perTryTimeout", r.GetPerTryTimeout())
	c.duration(p+".backoff", r.GetBackoff())
	if ro := r.GetRetryOn(); ro != "" {
		for _, pol := range strings.Split(ro, ",") {
			pol = strings.TrimSpace(pol)
			if retryOnPolicies[pol] {
				continue
			}
			if n, err := strconv.Atoi(pol); err == nil && http.StatusText(n) != "" {
				continue
			}
			c.errf(api.CodeRetry, p+".retryOn", "%q is not a retryOn condition; use e.g. 5xx, gateway-error, connect-failure, retriable-4xx, reset or an HTTP status code", pol)
		}
	}
}

func (c *checker) rewrite(p string, r *networking.HTTPRewrite) {
	if r == nil {
		return
	}
	if r.GetUri() != "" && r.GetUriRegexRewrite() != nil {
		c.errf(api.CodeRedirect, p, "rewrite may set uri or uriRegexRewrite, not both")
	}
	if r.GetUri() == "" && r.GetUriRegexRewrite() == nil && r.GetAuthority() == "" {
		c.errf(api.CodeRedirect, p, "rewrite must set uri, uriRegexRewrite or authority")
	}
	if rr := r.GetUriRegexRewrite(); rr != nil {
		if rr.GetMatch() == "" || rr.GetRewrite() == "" {
			c.errf(api.CodeRedirect, p+".uriRegexRewrite", "uriRegexRewrite needs both match and rewrite")
		}
		if rr.GetMatch() != "" {
			c.regex(p+".uriRegexRewrite.match", rr.GetMatch())
		}
	}
}

// authorityRewrite rejects setting the authority in two places, where the
// result would depend on filter order.
func (c *checker) authorityRewrite(p string, r *networking.HTTPRoute) {
	count := 0
	if r.GetRewrite().GetAuthority() != "" {
		count++
	}
	req := r.GetHeaders().GetRequest()
	for _, m := range []map[string]string{req.GetSet(), req.GetAdd()} {
		for k := range m {
			if strings.EqualFold(k, ":authority") || strings.EqualFold(k, "host") {
				count++
			}
		}
	}
	if count > 1 {
		c.errf(api.CodeRouteConflict, p+".headers.request", "the authority is rewritten more than once (rewrite.authority and/or headers); set it in one place")
	}
}

func (c *checker) tlsRoute(p string, r *networking.TLSRoute, vs *networking.VirtualService, onGateway bool) {
	if r == nil {
		c.errf(api.CodeRequired, p, "TLS route must not be null")
		return
	}
	if len(r.GetMatch()) == 0 {
		c.errf(api.CodeRequired, p+".match", "TLS route needs at least one match with sniHosts")
	}
	for i, m := range r.GetMatch() {
		mp := at(p, "match", i)
		if m == nil {
			c.errf(api.CodeMatch, mp, "match must not be null")
			continue
		}
		if len(m.GetSniHosts()) == 0 {
			c.errf(api.CodeRequired, mp+".sniHosts", "TLS match needs at least one SNI host")
		}
		for j, sni := range m.GetSniHosts() {
			c.sniHost(at(mp, "sniHosts", j), sni, vs)
		}
		for j, s := range m.GetDestinationSubnets() {
			c.errIf(api.CodeAddress, at(mp, "destinationSubnets", j), checkIPOrCIDR(s))
		}
		if m.GetPort() != 0 {
			c.port(mp+".port", m.GetPort())
		}
		c.labels(mp+".sourceLabels", m.GetSourceLabels(), api.CodeSelector)
		for j, gw := range m.GetGateways() {
			c.gatewayName(at(mp, "gateways", j), gw)
		}
	}
	if len(r.GetRoute()) == 0 {
		c.errf(api.CodeRequired, p+".route", "TLS route needs route destinations")
	}
	c.l4Destinations(p, r.GetRoute())
}

// sniHost checks an SNI host and that it falls under one of the
// VirtualService's hosts.
func (c *checker) sniHost(p, sni string, vs *networking.VirtualService) {
	if err := checkWildcardHost(sni); err != nil {
		if isIP(sni) {
			c.warnf(api.CodeSurprising, p, "SNI host %q is an IP address; the SNI spec forbids that and most clients never send it", sni)
			return
		}
		c.errIf(api.CodeHost, p, err)
		return
	}
	for _, h := range vs.GetHosts() {
		if hostCovers(h, sni) {
			return
		}
	}
	c.errf(api.CodeHost, p, "SNI host %q is not covered by any of the VirtualService hosts [%s]", sni, strings.Join(vs.GetHosts(), ", "))
}

// hostCovers reports whether pattern covers host: equal, or pattern is a
// wildcard whose suffix host ends with.
func hostCovers(pattern, host string) bool {
	if strings.HasPrefix(host, "*") {
		if !strings.HasPrefix(pattern, "*") || len(host) < len(pattern) {
			return false
		}
		return strings.HasSuffix(host[1:], pattern[1:])
	}
	if strings.HasPrefix(pattern, "*") {
		return strings.HasSuffix(host, pattern[1:])
	}
	return pattern == host
}

func (c *checker) tcpRoute(p string, r *networking.TCPRoute) {
	if r == nil {
		c.errf(api.CodeRequired, p, "TCP route must not be null")
		return
	}
	for i, m := range r.GetMatch() {
		mp := at(p, "match", i)
		if m == nil {
			c.errf(api.CodeMatch, mp, "match must not be null")
			continue
		}
		for j, s := range m.GetDestinationSubnets() {
			c.errIf(api.CodeAddress, at(mp, "destinationSubnets", j), checkIPOrCIDR(s))
		}
		if s := m.GetSourceSubnet(); s != "" {
			c.errIf(api.CodeAddress, mp+".sourceSubnet", checkIPOrCIDR(s))
		}
		if m.GetPort() != 0 {
			c.port(mp+".port", m.GetPort())
		}
		c.labels(mp+".sourceLabels", m.GetSourceLabels(), api.CodeSelector)
		for j, gw := range m.GetGateways() {
			c.gatewayName(at(mp, "gateways", j), gw)
		}
	}
	if len(r.GetRoute()) == 0 {
		c.errf(api.CodeRequired, p+".route", "TCP route needs route destinations")
	}
	c.l4Destinations(p, r.GetRoute())
}

func (c *checker) l4Destinations(p string, ds []*networking.RouteDestination) {
	total, negative := int64(0), false
	for i, d := range ds {
		dp := at(p, "route", i)
		if d == nil {
			c.errf(api.CodeRequired, dp, "route destination must not be null")
			continue
		}
		c.destination(dp+".destination", d.GetDestination(), api.CodeRequired)
		if d.GetWeight() < 0 {
			c.errf(api.CodeWeight, dp+".weight", "weight %d is negative", d.GetWeight())
			negative = true
		}
		total += int64(d.GetWeight())
	}
	c.weightSum(p, "route", len(ds), total, negative)
}
