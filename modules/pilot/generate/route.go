package generate

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	previousprioritiesv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/priority/previous_priorities/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
)

// HTTP filter names. Per-route filter configs are keyed by these, so an
// HttpConnectionManager must use the same names.
const (
	FilterFault  = "envoy.filters.http.fault"
	FilterCORS   = "envoy.filters.http.cors"
	FilterRouter = "envoy.filters.http.router"
)

// Istio's default retry policy for routes that set none (Envoy only).
const (
	defaultRetryOn      = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
	defaultRetries      = 2
	defaultRetryStatus  = 503
	grpcRetryOnFallback = "unavailable"
)

// VirtualHosts returns the virtual hosts of a sidecar's outbound route
// configuration for port (the RDS resource Envoy names after the port): one
// per visible service with an HTTP port of that number, routed by the
// VirtualService that applies to it. Domains are the names a client in the
// proxy's namespace may use; a name two services could claim goes to the
// first, since Envoy rejects a route configuration that lists a domain
// twice.
func VirtualHosts(s *Scope, port uint32) []*routev3.VirtualHost {
	var out []*routev3.VirtualHost
	used := map[string]bool{}
	for _, svc := range s.Services() {
		p, ok := svc.Port(port)
		if !ok || !p.Protocol.IsHTTP() {
			continue
		}
		var domains []string
		for _, d := range s.hostAliases(svc, port) {
			if !used[d] {
				used[d] = true
				domains = append(domains, d)
			}
		}
		if len(domains) == 0 {
			continue
		}
		out = append(out, VirtualHost(s, svc, p, domains))
	}
	return out
}

// VirtualHost returns one service's virtual host on port with the given
// domains (nil: every name a client in the proxy's namespace may use).
func VirtualHost(s *Scope, svc *model.Service, port model.Port, domains []string) *routev3.VirtualHost {
	if domains == nil {
		domains = s.hostAliases(svc, port.Number)
	}
	return &routev3.VirtualHost{
		Name:    svc.Hostname + ":" + strconv.FormatUint(uint64(port.Number), 10),
		Domains: domains,
		Routes:  ServiceRoutes(s, svc, port),
	}
}

// ServiceRoutes returns the routes for traffic to svc on port: the
// VirtualService's HTTP routes when one applies and yields any for this
// port and proxy, else one route to the whole service.
func ServiceRoutes(s *Scope, svc *model.Service, port model.Port) []*routev3.Route {
	if vs := s.Index.VirtualServiceFor(s.Namespace, svc.Hostname); vs != nil {
		if routes := HTTPRoutes(s, vs, port.Number, port.Protocol, index.MeshGateway); len(routes) > 0 {
			return routes
		}
	}
	return []*routev3.Route{DefaultRoute(s, svc, port)}
}

// DefaultRoute routes everything to the whole service on port.
func DefaultRoute(s *Scope, svc *model.Service, port model.Port) *routev3.Route {
	rc := routeCtx{s: s, ns: svc.Namespace, port: port.Number, proto: port.Protocol}
	ra := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{
		Cluster: index.ClusterName(port.Number, "", svc.Hostname),
	}}
	rc.common(ra, nil, []string{index.ClusterName(port.Number, "", svc.Hostname)})
	return &routev3.Route{
		Name:   "default",
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: ra},
	}
}

