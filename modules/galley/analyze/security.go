package analyze

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/modules/galley/api"
)

// Security analysis of AuthorizationPolicy and RequestAuthentication:
//
//   - GAL3017: a policy selects a proxyless gRPC server (a workload whose
//     injection template is a gRPC one) and uses something gRPC's RBAC
//     cannot evaluate. Pilot fails closed there (an ALLOW rule is left
//     out, a DENY rule loses the attribute and denies more, CUSTOM denies,
//     a RequestAuthentication denies requests carrying a token); the
//     warning says so, per attribute.
//   - GAL3018: a DENY rule overlaps an ALLOW rule on the same workloads:
//     a warning when the DENY rule matches every request the ALLOW rule
//     does (the ALLOW rule never allows anything), otherwise an info
//     saying the overlap is denied, since DENY is evaluated first.
//   - GAL3019: a principal that is not trust-domain/ns/NS/sa/SA (never
//     the identity of a workload), or names another trust domain.
//
// The attributes gRPC cannot evaluate mirror pilot's
// security.Evaluable(security.GRPC, ...); a pilot test checks that every
// attribute pilot fails closed on is reported here.
func init() {
	analyzers = append(analyzers,
		analyzer{"proxyless-authorization", checkProxylessAuthz},
		analyzer{"authorization-overlap", checkAuthzOverlap},
		analyzer{"principals", checkPrincipals},
	)
}

// InjectTemplatesAnnotation is Istio's annotation naming a workload's
// injection templates; a gRPC template (grpc-agent, grpc-simple) marks a
// proxyless gRPC workload. Galley reads it on WorkloadEntries and on
// WorkloadGroups (object or template metadata).
const InjectTemplatesAnnotation = "inject.istio.io/templates"

// proxyless reports whether a known workload runs proxyless gRPC.
func proxyless(w workload) bool {
	v := w.obj.Annotations[InjectTemplatesAnnotation]
	if wg, ok := w.obj.Spec.(*networking.WorkloadGroup); ok {
		if a := wg.GetMetadata().GetAnnotations()[InjectTemplatesAnnotation]; a != "" {
			v = a
		}
	}
	return strings.Contains(v, "grpc")
}

// proxylessWorkloads returns the known proxyless gRPC workloads.
func (ix *index) proxylessWorkloads() []workload {
	var out []workload
	for _, we := range ix.we {
		if w := (workload{we.spec.GetLabels(), we.obj}); proxyless(w) {
			out = append(out, w)
		}
	}
	for _, wg := range ix.wg {
		labels := map[string]string{}
		for k, v := range wg.spec.GetTemplate().GetLabels() {
			labels[k] = v
		}
		for k, v := range wg.spec.GetMetadata().GetLabels() {
			labels[k] = v
		}
		if w := (workload{labels, wg.obj}); proxyless(w) {
			out = append(out, w)
		}
	}
	return out
}

// firstSelected returns the first of ws a security policy written in ns
// with selector applies to (in ns, or in every namespace for the root
// namespace; every workload there when the selector is empty), or nil.
func (ix *index) firstSelected(ws []workload, ns string, selector map[string]string) *api.Object {
	for _, w := range ws {
		if (ns == ix.opts.RootNamespace || w.obj.Namespace == ns) && (len(selector) == 0 || selects(selector, w.labels)) {
			return w.obj
		}
	}
	return nil
}

// grpcCannot returns why a proxyless gRPC server cannot evaluate attr (a
// source or operation field, or a condition key), or "" when it can.
func grpcCannot(attr string) string {
	switch attr {
	case "requestPrincipals", "notRequestPrincipals", "request.auth.principal", "request.auth.audiences", "request.auth.presenter":
		return "gRPC has no JWT filter, so request principals and claims are unknown to it"
	case "connection.sni":
		return "gRPC's RBAC does not see the TLS server name"
	}
	switch {
	case strings.HasPrefix(attr, "request.auth.claims["):
		return "gRPC has no JWT filter, so request principals and claims are unknown to it"
	case strings.HasPrefix(attr, "experimental.envoy.filters."):
		return "gRPC has no Envoy filter metadata"
	case strings.HasPrefix(attr, "request.headers["):
		name := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(attr, "request.headers["), "]"))
		if name == ":scheme" || strings.HasPrefix(name, "grpc-") {
			return "gRPC rejects RBAC rules on grpc- headers and :scheme"
		}
	}
	return ""
}

