package generate

import (
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/pilot/index"
)

// Delegation (an HTTP route with delegate) follows Istio, so Istio YAML that
// splits a host's routes between a root VirtualService and delegates owned
// by other teams routes the same here:
//
//   - The root route stands for the delegate's HTTP routes, in order. The
//     delegate is namespace/name, the namespace defaulting to the root's.
//     A missing delegate, one with hosts (a VirtualService of its own), or
//     one whose exportTo hides it from the root's namespace yields nothing,
//     and the root's other routes still apply.
//   - One level only: a delegate's own delegate routes are ignored (galley
//     rejects them; Istio leaves them out).
//   - Matches merge: a delegate route without matches takes the root's;
//     otherwise each delegate match is ANDed with each root match it does
//     not conflict with. A delegate match that fits no root match (a URI
//     prefix outside the root's, a different exact value, a regex on
//     either side, ...) drops the whole delegate route, as in Istio, so a
//     delegate can never widen what its root matches.
//   - Fields the delegate route leaves unset are taken from the root route,
//     as Istio's mergeHTTPRoute does: rewrite, directResponse, timeout,
//     retries, fault, mirror(s) and their percentage, corsPolicy, headers.
//     Names join as root-delegate.
//   - Host names the delegate writes (destinations, mirrors) and gateway
//     names in its matches expand in the delegate's namespace, not the
//     root's.
//
// Merging reads only the two VirtualServices, never the proxy, so a
// delegate's edits reach every proxy with the next full push: pilot's
// routing digest covers every VirtualService, delegates included, and
// routes are rebuilt on every full push.

// delegatedRoutes returns the HTTP routes the delegating route hr of root
// stands for, merged with hr and with the delegate's names expanded.
func delegatedRoutes(ix *index.Index, root *index.VirtualService, hr *networking.HTTPRoute) []*networking.HTTPRoute {
	d := hr.GetDelegate()
	ns := d.GetNamespace()
	if ns == "" {
		ns = root.Namespace()
	}
	dvs := ix.Delegate(ns, d.GetName(), root.Namespace())
	if dvs == nil {
		return nil
	}
	out := make([]*networking.HTTPRoute, 0, len(dvs.Spec.GetHttp()))
	for _, sub := range dvs.Spec.GetHttp() {
		if sub == nil || sub.GetDelegate() != nil {
			continue // one level of delegation only
		}
		// A copy: the delegate's spec is shared with the snapshot and
		// with every other root that delegates to it.
		sub = proto.Clone(sub).(*networking.HTTPRoute)
		expandDelegate(ix, sub, ns)
		if merged := mergeRoute(ix, hr, root.Namespace(), sub); merged != nil {
			out = append(out, merged)
		}
	}
	return out
}

// expandDelegate writes the delegate route's host and gateway names out in
// full as they read in the delegate's namespace ns. The merged route is
// translated in the root's namespace, where short names would mean other
// services; full names mean the same in any namespace.
func expandDelegate(ix *index.Index, r *networking.HTTPRoute, ns string) {
	expand := func(d *networking.Destination) {
		if d != nil {
			d.Host = ix.ExpandHost(d.GetHost(), ns)
		}
	}
	for _, rd := range r.GetRoute() {
		expand(rd.GetDestination())
	}
	expand(r.GetMirror())
	for _, m := range r.GetMirrors() {
		expand(m.GetDestination())
	}
	for _, m := range r.GetMatch() {
		for i, g := range m.GetGateways() {
			m.Gateways[i] = ix.GatewayName(g, ns)
		}
	}
}

// mergeRoute merges root route root (written in rootNS) into delegate
// route sub (a private copy with its names expanded), or returns nil when
// their matches conflict. What sub takes from root keeps root's short
// names: the merged route is translated in rootNS, where they mean what
// root meant.
func mergeRoute(ix *index.Index, root *networking.HTTPRoute, rootNS string, sub *networking.HTTPRoute) *networking.HTTPRoute {
	matches, ok := mergeMatches(ix, root.GetMatch(), rootNS, sub.GetMatch())
	if !ok {
		return nil
	}
	sub.Match = matches
	sub.Name = joinName(root.GetName(), sub.GetName())
	sub.Delegate = nil
	if sub.Rewrite == nil {
		sub.Rewrite = root.GetRewrite()
	}
	if sub.DirectResponse == nil {
		sub.DirectResponse = root.GetDirectResponse()
	}
	if sub.Timeout == nil {
		sub.Timeout = root.GetTimeout()
	}
	if sub.Retries == nil {
		sub.Retries = root.GetRetries()
	}
	if sub.Fault == nil {
		sub.Fault = root.GetFault()
	}
	if sub.Mirror == nil {
		sub.Mirror = root.GetMirror()
	}
	if sub.MirrorPercent == nil { //nolint:staticcheck // mirrorPercent is deprecated, and Istio still inherits it
		sub.MirrorPercent = root.GetMirrorPercent()
	}
	if sub.MirrorPercentage == nil {
		sub.MirrorPercentage = root.GetMirrorPercentage()
	}
	if sub.Mirrors == nil {
		sub.Mirrors = root.GetMirrors()
	}
	if sub.CorsPolicy == nil {
		sub.CorsPolicy = root.GetCorsPolicy()
	}
	if sub.Headers == nil {
		sub.Headers = root.GetHeaders()
	}
	return sub
}