// GatewayVirtualHosts returns the virtual hosts of a gateway server: for
// each host of the VirtualServices bound to gw that the server's hosts
// admit, the routes of those VirtualServices (in order, the first one
// winning where they overlap). port is the server's port.
func GatewayVirtualHosts(s *Scope, gw *index.Gateway, server *networking.Server) []*routev3.VirtualHost {
	port := server.GetPort().GetNumber()
	proto := model.ParseProtocol(server.GetPort().GetProtocol())
	if proto == model.ProtocolHTTPS {
		proto = model.ProtocolHTTP // terminated at the gateway
	}
	type vhost struct {
		host   string
		routes []*routev3.Route
	}
	var hosts []*vhost
	byHost := map[string]*vhost{}
	for _, vs := range s.Index.GatewayVirtualServices(gw.Name()) {
		for _, h := range vs.Hosts {
			if !serverAdmits(server, gw.Object.Namespace, vs.Namespace(), h) {
				continue
			}
			routes := HTTPRoutes(s, vs, port, proto, gw.Name())
			if len(routes) == 0 {
				continue
			}
			v := byHost[h]
			if v == nil {
				v = &vhost{host: h}
				byHost[h] = v
				hosts = append(hosts, v)
			}
			v.routes = append(v.routes, routes...)
		}
	}
	ps := ":" + strconv.FormatUint(uint64(port), 10)
	used := map[string]bool{}
	out := make([]*routev3.VirtualHost, 0, len(hosts))
	for _, v := range hosts {
		var domains []string
		for _, d := range []string{v.host, v.host + ps} {
			if !used[d] {
				used[d] = true
				domains = append(domains, d)
			}
		}
		if len(domains) == 0 {
			continue
		}
		vh := &routev3.VirtualHost{Name: v.host + ps, Domains: domains, Routes: v.routes}
		if server.GetTls().GetHttpsRedirect() {
			vh.RequireTls = routev3.VirtualHost_ALL
		}
		out = append(out, vh)
	}
	return out
}

// serverAdmits reports whether a gateway server's hosts ("ns/host", "host",
// "*/host", "./host") admit host from a VirtualService in vsNS.
func serverAdmits(server *networking.Server, gwNS, vsNS, host string) bool {
	for _, h := range server.GetHosts() {
		ns, name, ok := strings.Cut(h, "/")
		if !ok {
			ns, name = "*", h
		}
		if ns == "." {
			ns = gwNS
		}
		if ns != "*" && ns != vsNS {
			continue
		}
		if index.HostMatches(name, host) || index.HostMatches(host, name) {
			return true
		}
	}
	return false
}

// routeCtx is what translating one VirtualService's routes needs.
type routeCtx struct {
	s        *Scope
	ns       string // namespace that wrote the VirtualService (short names expand in it)
	port     uint32
	proto    model.Protocol
	gateways []string // "mesh" or namespace/name
}

// HTTPRoutes translates a VirtualService's HTTP routes for traffic on port
// (with protocol proto; WebSocket upgrades are allowed on plain HTTP)
// through gateways ("mesh" for sidecars and proxyless clients, else
// namespace/name). Each match becomes one route; matches for another port,
// gateway, source namespace or source labels are left out, and an HTTP
// route whose matches are all left out does not apply. A route with
// delegate stands for the delegate's routes merged with it, as in Istio
// (see delegatedRoutes).
func HTTPRoutes(s *Scope, vs *index.VirtualService, port uint32, proto model.Protocol, gateways ...string) []*routev3.Route {
	if len(gateways) == 0 {
		gateways = []string{index.MeshGateway}
	}
	rc := routeCtx{s: s, ns: vs.Namespace(), port: port, proto: proto, gateways: gateways}
	var out []*routev3.Route
	for _, hr := range vs.Spec.GetHttp() {
		if hr.GetDelegate() == nil {
			out = rc.appendRoutes(out, hr)
			continue
		}
		for _, dr := range delegatedRoutes(s.Index, vs, hr) {
			out = rc.appendRoutes(out, dr)
		}
	}
	return out
}

// appendRoutes appends hr's routes: one per match that applies, or one
// matching everything when hr has no matches.
func (rc routeCtx) appendRoutes(out []*routev3.Route, hr *networking.HTTPRoute) []*routev3.Route {
	if len(hr.GetMatch()) == 0 {
		return append(out, rc.route(hr, nil))
	}
	for _, m := range hr.GetMatch() {
		if rc.applies(m) {
			out = append(out, rc.route(hr, m))
		}
	}
	return out
}