// checkProxylessAuthz reports what proxyless gRPC servers cannot enforce
// of the policies that select them (GAL3017).
func checkProxylessAuthz(ix *index, r *reporter) {
	grpc := ix.proxylessWorkloads()
	if len(grpc) == 0 {
		return
	}
	for _, p := range ix.ap {
		target := ix.firstSelected(grpc, p.obj.Namespace, p.spec.GetSelector().GetMatchLabels())
		if target == nil {
			continue
		}
		who := "the proxyless gRPC server " + nsName(target)
		action := p.spec.GetAction()
		switch action {
		case security.AuthorizationPolicy_CUSTOM:
			r.warnf(p.obj, api.CodeProxylessAuthz, "spec.action", "%s cannot call the ext_authz provider %q (gRPC has no ext_authz filter), so the requests this policy would send it are denied there", who, p.spec.GetProvider().GetName())
			continue
		case security.AuthorizationPolicy_AUDIT:
			r.infof(p.obj, api.CodeProxylessAuthz, "spec.action", "%s does not audit (gRPC ignores RBAC's LOG action)", who)
			continue
		}
		effect := "this ALLOW rule is left out there, so it never allows"
		if action == security.AuthorizationPolicy_DENY {
			effect = "this DENY rule ignores it there, so it denies more requests than written"
		}
		for i, rule := range p.spec.GetRules() {
			path := "spec.rules[" + strconv.Itoa(i) + "]"
			report := func(field, attr string) {
				if why := grpcCannot(attr); why != "" {
					r.warnf(p.obj, api.CodeProxylessAuthz, field, "%s cannot evaluate %s (%s): %s", who, attr, why, effect)
				}
			}
			for j, f := range rule.GetFrom() {
				sp := path + ".from[" + strconv.Itoa(j) + "].source"
				if len(f.GetSource().GetRequestPrincipals()) > 0 {
					report(sp+".requestPrincipals", "requestPrincipals")
				}
				if len(f.GetSource().GetNotRequestPrincipals()) > 0 {
					report(sp+".notRequestPrincipals", "notRequestPrincipals")
				}
			}
			for j, c := range rule.GetWhen() {
				report(path+".when["+strconv.Itoa(j)+"]", c.GetKey())
			}
		}
	}
	for _, p := range ix.ra {
		if len(p.spec.GetJwtRules()) == 0 {
			continue
		}
		if target := ix.firstSelected(grpc, p.obj.Namespace, p.spec.GetSelector().GetMatchLabels()); target != nil {
			r.warnf(p.obj, api.CodeProxylessAuthz, "spec.jwtRules", "the proxyless gRPC server %s cannot verify JWTs (gRPC has no JWT filter), so requests that carry a token are denied there", nsName(target))
		}
	}
}

// selectorsMeet reports whether two selectors can select one workload:
// no label key with two different values (an empty selector selects all).
func selectorsMeet(a, b map[string]string) bool {
	for k, v := range a {
		if w, ok := b[k]; ok && w != v {
			return false
		}
	}
	return true
}

// sameWorkloads reports whether two policies can apply to one workload.
func (ix *index) sameWorkloads(a, b typed[*security.AuthorizationPolicy]) bool {
	root := ix.opts.RootNamespace
	if a.obj.Namespace != b.obj.Namespace && a.obj.Namespace != root && b.obj.Namespace != root {
		return false
	}
	return selectorsMeet(a.spec.GetSelector().GetMatchLabels(), b.spec.GetSelector().GetMatchLabels())
}