// mergeMatches ANDs a delegate route's matches with its root's. Each
// delegate match must fit at least one root match, else the delegate route
// conflicts (ok false); it yields one match per fitting root match.
func mergeMatches(ix *index.Index, root []*networking.HTTPMatchRequest, rootNS string, sub []*networking.HTTPMatchRequest) ([]*networking.HTTPMatchRequest, bool) {
	if len(root) == 0 {
		return sub, true
	}
	if len(sub) == 0 {
		return root, true
	}
	var out []*networking.HTTPMatchRequest
	for _, sm := range sub {
		if sm == nil {
			sm = &networking.HTTPMatchRequest{}
		}
		found := false
		for _, rm := range root {
			if rm == nil {
				rm = &networking.HTTPMatchRequest{}
			}
			if matchConflict(ix, rm, rootNS, sm) {
				continue
			}
			out = append(out, mergeMatch(rm, sm))
			found = true
		}
		if !found {
			return nil, false
		}
	}
	return out, len(out) > 0
}

// mergeMatch returns the match both rm and sm ask for: sm's conditions,
// with rm's where sm sets none; headers, query parameters and source
// labels from both.
func mergeMatch(rm, sm *networking.HTTPMatchRequest) *networking.HTTPMatchRequest {
	out := proto.Clone(sm).(*networking.HTTPMatchRequest)
	out.Name = joinName(rm.GetName(), sm.GetName())
	if out.Uri == nil {
		out.Uri = rm.GetUri()
	}
	if out.Scheme == nil {
		out.Scheme = rm.GetScheme()
	}
	if out.Method == nil {
		out.Method = rm.GetMethod()
	}
	if out.Authority == nil {
		out.Authority = rm.GetAuthority()
	}
	out.Headers = mergeMaps(rm.GetHeaders(), sm.GetHeaders())
	out.WithoutHeaders = mergeMaps(rm.GetWithoutHeaders(), sm.GetWithoutHeaders())
	out.QueryParams = mergeMaps(rm.GetQueryParams(), sm.GetQueryParams())
	out.SourceLabels = mergeMaps(rm.GetSourceLabels(), sm.GetSourceLabels())
	if out.Port == 0 {
		out.Port = rm.GetPort()
	}
	if out.SourceNamespace == "" {
		out.SourceNamespace = rm.GetSourceNamespace()
	}
	if len(out.Gateways) == 0 {
		out.Gateways = rm.GetGateways()
	}
	if out.StatPrefix == "" {
		out.StatPrefix = rm.GetStatPrefix()
	}
	return out
}

// mergeMaps returns a's entries overridden by b's (nil when both are empty).
func mergeMaps[V any](a, b map[string]V) map[string]V {
	if len(a) == 0 && len(b) == 0 {
		return nil
	}
	out := make(map[string]V, len(a)+len(b))
	maps.Copy(out, a)
	maps.Copy(out, b)
	return out
}

// matchConflict reports whether delegate match sm (names expanded) asks
// for something root match rm (written in rootNS) rules out, or could
// match more than it: then the two do not merge.
func matchConflict(ix *index.Index, rm *networking.HTTPMatchRequest, rootNS string, sm *networking.HTTPMatchRequest) bool {
	pairs := [][2]*networking.StringMatch{
		{rm.GetUri(), sm.GetUri()}, {rm.GetScheme(), sm.GetScheme()},
		{rm.GetMethod(), sm.GetMethod()}, {rm.GetAuthority(), sm.GetAuthority()},
	}
	for _, p := range pairs {
		if stringMatchConflict(p[0], p[1]) {
			return true
		}
	}
	for k, v := range sm.GetHeaders() {
		if stringMatchConflict(rm.GetHeaders()[k], v) {
			return true
		}
	}
	for k, v := range sm.GetWithoutHeaders() {
		if stringMatchConflict(rm.GetWithoutHeaders()[k], v) {
			return true
		}
	}
	for k, v := range sm.GetQueryParams() {
		if stringMatchConflict(rm.GetQueryParams()[k], v) {
			return true
		}
	}
	if rm.GetIgnoreUriCase() != sm.GetIgnoreUriCase() {
		return true
	}
	if rm.GetPort() > 0 && sm.GetPort() > 0 && rm.GetPort() != sm.GetPort() {
		return true
	}
	if ns := rm.GetSourceNamespace(); ns != "" && sm.GetSourceNamespace() != ns {
		return true
	}
	for k, v := range sm.GetSourceLabels() {
		if rv, ok := rm.GetSourceLabels()[k]; ok && rv != v {
			return true
		}
	}
	// The delegate may narrow the root's gateways, never add to them.
	if len(rm.GetGateways()) > 0 && len(sm.GetGateways()) > 0 {
		rootGWs := make([]string, len(rm.GetGateways()))
		for i, g := range rm.GetGateways() {
			rootGWs[i] = ix.GatewayName(g, rootNS)
		}
		for _, g := range sm.GetGateways() {
			if !slices.Contains(rootGWs, g) { // sm's names are full already
				return true
			}
		}
	}
	return false
}

// stringMatchConflict reports whether leaf can match something root does
// not, Istio's rule: either unset is fine; a regex on either side cannot be
// compared and conflicts; under an exact root only the same exact value
// fits; under a prefix root an exact value or prefix within it fits.
func stringMatchConflict(root, leaf *networking.StringMatch) bool {
	if root == nil || leaf == nil {
		return false
	}
	if root.GetRegex() != "" || leaf.GetRegex() != "" {
		return true
	}
	if exact := root.GetExact(); exact != "" {
		return leaf.GetExact() != exact
	}
	if prefix := root.GetPrefix(); prefix != "" {
		if p := leaf.GetPrefix(); p != "" {
			return !strings.HasPrefix(p, prefix)
		}
		if e := leaf.GetExact(); e != "" {
			return !strings.HasPrefix(e, prefix)
		}
	}
	return true
}

// joinName names a merged route or match root-delegate, or whichever is set.
func joinName(root, sub string) string {
	switch {
	case sub == "":
		return root
	case root == "":
		return sub
	}
	return root + "-" + sub
}