func (rc routeCtx) applies(m *networking.HTTPMatchRequest) bool {
	if p := m.GetPort(); p != 0 && p != rc.port {
		return false
	}
	if gws := m.GetGateways(); len(gws) > 0 {
		found := false
		for _, g := range gws {
			if slices.Contains(rc.gateways, rc.s.Index.GatewayName(g, rc.ns)) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	if ns := m.GetSourceNamespace(); ns != "" && ns != rc.s.Namespace {
		return false
	}
	if sel := m.GetSourceLabels(); len(sel) > 0 && !model.LabelsMatch(sel, rc.s.Labels) {
		return false
	}
	return true
}

func (rc routeCtx) route(hr *networking.HTTPRoute, m *networking.HTTPMatchRequest) *routev3.Route {
	envoy := rc.s.Flavor == Envoy
	r := &routev3.Route{Name: hr.GetName(), Match: rc.match(m)}
	switch {
	case hr.GetRedirect() != nil:
		r.Action = &routev3.Route_Redirect{Redirect: redirect(hr.GetRedirect())}
	case hr.GetDirectResponse() != nil:
		r.Action = &routev3.Route_DirectResponse{DirectResponse: directResponse(hr.GetDirectResponse())}
	default:
		ra, destHdrs := rc.action(hr, m)
		r.Action = &routev3.Route_Route{Route: ra}
		if envoy && destHdrs != nil {
			// A single destination's header operations apply to the route.
			r.RequestHeadersToAdd, r.RequestHeadersToRemove = headerOps(destHdrs.GetRequest())
			r.ResponseHeadersToAdd, r.ResponseHeadersToRemove = headerOps(destHdrs.GetResponse())
		}
	}
	if envoy {
		add, rm := headerOps(hr.GetHeaders().GetRequest())
		r.RequestHeadersToAdd, r.RequestHeadersToRemove = append(r.RequestHeadersToAdd, add...), append(r.RequestHeadersToRemove, rm...)
		add, rm = headerOps(hr.GetHeaders().GetResponse())
		r.ResponseHeadersToAdd, r.ResponseHeadersToRemove = append(r.ResponseHeadersToAdd, add...), append(r.ResponseHeadersToRemove, rm...)
	}
	filters := map[string]*anypb.Any{}
	if f := hr.GetFault(); f != nil {
		if hf := faultConfig(f); hf != nil {
			filters[FilterFault] = mustAny(hf)
		}
	}
	if c := hr.GetCorsPolicy(); c != nil && envoy {
		filters[FilterCORS] = mustAny(corsPolicy(c))
	}
	if len(filters) > 0 {
		r.TypedPerFilterConfig = filters
	}
	return r
}

// match translates one HTTP match (nil: everything).
func (rc routeCtx) match(m *networking.HTTPMatchRequest) *routev3.RouteMatch {
	rm := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	switch u := m.GetUri().GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		rm.PathSpecifier = &routev3.RouteMatch_Path{Path: u.Exact}
	case *networking.StringMatch_Prefix:
		rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: u.Prefix}
	case *networking.StringMatch_Regex:
		rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: u.Regex}}
	}
	if m.GetIgnoreUriCase() {
		rm.CaseSensitive = wrapperspb.Bool(false)
	}
	for _, name := range sortedKeys(m.GetHeaders()) {
		rm.Headers = append(rm.Headers, headerMatcher(name, m.GetHeaders()[name], false))
	}
	for _, name := range sortedKeys(m.GetWithoutHeaders()) {
		rm.Headers = append(rm.Headers, headerMatcher(name, m.GetWithoutHeaders()[name], true))
	}
	for _, pseudo := range []struct {
		name string
		sm   *networking.StringMatch
	}{{":method", m.GetMethod()}, {":authority", m.GetAuthority()}, {":scheme", m.GetScheme()}} {
		if pseudo.sm != nil {
			rm.Headers = append(rm.Headers, headerMatcher(pseudo.name, pseudo.sm, false))
		}
	}
	for _, name := range sortedKeys(m.GetQueryParams()) {
		q := &routev3.QueryParameterMatcher{Name: name}
		if sm := stringMatcher(m.GetQueryParams()[name]); sm != nil {
			q.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_StringMatch{StringMatch: sm}
		} else {
			q.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}
		}
		rm.QueryParameters = append(rm.QueryParameters, q)
	}
	return rm
}