// checkAuthzOverlap reports DENY rules overlapping ALLOW rules on the same
// workloads (GAL3018), once per ALLOW rule.
func checkAuthzOverlap(ix *index, r *reporter) {
	var allows, all []typed[*security.AuthorizationPolicy]
	denies := map[string][]typed[*security.AuthorizationPolicy]{} // by namespace
	for _, p := range ix.ap {
		switch p.spec.GetAction() {
		case security.AuthorizationPolicy_ALLOW:
			allows = append(allows, p)
		case security.AuthorizationPolicy_DENY:
			denies[p.obj.Namespace] = append(denies[p.obj.Namespace], p)
			all = append(all, p)
		}
	}
	root := ix.opts.RootNamespace
	for _, a := range allows {
		candidates := all // a root-namespace ALLOW may meet any DENY
		if a.obj.Namespace != root {
			candidates = append(slices.Clone(denies[a.obj.Namespace]), denies[root]...)
		}
		if len(candidates) == 0 {
			continue
		}
		for i, ar := range a.spec.GetRules() {
			path := "spec.rules[" + strconv.Itoa(i) + "]"
			var overlap string
			shadowed := false
			for _, d := range candidates {
				if !ix.sameWorkloads(a, d) {
					continue
				}
				for j, dr := range d.spec.GetRules() {
					where := "rule " + strconv.Itoa(j) + " of DENY policy " + nsName(d.obj)
					if covers(dr, ar) {
						r.warnf(a.obj, api.CodeAuthzOverlap, path, "this ALLOW rule never allows anything: %s matches every request it matches, and DENY is evaluated before ALLOW", where)
						shadowed = true
						break
					}
					if overlap == "" && mayIntersect(dr, ar) {
						overlap = where
					}
				}
				if shadowed {
					break
				}
			}
			if !shadowed && overlap != "" {
				r.infof(a.obj, api.CodeAuthzOverlap, path, "requests matching both this ALLOW rule and %s are denied: DENY is evaluated before ALLOW", overlap)
			}
		}
	}
}

// covers reports whether DENY rule d matches every request ALLOW rule a
// matches. It is conservative: false unless it can show it.
func covers(d, a *security.Rule) bool {
	if d == nil || a == nil {
		return false
	}
	for _, dc := range d.GetWhen() {
		if !slices.ContainsFunc(a.GetWhen(), func(ac *security.Condition) bool {
			return ac.GetKey() == dc.GetKey() && slices.Equal(ac.GetNotValues(), dc.GetNotValues()) && allCovered(dc.GetValues(), ac.GetValues(), patternCovers)
		}) {
			return false
		}
	}
	if len(d.GetFrom()) > 0 {
		if len(a.GetFrom()) == 0 {
			return false
		}
		for _, af := range a.GetFrom() {
			if !slices.ContainsFunc(d.GetFrom(), func(df *security.Rule_From) bool { return sourceCovers(df.GetSource(), af.GetSource()) }) {
				return false
			}
		}
	}
	if len(d.GetTo()) > 0 {
		if len(a.GetTo()) == 0 {
			return false
		}
		for _, at := range a.GetTo() {
			if !slices.ContainsFunc(d.GetTo(), func(dt *security.Rule_To) bool { return operationCovers(dt.GetOperation(), at.GetOperation()) }) {
				return false
			}
		}
	}
	return true
}

// allCovered reports whether d constrains nothing, or a is constrained
// and every value of a is covered by one of d.
func allCovered(d, a []string, cover func(d, a string) bool) bool {
	if len(d) == 0 {
		return true
	}
	if len(a) == 0 {
		return false
	}
	for _, x := range a {
		if !slices.ContainsFunc(d, func(y string) bool { return cover(y, x) }) {
			return false
		}
	}
	return true
}

func sourceCovers(d, a *security.Source) bool {
	if d == nil {
		return true
	}
	if a == nil {
		a = &security.Source{}
	}
	for _, n := range [][2][]string{
		{d.GetNotPrincipals(), a.GetNotPrincipals()}, {d.GetNotRequestPrincipals(), a.GetNotRequestPrincipals()},
		{d.GetNotNamespaces(), a.GetNotNamespaces()}, {d.GetNotServiceAccounts(), a.GetNotServiceAccounts()},
		{d.GetNotTrustDomains(), a.GetNotTrustDomains()}, {d.GetNotIpBlocks(), a.GetNotIpBlocks()}, {d.GetNotRemoteIpBlocks(), a.GetNotRemoteIpBlocks()},
	} {
		if len(n[0]) > 0 && !slices.Equal(n[0], n[1]) {
			return false
		}
	}
	return allCovered(d.GetPrincipals(), a.GetPrincipals(), patternCovers) &&
		allCovered(d.GetRequestPrincipals(), a.GetRequestPrincipals(), patternCovers) &&
		allCovered(d.GetNamespaces(), a.GetNamespaces(), patternCovers) &&
		allCovered(d.GetServiceAccounts(), a.GetServiceAccounts(), patternCovers) &&
		allCovered(d.GetTrustDomains(), a.GetTrustDomains(), patternCovers) &&
		allCovered(d.GetIpBlocks(), a.GetIpBlocks(), cidrCovers) &&
		allCovered(d.GetRemoteIpBlocks(), a.GetRemoteIpBlocks(), cidrCovers)
}