// headerMatcher matches a header against an Istio StringMatch; an empty
// match (or an empty prefix) only asks for the header to be present.
// grpc-go matches lowercase names only, and header names are
// case-insensitive, so names are lowercased.
func headerMatcher(name string, sm *networking.StringMatch, invert bool) *routev3.HeaderMatcher {
	h := &routev3.HeaderMatcher{Name: strings.ToLower(name), InvertMatch: invert}
	if m := stringMatcher(sm); m != nil {
		h.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: m}
	} else {
		h.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
	}
	return h
}

func stringMatcher(sm *networking.StringMatch) *matcherv3.StringMatcher {
	switch m := sm.GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m.Exact}}
	case *networking.StringMatch_Prefix:
		if m.Prefix == "" {
			return nil
		}
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: m.Prefix}}
	case *networking.StringMatch_Regex:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: m.Regex}}}
	}
	return nil
}

// action builds the forwarding part of a route: destinations, rewrites,
// timeouts, retries, hashing and mirrors. It also returns the header
// operations of a route's only destination, which belong on the route.
func (rc routeCtx) action(hr *networking.HTTPRoute, m *networking.HTTPMatchRequest) (*routev3.RouteAction, *networking.Headers) {
	envoy := rc.s.Flavor == Envoy
	ra := &routev3.RouteAction{}
	type dest struct {
		name   string
		weight uint32
		hdrs   *networking.Headers
	}
	var dests []dest
	for _, d := range hr.GetRoute() {
		name, _ := rc.s.destination(d.GetDestination(), rc.ns, rc.port)
		dests = append(dests, dest{name: name, weight: uint32(max(d.GetWeight(), 0)), hdrs: d.GetHeaders()})
	}
	if len(dests) > 1 {
		weighted := dests[:0:0]
		for _, d := range dests {
			if d.weight > 0 {
				weighted = append(weighted, d)
			}
		}
		if len(weighted) == 0 {
			weighted = dests[:1] // no weights at all: the first gets everything
		}
		dests = weighted
	}
	var clusters []string
	switch len(dests) {
	case 0:
		// A route with no destination (galley rejects it); send it nowhere
		// rather than break the push.
		ra.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: index.ClusterName(rc.port, "", "invalid.route")}
	case 1:
		ra.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: dests[0].name}
		clusters = []string{dests[0].name}
	default:
		wc := &routev3.WeightedCluster{}
		for _, d := range dests {
			cw := &routev3.WeightedCluster_ClusterWeight{Name: d.name, Weight: wrapperspb.UInt32(d.weight)}
			if envoy {
				cw.RequestHeadersToAdd, cw.RequestHeadersToRemove = headerOps(d.hdrs.GetRequest())
				cw.ResponseHeadersToAdd, cw.ResponseHeadersToRemove = headerOps(d.hdrs.GetResponse())
			}
			wc.Clusters = append(wc.Clusters, cw)
			clusters = append(clusters, d.name)
		}
		ra.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	var destHdrs *networking.Headers
	if len(dests) == 1 {
		destHdrs = dests[0].hdrs
	}

	if envoy {
		rc.rewrite(ra, hr.GetRewrite(), m)
		for _, mp := range mirrors(hr) {
			name, _ := rc.s.destination(mp.GetDestination(), rc.ns, rc.port)
			pol := &routev3.RouteAction_RequestMirrorPolicy{Cluster: name}
			if pct := mp.GetPercentage(); pct != nil {
				pol.RuntimeFraction = &corev3.RuntimeFractionalPercent{DefaultValue: fraction(pct.GetValue())}
			}
			ra.RequestMirrorPolicies = append(ra.RequestMirrorPolicies, pol)
		}
	}
	if t := hr.GetTimeout(); t != nil {
		if envoy {
			ra.Timeout = t
		} else {
			ra.MaxStreamDuration = &routev3.RouteAction_MaxStreamDuration{MaxStreamDuration: t}
		}
	}
	rc.common(ra, hr.GetRetries(), clusters)
	return ra, destHdrs
}

// common sets what default and VirtualService routes share: retries, the
// hash policy of the destination's load balancer, and Envoy's defaults.
func (rc routeCtx) common(ra *routev3.RouteAction, retries *networking.HTTPRetry, clusters []string) {
	envoy := rc.s.Flavor == Envoy
	if retries != nil || envoy {
		ra.RetryPolicy = rc.retryPolicy(retries)
	}
	if envoy && ra.Timeout == nil {
		ra.Timeout = durationpb.New(0)
	}
	if envoy && rc.proto == model.ProtocolHTTP {
		ra.UpgradeConfigs = []*routev3.RouteAction_UpgradeConfig{{UpgradeType: "websocket", Enabled: wrapperspb.Bool(true)}}
	}
	for _, name := range clusters {
		r, ok := rc.s.ClusterRef(name)
		if !ok {
			continue
		}
		if ch := rc.s.Policy(r).GetLoadBalancer().GetConsistentHash(); ch != nil {
			ra.HashPolicy = rc.hashPolicy(ch)
		}
		break // Istio hashes by the first destination's rule
	}
}

func (rc routeCtx) hashPolicy(ch *networking.LoadBalancerSettings_ConsistentHashLB) []*routev3.RouteAction_HashPolicy {
	if h := ch.GetHttpHeaderName(); h != "" {
		return []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{
			Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: strings.ToLower(h)},
		}}}
	}
	if rc.s.Flavor == Proxyless {
		// grpc-go sees neither cookies nor the source address; hashing on
		// the channel keeps each client on one endpoint, which is what
		// source-IP hashing gives a sidecar.
		return []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_FilterState_{
			FilterState: &routev3.RouteAction_HashPolicy_FilterState{Key: "io.grpc.channel_id"},
		}}}
	}
	switch {
	case ch.GetHttpCookie() != nil:
		c := ch.GetHttpCookie()
		return []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{
			Cookie: &routev3.RouteAction_HashPolicy_Cookie{Name: c.GetName(), Path: c.GetPath(), Ttl: c.GetTtl()},
		}}}
	case ch.GetUseSourceIp():
		return []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{
			ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true},
		}}}
	case ch.GetHttpQueryParameterName() != "":
		return []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_QueryParameter_{
			QueryParameter: &routev3.RouteAction_HashPolicy_QueryParameter{Name: ch.GetHttpQueryParameterName()},
		}}}
	}
	return nil
}

// grpcRetryOn are the retry conditions grpc-go understands, and what the
// HTTP-level conditions Istio users write mean for a gRPC call: a refused
// connection or a 5xx surfaces as UNAVAILABLE.
var grpcRetryOn = map[string]string{
	"cancelled":              "cancelled",
	"deadline-exceeded":      "deadline-exceeded",
	"internal":               "internal",
	"resource-exhausted":     "resource-exhausted",
	"unavailable":            "unavailable",
	"connect-failure":        "unavailable",
	"refused-stream":         "unavailable",
	"reset":                  "unavailable",
	"gateway-error":          "unavailable",
	"5xx":                    "unavailable",
	"503":                    "unavailable",
	"retriable-status-codes": "",
}