func operationCovers(d, a *security.Operation) bool {
	if d == nil {
		return true
	}
	if a == nil {
		a = &security.Operation{}
	}
	for _, n := range [][2][]string{{d.GetNotHosts(), a.GetNotHosts()}, {d.GetNotPorts(), a.GetNotPorts()}, {d.GetNotMethods(), a.GetNotMethods()}, {d.GetNotPaths(), a.GetNotPaths()}} {
		if len(n[0]) > 0 && !slices.Equal(n[0], n[1]) {
			return false
		}
	}
	return allCovered(d.GetHosts(), a.GetHosts(), patternCovers) &&
		allCovered(d.GetPorts(), a.GetPorts(), patternCovers) &&
		allCovered(d.GetMethods(), a.GetMethods(), patternCovers) &&
		allCovered(d.GetPaths(), a.GetPaths(), patternCovers)
}

// patternCovers reports whether pattern d (exact, "p*", "*s" or "*")
// matches every value pattern a matches.
func patternCovers(d, a string) bool {
	switch {
	case d == a || d == "*":
		return true
	case a == "*":
		return false
	case strings.HasSuffix(d, "*"):
		return !strings.HasPrefix(a, "*") && strings.HasPrefix(a, d[:len(d)-1])
	case strings.HasPrefix(d, "*"):
		return !strings.HasSuffix(a, "*") && strings.HasSuffix(a, d[1:])
	}
	return false
}

func parseBlock(v string) (netip.Prefix, bool) {
	if p, err := netip.ParsePrefix(v); err == nil {
		return p.Masked(), true
	}
	if a, err := netip.ParseAddr(v); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	return netip.Prefix{}, false
}

func cidrCovers(d, a string) bool {
	dp, ok1 := parseBlock(d)
	ap, ok2 := parseBlock(a)
	return ok1 && ok2 && dp.Bits() <= ap.Bits() && dp.Contains(ap.Addr())
}