func (rc routeCtx) retryPolicy(r *networking.HTTPRetry) *routev3.RetryPolicy {
	if rc.s.Flavor == Proxyless {
		if r == nil || r.GetAttempts() < 1 {
			return nil // grpc-go rejects num_retries 0
		}
		var on []string
		for c := range strings.SplitSeq(r.GetRetryOn(), ",") {
			if g := grpcRetryOn[strings.TrimSpace(c)]; g != "" && !slices.Contains(on, g) {
				on = append(on, g)
			}
		}
		if len(on) == 0 {
			on = []string{grpcRetryOnFallback}
		}
		p := &routev3.RetryPolicy{RetryOn: strings.Join(on, ","), NumRetries: wrapperspb.UInt32(uint32(r.GetAttempts()))}
		if b := r.GetBackoff(); b != nil && b.AsDuration() > 0 {
			p.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: b}
		}
		return p
	}
	if r == nil {
		return &routev3.RetryPolicy{
			RetryOn:                       defaultRetryOn,
			NumRetries:                    wrapperspb.UInt32(defaultRetries),
			RetriableStatusCodes:          []uint32{defaultRetryStatus},
			RetryHostPredicate:            []*routev3.RetryPolicy_RetryHostPredicate{previousHosts()},
			HostSelectionRetryMaxAttempts: 5,
		}
	}
	if r.GetAttempts() <= 0 {
		return nil
	}
	retryOn := r.GetRetryOn()
	if retryOn == "" {
		retryOn = defaultRetryOn
	}
	var conds []string
	var codes []uint32
	for c := range strings.SplitSeq(retryOn, ",") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		if n, err := strconv.ParseUint(c, 10, 32); err == nil {
			codes = append(codes, uint32(n))
			continue
		}
		if !slices.Contains(conds, c) {
			conds = append(conds, c)
		}
	}
	if len(codes) > 0 && !slices.Contains(conds, "retriable-status-codes") {
		conds = append(conds, "retriable-status-codes")
	}
	if retryOn == defaultRetryOn {
		codes = []uint32{defaultRetryStatus}
	}
	p := &routev3.RetryPolicy{
		RetryOn:                       strings.Join(conds, ","),
		NumRetries:                    wrapperspb.UInt32(uint32(r.GetAttempts())),
		RetriableStatusCodes:          codes,
		PerTryTimeout:                 r.GetPerTryTimeout(),
		HostSelectionRetryMaxAttempts: 5,
	}
	if ip := r.GetRetryIgnorePreviousHosts(); ip == nil || ip.GetValue() {
		p.RetryHostPredicate = []*routev3.RetryPolicy_RetryHostPredicate{previousHosts()}
	}
	if r.GetRetryRemoteLocalities().GetValue() {
		p.RetryPriority = &routev3.RetryPolicy_RetryPriority{
			Name:       "envoy.retry_priorities.previous_priorities",
			ConfigType: &routev3.RetryPolicy_RetryPriority_TypedConfig{TypedConfig: mustAny(&previousprioritiesv3.PreviousPrioritiesConfig{UpdateFrequency: 2})},
		}
	}
	if b := r.GetBackoff(); b != nil && b.AsDuration() > 0 {
		p.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: b}
	}
	return p
}

func previousHosts() *routev3.RetryPolicy_RetryHostPredicate {
	return &routev3.RetryPolicy_RetryHostPredicate{
		Name:       "envoy.retry_host_predicates.previous_hosts",
		ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: mustAny(&previoushostsv3.PreviousHostsPredicate{})},
	}
}

// rewrite applies a URI or authority rewrite. A URI rewrite replaces what
// the match matched: the prefix for prefix and exact matches (and "/" when
// the route matches everything), the regex for regex matches.
func (rc routeCtx) rewrite(ra *routev3.RouteAction, rw *networking.HTTPRewrite, m *networking.HTTPMatchRequest) {
	if rw == nil {
		return
	}
	if rr := rw.GetUriRegexRewrite(); rr != nil {
		ra.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{
			Pattern:      &matcherv3.RegexMatcher{Regex: rr.GetMatch()},
			Substitution: rr.GetRewrite(),
		}
	} else if u := rw.GetUri(); u != "" {
		if re := m.GetUri().GetRegex(); re != "" {
			ra.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: re}, Substitution: u}
		} else {
			ra.PrefixRewrite = u
		}
	}
	if a := rw.GetAuthority(); a != "" {
		ra.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: a}
	}
}

// mirrors returns a route's mirror policies, folding the deprecated single
// mirror (with mirrorPercentage or mirrorPercent) into the list.
func mirrors(hr *networking.HTTPRoute) []*networking.HTTPMirrorPolicy {
	out := slices.Clone(hr.GetMirrors())
	if m := hr.GetMirror(); m != nil {
		p := &networking.HTTPMirrorPolicy{Destination: m, Percentage: hr.GetMirrorPercentage()}
		if p.Percentage == nil && hr.GetMirrorPercent() != nil {
			p.Percentage = &networking.Percent{Value: float64(hr.GetMirrorPercent().GetValue())}
		}
		out = append([]*networking.HTTPMirrorPolicy{p}, out...)
	}
	return out
}

func redirect(r *networking.HTTPRedirect) *routev3.RedirectAction {
	ra := &routev3.RedirectAction{HostRedirect: r.GetAuthority()}
	if r.GetUri() != "" {
		ra.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: r.GetUri()}
	} else if pr := r.GetPrefixRewrite(); pr != "" {
		ra.PathRewriteSpecifier = &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: pr}
	}
	if p := r.GetPort(); p != 0 {
		ra.PortRedirect = p
	}
	switch s := r.GetScheme(); s {
	case "":
	case "https":
		ra.SchemeRewriteSpecifier = &routev3.RedirectAction_HttpsRedirect{HttpsRedirect: true}
	default:
		ra.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: s}
	}
	switch r.GetRedirectCode() {
	case 302:
		ra.ResponseCode = routev3.RedirectAction_FOUND
	case 303:
		ra.ResponseCode = routev3.RedirectAction_SEE_OTHER
	case 307:
		ra.ResponseCode = routev3.RedirectAction_TEMPORARY_REDIRECT
	case 308:
		ra.ResponseCode = routev3.RedirectAction_PERMANENT_REDIRECT
	default:
		ra.ResponseCode = routev3.RedirectAction_MOVED_PERMANENTLY
	}
	return ra
}

func directResponse(d *networking.HTTPDirectResponse) *routev3.DirectResponseAction {
	out := &routev3.DirectResponseAction{Status: d.GetStatus()}
	switch b := d.GetBody().GetSpecifier().(type) {
	case *networking.HTTPBody_String_:
		out.Body = &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: b.String_}}
	case *networking.HTTPBody_Bytes:
		out.Body = &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b.Bytes}}
	}
	return out
}

// headerOps translates header operations: set overwrites, add appends.
func headerOps(ops *networking.Headers_HeaderOperations) ([]*corev3.HeaderValueOption, []string) {
	if ops == nil {
		return nil, nil
	}
	var add []*corev3.HeaderValueOption
	for _, k := range sortedKeys(ops.GetSet()) {
		add = append(add, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: k, Value: ops.GetSet()[k]},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	for _, k := range sortedKeys(ops.GetAdd()) {
		add = append(add, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: k, Value: ops.GetAdd()[k]},
			AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD,
		})
	}
	return add, slices.Clone(ops.GetRemove())
}