// mayIntersect reports whether some request could match both rules; it
// errs towards yes.
func mayIntersect(d, a *security.Rule) bool {
	if d == nil || a == nil {
		return false
	}
	if len(d.GetFrom()) > 0 && len(a.GetFrom()) > 0 {
		found := false
		for _, df := range d.GetFrom() {
			for _, af := range a.GetFrom() {
				if sourcesMeet(df.GetSource(), af.GetSource()) {
					found = true
				}
			}
		}
		if !found {
			return false
		}
	}
	if len(d.GetTo()) > 0 && len(a.GetTo()) > 0 {
		found := false
		for _, dt := range d.GetTo() {
			for _, at := range a.GetTo() {
				if operationsMeet(dt.GetOperation(), at.GetOperation()) {
					found = true
				}
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func someMeet(x, y []string, meet func(a, b string) bool) bool {
	if len(x) == 0 || len(y) == 0 {
		return true
	}
	for _, a := range x {
		for _, b := range y {
			if meet(a, b) {
				return true
			}
		}
	}
	return false
}

func sourcesMeet(x, y *security.Source) bool {
	// "not any principal" and some principal never meet.
	for _, pair := range [][2][]string{
		{x.GetNotPrincipals(), y.GetPrincipals()}, {y.GetNotPrincipals(), x.GetPrincipals()},
		{x.GetNotRequestPrincipals(), y.GetRequestPrincipals()}, {y.GetNotRequestPrincipals(), x.GetRequestPrincipals()},
		{x.GetNotNamespaces(), y.GetNamespaces()}, {y.GetNotNamespaces(), x.GetNamespaces()},
	} {
		if slices.Contains(pair[0], "*") && len(pair[1]) > 0 {
			return false
		}
	}
	return someMeet(x.GetPrincipals(), y.GetPrincipals(), patternsMeet) &&
		someMeet(x.GetRequestPrincipals(), y.GetRequestPrincipals(), patternsMeet) &&
		someMeet(x.GetNamespaces(), y.GetNamespaces(), patternsMeet) &&
		someMeet(x.GetIpBlocks(), y.GetIpBlocks(), cidrsMeet) &&
		someMeet(x.GetRemoteIpBlocks(), y.GetRemoteIpBlocks(), cidrsMeet)
}

func operationsMeet(x, y *security.Operation) bool {
	return someMeet(x.GetHosts(), y.GetHosts(), patternsMeet) &&
		someMeet(x.GetPorts(), y.GetPorts(), patternsMeet) &&
		someMeet(x.GetMethods(), y.GetMethods(), patternsMeet) &&
		someMeet(x.GetPaths(), y.GetPaths(), patternsMeet)
}

// patternsMeet reports whether two patterns can match one value.
func patternsMeet(a, b string) bool {
	if a == "*" || b == "*" || a == b {
		return true
	}
	ap, as := strings.HasSuffix(a, "*"), strings.HasPrefix(a, "*")
	bp, bs := strings.HasSuffix(b, "*"), strings.HasPrefix(b, "*")
	switch {
	case ap && bp:
		return strings.HasPrefix(a[:len(a)-1], b[:len(b)-1]) || strings.HasPrefix(b[:len(b)-1], a[:len(a)-1])
	case as && bs:
		return strings.HasSuffix(a[1:], b[1:]) || strings.HasSuffix(b[1:], a[1:])
	case ap && bs, as && bp:
		return true
	case ap:
		return strings.HasPrefix(b, a[:len(a)-1])
	case bp:
		return strings.HasPrefix(a, b[:len(b)-1])
	case as:
		return strings.HasSuffix(b, a[1:])
	case bs:
		return strings.HasSuffix(a, b[1:])
	}
	return false
}

func cidrsMeet(a, b string) bool {
	ap, ok1 := parseBlock(a)
	bp, ok2 := parseBlock(b)
	return !ok1 || !ok2 || ap.Overlaps(bp)
}

// checkPrincipals reports principals that can never be a workload's
// identity (GAL3019): exact values not of the form
// trust-domain/ns/NAMESPACE/sa/SERVICE-ACCOUNT match no peer, so an ALLOW
// grants nothing by them, a DENY denies nothing, and notPrincipals matches
// every peer; and, as information, principals of another trust domain.
func checkPrincipals(ix *index, r *reporter) {
	for _, p := range ix.ap {
		for i, rule := range p.spec.GetRules() {
			path := "spec.rules[" + strconv.Itoa(i) + "]"
			for j, f := range rule.GetFrom() {
				sp := path + ".from[" + strconv.Itoa(j) + "].source"
				for _, l := range []struct {
					name string
					v    []string
				}{{"principals", f.GetSource().GetPrincipals()}, {"notPrincipals", f.GetSource().GetNotPrincipals()}} {
					for k, v := range l.v {
						ix.principal(r, p.obj, sp+"."+l.name+"["+strconv.Itoa(k)+"]", v)
					}
				}
			}
			for j, c := range rule.GetWhen() {
				if c.GetKey() != "source.principal" {
					continue
				}
				for k, v := range c.GetValues() {
					ix.principal(r, p.obj, path+".when["+strconv.Itoa(j)+"].values["+strconv.Itoa(k)+"]", v)
				}
				for k, v := range c.GetNotValues() {
					ix.principal(r, p.obj, path+".when["+strconv.Itoa(j)+"].notValues["+strconv.Itoa(k)+"]", v)
				}
			}
		}
	}
}

func (ix *index) principal(r *reporter, o *api.Object, path, v string) {
	if v == "" || strings.Contains(v, "*") || strings.HasPrefix(v, "spiffe://") {
		return // wildcards, and spiffe:// (GAL2024), are checked elsewhere
	}
	parts := strings.Split(v, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" || parts[0] == "" || parts[2] == "" || parts[4] == "" {
		r.warnf(o, api.CodePrincipalFormat, path, "principal %q is not of the form <trust-domain>/ns/<namespace>/sa/<service-account>, so it is never a workload's identity and matches no peer; for example %s/ns/default/sa/sleep", v, ix.opts.Mesh.TrustDomain)
		return
	}
	if td := ix.opts.Mesh.TrustDomain; parts[0] != td {
		r.infof(o, api.CodePrincipalFormat, path, "principal %q is in trust domain %s, not this mesh's (%s); only peers with certificates from that trust domain match it", v, parts[0], td)
	}
}