// faultConfig translates fault injection. A delay without a percentage
// delays nothing (Istio's documented default); an abort without one aborts
// everything, which is what Istio has always sent Envoy (Envoy reads a
// missing percentage as 100%). The percentage is written out in both cases
// because grpc-go reads a missing one as 0%.
func faultConfig(f *networking.HTTPFaultInjection) *faultv3.HTTPFault {
	out := &faultv3.HTTPFault{}
	if d := f.GetDelay(); d != nil && d.GetFixedDelay() != nil {
		pct := float64(d.GetPercent())
		if d.GetPercentage() != nil {
			pct = d.GetPercentage().GetValue()
		}
		out.Delay = &faultcommonv3.FaultDelay{
			FaultDelaySecifier: &faultcommonv3.FaultDelay_FixedDelay{FixedDelay: d.GetFixedDelay()},
			Percentage:         fraction(pct),
		}
	}
	if a := f.GetAbort(); a != nil {
		pct := 100.0
		if a.GetPercentage() != nil {
			pct = a.GetPercentage().GetValue()
		}
		fa := &faultv3.FaultAbort{Percentage: fraction(pct)}
		switch e := a.GetErrorType().(type) {
		case *networking.HTTPFaultInjection_Abort_HttpStatus:
			fa.ErrorType = &faultv3.FaultAbort_HttpStatus{HttpStatus: uint32(e.HttpStatus)}
		case *networking.HTTPFaultInjection_Abort_GrpcStatus:
			code, ok := GRPCCode(e.GrpcStatus)
			if !ok {
				fa = nil
				break
			}
			fa.ErrorType = &faultv3.FaultAbort_GrpcStatus{GrpcStatus: code}
		default:
			fa = nil // HTTP/2 errors have no Envoy or grpc-go equivalent
		}
		out.Abort = fa
	}
	if out.Delay == nil && out.Abort == nil {
		return nil
	}
	return out
}

// fraction turns a 0-100 percentage into a FractionalPercent per million.
func fraction(pct float64) *typev3.FractionalPercent {
	pct = min(max(pct, 0), 100)
	return &typev3.FractionalPercent{
		Numerator:   uint32(math.Round(pct * 10000)),
		Denominator: typev3.FractionalPercent_MILLION,
	}
}

var grpcCodes = []string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
	"PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}

// GRPCCode parses a gRPC status as Istio writes it: a name (UNAVAILABLE)
// or a number.
func GRPCCode(s string) (uint32, bool) {
	if i := slices.Index(grpcCodes, strings.ToUpper(strings.TrimSpace(s))); i >= 0 {
		return uint32(i), true
	}
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil || n >= uint64(len(grpcCodes)) {
		return 0, false
	}
	return uint32(n), true
}

func corsPolicy(c *networking.CorsPolicy) *corsv3.CorsPolicy {
	out := &corsv3.CorsPolicy{
		AllowMethods:     strings.Join(c.GetAllowMethods(), ","),
		AllowHeaders:     strings.Join(c.GetAllowHeaders(), ","),
		ExposeHeaders:    strings.Join(c.GetExposeHeaders(), ","),
		AllowCredentials: c.GetAllowCredentials(),
	}
	for _, o := range c.GetAllowOrigin() {
		if o == "*" {
			out.AllowOriginStringMatch = append(out.AllowOriginStringMatch, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".*"}}})
			continue
		}
		out.AllowOriginStringMatch = append(out.AllowOriginStringMatch, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: o}})
	}
	for _, o := range c.GetAllowOrigins() {
		if sm := stringMatcher(o); sm != nil {
			out.AllowOriginStringMatch = append(out.AllowOriginStringMatch, sm)
		}
	}
	if d := c.GetMaxAge(); d != nil {
		out.MaxAge = strconv.FormatInt(int64(d.AsDuration()/time.Second), 10)
	}
	switch c.GetUnmatchedPreflights() {
	case networking.CorsPolicy_FORWARD:
		out.ForwardNotMatchingPreflights = wrapperspb.Bool(true)
	case networking.CorsPolicy_IGNORE:
		out.ForwardNotMatchingPreflights = wrapperspb.Bool(false)
	}
	return out
}
