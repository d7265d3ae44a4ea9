package validate

import (
	"encoding/json"
	"net/url"
	"strconv"
	"strings"

	security "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"

	"github.com/meshd/meshd/modules/galley/api"
)

func (c *checker) peerAuthentication(pa *security.PeerAuthentication) {
	sel := pa.GetSelector()
	c.selector("spec.selector.matchLabels", sel.GetMatchLabels(), sel != nil)
	if len(sel.GetMatchLabels()) == 0 && len(pa.GetPortLevelMtls()) > 0 {
		c.errf(api.CodeMTLS, "spec.portLevelMtls", "portLevelMtls needs a selector: mesh-wide and namespace-wide PeerAuthentications cannot set per-port modes")
	}
	if _, written := c.o.Lines.Line("spec.portLevelMtls"); written && len(pa.GetPortLevelMtls()) == 0 {
		c.errf(api.CodeMTLS, "spec.portLevelMtls", "portLevelMtls is empty; list at least one port or remove it")
	}
	for _, port := range sortedUint32Keys(pa.GetPortLevelMtls()) {
		if port == 0 || port > 65535 {
			c.errf(api.CodePort, "spec.portLevelMtls["+strconv.FormatUint(uint64(port), 10)+"]", "port %d is not in 1..65535", port)
		}
	}
}

func sortedUint32Keys[V any](m map[uint32]V) []uint32 {
	out := make([]uint32, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// policyTarget checks the selector, targetRef and targetRefs of a security
// policy: at most one of them, each well formed.
func (c *checker) policyTarget(sel *typev1beta1.WorkloadSelector, ref *typev1beta1.PolicyTargetReference, refs []*typev1beta1.PolicyTargetReference) {
	n := 0
	if sel != nil {
		n++
	}
	if ref != nil {
		n++
	}
	if len(refs) > 0 {
		n++
	}
	if n > 1 {
		c.errf(api.CodeSelector, "spec.selector", "set only one of selector, targetRef and targetRefs")
	}
	c.selector("spec.selector.matchLabels", sel.GetMatchLabels(), sel != nil)
	if ref != nil {
		c.targetRef("spec.targetRef", ref)
	}
	for i, r := range refs {
		c.targetRef(at("spec", "targetRefs", i), r)
	}
}

func (c *checker) targetRef(p string, r *typev1beta1.PolicyTargetReference) {
	if r.GetName() == "" {
		c.errf(api.CodeRequired, p+".name", "targetRef needs a name")
	}
	if r.GetNamespace() != "" {
		c.errf(api.CodeSelector, p+".namespace", "targetRef cannot name another namespace; cross-namespace references are not supported")
	}
	group := r.GetGroup()
	switch {
	case group == "" && r.GetKind() == "Service":
	case group == "networking.istio.io" && r.GetKind() == "ServiceEntry":
	case group == "gateway.networking.k8s.io" && (r.GetKind() == "Gateway" || r.GetKind() == "GatewayClass"):
	default:
		c.errf(api.CodeSelector, p+".kind", "targetRef must point to a Service, a ServiceEntry (networking.istio.io) or a Gateway/GatewayClass (gateway.networking.k8s.io), not %s/%s", group, r.GetKind())
	}
}

func (c *checker) authorizationPolicy(ap *security.AuthorizationPolicy) {
	c.policyTarget(ap.GetSelector(), ap.GetTargetRef(), ap.GetTargetRefs())
	action := ap.GetAction()
	if action == security.AuthorizationPolicy_CUSTOM {
		if ap.GetRules() == nil {
			c.errf(api.CodeAuthzAction, "spec.rules", "a CUSTOM policy without rules never triggers; add rules, or an empty rule {} to match every request")
		} else if ap.GetProvider().GetName() == "" {
			c.errf(api.CodeAuthzAction, "spec.provider.name", "a CUSTOM policy needs provider.name, the extension authorizer to call")
		}
	} else if ap.GetProvider() != nil {
		c.errf(api.CodeAuthzAction, "spec.provider", "provider only applies to action CUSTOM, not %s", action)
	}
	if action == security.AuthorizationPolicy_DENY && ap.GetRules() == nil {
		c.errf(api.CodeAuthzAction, "spec.rules", "a DENY policy without rules never triggers; add rules, or an empty rule {} to deny every request")
	}
	for i, r := range ap.GetRules() {
		c.authzRule(at("spec", "rules", i), r, action)
	}
}

func (c *checker) authzRule(p string, r *security.Rule, action security.AuthorizationPolicy_Action) {
	if r == nil {
		c.errf(api.CodeAuthzAction, p, "rule must not be null")
		return
	}
	custom := action == security.AuthorizationPolicy_CUSTOM
	if _, written := c.o.Lines.Line(p + ".from"); written && len(r.GetFrom()) == 0 {
		c.errf(api.CodeAuthzAction, p+".from", "from is empty; remove it to match any source")
	}
	if _, written := c.o.Lines.Line(p + ".to"); written && len(r.GetTo()) == 0 {
		c.errf(api.CodeAuthzAction, p+".to", "to is empty; remove it to match any operation")
	}
	fromSet, toSet, tcpFrom, tcpTo := false, false, false, false
	for i, f := range r.GetFrom() {
		fp := at(p, "from", i)
		src := f.GetSource()
		if src == nil {
			c.errf(api.CodeAuthzAction, fp+".source", "from entry needs a source")
			continue
		}
		fromSet = true
		sp := fp + ".source"
		lists := []struct {
			name string
			v    []string
		}{
			{"principals", src.GetPrincipals()}, {"notPrincipals", src.GetNotPrincipals()},
			{"requestPrincipals", src.GetRequestPrincipals()}, {"notRequestPrincipals", src.GetNotRequestPrincipals()},
			{"namespaces", src.GetNamespaces()}, {"notNamespaces", src.GetNotNamespaces()},
			{"serviceAccounts", src.GetServiceAccounts()}, {"notServiceAccounts", src.GetNotServiceAccounts()},
			{"ipBlocks", src.GetIpBlocks()}, {"notIpBlocks", src.GetNotIpBlocks()},
			{"remoteIpBlocks", src.GetRemoteIpBlocks()}, {"notRemoteIpBlocks", src.GetNotRemoteIpBlocks()},
			{"trustDomains", src.GetTrustDomains()}, {"notTrustDomains", src.GetNotTrustDomains()},
		}
		empty := true
		for _, l := range lists {
			if len(l.v) > 0 {
				empty = false
			}
			c.noEmptyValues(sp, l.name, l.v)
		}
		if empty {
			c.errf(api.CodeAuthzAction, sp, "source is empty; set principals, namespaces, ipBlocks or another field, or remove the from entry")
		}
		if len(src.GetPrincipals())+len(src.GetNotPrincipals())+len(src.GetNamespaces())+len(src.GetNotNamespaces()) > 0 &&
			len(src.GetServiceAccounts())+len(src.GetNotServiceAccounts()) > 0 {
			c.errf(api.CodeIdentity, sp+".serviceAccounts", "serviceAccounts cannot be combined with principals or namespaces in one source")
		}
		for _, l := range []struct {
			name string
			v    []string
		}{{"ipBlocks", src.GetIpBlocks()}, {"notIpBlocks", src.GetNotIpBlocks()}, {"remoteIpBlocks", src.GetRemoteIpBlocks()}, {"notRemoteIpBlocks", src.GetNotRemoteIpBlocks()}} {
			for j, v := range l.v {
				if v != "" {
					c.errIf(api.CodeAddress, at(sp, l.name, j), checkIPOrCIDR(v))
				}
			}
		}
		for _, l := range []struct {
			name string
			v    []string
		}{{"principals", src.GetPrincipals()}, {"notPrincipals", src.GetNotPrincipals()}} {
			for j, v := range l.v {
				c.principal(at(sp, l.name, j), v)
			}
		}
		for _, l := range []struct {
			name string
			v    []string
		}{{"namespaces", src.GetNamespaces()}, {"notNamespaces", src.GetNotNamespaces()}} {
			for j, v := range l.v {
				c.wildcardValue(at(sp, l.name, j), v, "namespace")
			}
		}
		c.serviceAccounts(sp, "serviceAccounts", src.GetServiceAccounts())
		c.serviceAccounts(sp, "notServiceAccounts", src.GetNotServiceAccounts())
		c.trustDomains(sp, "trustDomains", src.GetTrustDomains())
		c.trustDomains(sp, "notTrustDomains", src.GetNotTrustDomains())
		if custom {
			for _, l := range lists {
				if len(l.v) > 0 && !strings.Contains(strings.ToLower(l.name), "ipblocks") {
					c.errf(api.CodeAuthzAction, sp+"."+l.name, "%s is not supported with action CUSTOM; the external authorizer cannot see peer identities", l.name)
				}
			}
		}
		if src.Principals != nil || src.NotPrincipals != nil || src.IpBlocks != nil || src.NotIpBlocks != nil ||
			src.Namespaces != nil || src.NotNamespaces != nil || src.RemoteIpBlocks != nil || src.NotRemoteIpBlocks != nil ||
			src.ServiceAccounts != nil || src.NotServiceAccounts != nil {
			tcpFrom = true
		}
	}
	for i, t := range r.GetTo() {
		tp := at(p, "to", i)
		op := t.GetOperation()
		if op == nil {
			c.errf(api.CodeAuthzAction, tp+".operation", "to entry needs an operation")
			continue
		}
		toSet = true
		opp := tp + ".operation"
		lists := []struct {
			name string
			v    []string
		}{
			{"hosts", op.GetHosts()}, {"notHosts", op.GetNotHosts()}, {"ports", op.GetPorts()}, {"notPorts", op.GetNotPorts()},
			{"methods", op.GetMethods()}, {"notMethods", op.GetNotMethods()}, {"paths", op.GetPaths()}, {"notPaths", op.GetNotPaths()},
		}
		empty := true
		for _, l := range lists {
			if len(l.v) > 0 {
				empty = false
			}
			c.noEmptyValues(opp, l.name, l.v)
		}
		if empty {
			c.errf(api.CodeAuthzAction, opp, "operation is empty; set hosts, ports, methods or paths, or remove the to entry")
		}
		for _, l := range []struct {
			name string
			v    []string
		}{{"ports", op.GetPorts()}, {"notPorts", op.GetNotPorts()}} {
			for j, v := range l.v {
				if n, err := strconv.ParseUint(v, 10, 32); v != "" && (err != nil || n > 65535) {
					c.errf(api.CodePort, at(opp, l.name, j), "port %q is not a number in 0..65535", v)
				}
			}
		}
		for _, l := range []struct {
			name string
			v    []string
		}{{"paths", op.GetPaths()}, {"notPaths", op.GetNotPaths()}} {
			for j, v := range l.v {
				c.errIf(api.CodeAuthzAction, at(opp, l.name, j), checkPathTemplate(v))
			}
		}
		if op.Ports != nil || op.NotPorts != nil {
			tcpTo = true
		}
	}
	for i, cond := range r.GetWhen() {
		c.condition(at(p, "when", i), cond, custom)
	}
	if action == security.AuthorizationPolicy_DENY && ((fromSet && !toSet && !tcpFrom) || (toSet && !tcpTo)) {
		c.warnf(api.CodeSurprising, p, "this DENY rule uses only HTTP attributes, so on TCP ports it matches (and denies) every connection; add ports to scope it")
	}
}

// noEmptyValues rejects "" in a match list: it matches nothing useful and is
// usually a templating accident.
func (c *checker) noEmptyValues(base, name string, vs []string) {
	for i, v := range vs {
		if v == "" {
			c.errf(api.CodeAuthzAction, at(base, name, i), "empty value; remove it")
		}
	}
}

// principal checks a peer identity pattern: trust-domain/ns/NS/sa/SA with
// an optional "*" at either end.
func (c *checker) principal(p, v string) {
	if v == "" {
		return
	}
	if strings.HasPrefix(v, "spiffe://") {
		c.warnf(api.CodeIdentity, p, "principal %q starts with spiffe://, which is never part of the matched identity; write %s", v, strings.TrimPrefix(v, "spiffe://"))
		return
	}
	c.wildcardValue(p, v, "principal")
}

// wildcardValue warns about a '*' in the middle of a value: authorization
// matching supports exact, prefix ("a*"), suffix ("*a") and presence ("*")
// only, so a middle '*' is matched literally.
func (c *checker) wildcardValue(p, v, what string) {
	n := strings.Count(v, "*")
	if n == 0 || v == "*" {
		return
	}
	if n > 1 || !strings.HasPrefix(v, "*") && !strings.HasSuffix(v, "*") {
		c.warnf(api.CodeIdentity, p, "%s %q has a '*' that is not at the start or end; it is matched literally", what, v)
	}
}

func (c *checker) serviceAccounts(base, name string, vs []string) {
	if len(vs) > 16 {
		c.errf(api.CodeIdentity, base+"."+name, "at most 16 service accounts may be listed, got %d", len(vs))
	}
	for i, v := range vs {
		ip := at(base, name, i)
		switch {
		case v == "":
		case strings.Contains(v, "*"):
			c.errf(api.CodeIdentity, ip, "service account %q cannot contain wildcards", v)
		case strings.Count(v, "/") > 1 || len(v) > 320:
			c.errf(api.CodeIdentity, ip, "service account %q must be \"name\" or \"namespace/name\"", v)
		default:
			if ns, sa, ok := strings.Cut(v, "/"); ok && (ns == "" || sa == "") {
				c.errf(api.CodeIdentity, ip, "service account %q must be \"name\" or \"namespace/name\" with both parts", v)
			}
		}
	}
}

func (c *checker) trustDomains(base, name string, vs []string) {
	for i, v := range vs {
		ip := at(base, name, i)
		if v == "" {
			continue
		}
		if n := strings.Count(v, "*"); n > 1 || n == 1 && v != "*" && !strings.HasPrefix(v, "*") && !strings.HasSuffix(v, "*") {
			c.errf(api.CodeIdentity, ip, "trust domain %q may contain one '*', at the start or end only", v)
		}
		if strings.Contains(v, "/") {
			c.errf(api.CodeIdentity, ip, "trust domain %q must not contain '/'", v)
		}
	}
}

// checkPathTemplate checks {*} and {**} path templates: {**} only last, no
// other braces, and literal segments made of URI path characters.
func checkPathTemplate(path string) error {
	if !strings.Contains(path, "{*}") && !strings.Contains(path, "{**}") {
		return nil
	}
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for i, s := range segs {
		switch {
		case s == "{*}":
		case s == "{**}":
			if i != len(segs)-1 {
				return errf("path %q: {**} must be the last segment", path)
			}
		case strings.ContainsAny(s, "{}"):
			return errf("path %q: segment %q mixes braces with text; use {*} or {**} as whole segments", path, s)
		default:
			for j := 0; j < len(s); j++ {
				if !isPathChar(s[j]) {
					return errf("path %q: segment %q contains %q, which is not allowed in a path template", path, s, s[j])
				}
			}
		}
	}
	return nil
}

func isPathChar(b byte) bool {
	return isAlnum(b) || strings.IndexByte("-._~%!$&'()+,;:@=", b) >= 0
}

// conditionKeys lists the exact condition keys Istio documents for
// AuthorizationPolicy "when" clauses; prefixed keys are handled separately.
var conditionKeys = map[string]string{
	"source.ip":              "ip",
	"remote.ip":              "ip",
	"source.namespace":       "",
	"source.serviceAccount":  "serviceAccount",
	"source.principal":       "",
	"source.trustDomain":     "trustDomain",
	"request.auth.principal": "",
	"request.auth.audiences": "",
	"request.auth.presenter": "",
	"destination.ip":         "ip",
	"destination.port":       "port",
	"connection.sni":         "",
}

func (c *checker) condition(p string, cond *security.Condition, custom bool) {
	if cond == nil {
		c.errf(api.CodeCondition, p, "condition must not be null")
		return
	}
	k := cond.GetKey()
	if k == "" {
		c.errf(api.CodeCondition, p+".key", "condition needs a key")
		return
	}
	if len(cond.GetValues()) == 0 && len(cond.GetNotValues()) == 0 {
		c.errf(api.CodeCondition, p, "condition %s needs values or notValues", k)
	}
	if custom && (k == "source.namespace" || k == "source.serviceAccount" || k == "source.trustDomain" || k == "source.principal" || strings.HasPrefix(k, "request.auth.")) {
		c.errf(api.CodeAuthzAction, p+".key", "condition %s is not supported with action CUSTOM", k)
	}
	kind, known := conditionKeys[k]
	switch {
	case known:
	case strings.HasPrefix(k, "request.headers"), strings.HasPrefix(k, "request.auth.claims"), strings.HasPrefix(k, "experimental.envoy.filters."):
		open := strings.IndexByte(k, '[')
		if !strings.HasSuffix(k, "]") || open <= 0 || open >= len(k)-2 {
			c.errf(api.CodeCondition, p+".key", "condition key %q needs a name in brackets, e.g. request.headers[x-user]", k)
		}
	case k == "destination.namespace":
		c.errf(api.CodeCondition, p+".key", "condition key destination.namespace is not supported; the policy's namespace already scopes it")
		return
	case strings.HasPrefix(k, "destination.labels"):
		c.errf(api.CodeCondition, p+".key", "condition key %s is not supported; use the policy's selector", k)
		return
	case k == "destination.name" || k == "destination.user":
		c.errf(api.CodeCondition, p+".key", "condition key %s was removed with the v1alpha1 API", k)
		return
	default:
		c.errf(api.CodeCondition, p+".key", "unknown condition key %q; see Istio's authorization condition list (source.ip, request.headers[name], request.auth.claims[name], destination.port, ...)", k)
		return
	}
	for _, l := range []struct {
		name string
		v    []string
	}{{"values", cond.GetValues()}, {"notValues", cond.GetNotValues()}} {
		for i, v := range l.v {
			vp := at(p, l.name, i)
			if v == "" {
				c.errf(api.CodeCondition, vp, "empty value; remove it")
				continue
			}
			switch kind {
			case "ip":
				c.errIf(api.CodeCondition, vp, checkIPOrCIDR(v))
			case "port":
				if n, err := strconv.ParseUint(v, 10, 32); err != nil || n > 65535 {
					c.errf(api.CodeCondition, vp, "port %q is not a number in 0..65535", v)
				}
			case "serviceAccount":
				if strings.Contains(v, "*") || strings.Count(v, "/") > 1 {
					c.errf(api.CodeCondition, vp, "service account %q must be \"name\" or \"namespace/name\" without wildcards", v)
				}
			case "trustDomain":
				if n := strings.Count(v, "*"); n > 1 || n == 1 && v != "*" && !strings.HasPrefix(v, "*") && !strings.HasSuffix(v, "*") {
					c.errf(api.CodeCondition, vp, "trust domain %q may contain one '*', at the start or end only", v)
				}
			}
		}
	}
}

func (c *checker) requestAuthentication(ra *security.RequestAuthentication) {
	c.policyTarget(ra.GetSelector(), ra.GetTargetRef(), ra.GetTargetRefs())
	for i, r := range ra.GetJwtRules() {
		c.jwtRule(at("spec", "jwtRules", i), r)
	}
}

func (c *checker) jwtRule(p string, r *security.JWTRule) {
	if r == nil {
		c.errf(api.CodeJWT, p, "JWT rule must not be null")
		return
	}
	for i, a := range r.GetAudiences() {
		if a == "" {
			c.errf(api.CodeJWT, at(p, "audiences", i), "audience must not be empty")
		}
	}
	if r.GetIssuer() == "" && r.GetJwksUri() == "" {
		c.errf(api.CodeJWT, p+".issuer", "JWT rule needs an issuer (or at least a jwksUri)")
	}
	if u := r.GetJwksUri(); u != "" {
		pu, err := url.Parse(u)
		switch {
		case err != nil || pu.Host == "":
			c.errf(api.CodeJWT, p+".jwksUri", "jwksUri %q is not a valid URL", u)
		case pu.Scheme == "http":
			c.warnf(api.CodeSurprising, p+".jwksUri", "jwksUri uses plain http, so the signing keys can be tampered with in transit; use https")
		case pu.Scheme != "https":
			c.errf(api.CodeJWT, p+".jwksUri", "jwksUri scheme %q is not supported; use https", pu.Scheme)
		default:
			if port := pu.Port(); port != "" {
				if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
					c.errf(api.CodePort, p+".jwksUri", "jwksUri port %q is not in 1..65535", port)
				}
			}
		}
	}
	if j := r.GetJwks(); j != "" {
		c.inlineJWKS(p+".jwks", j)
		if r.GetJwksUri() != "" {
			c.warnf(api.CodeJWT, p+".jwksUri", "both jwks and jwksUri are set; the inline jwks is used and jwksUri is ignored, so remove one")
		}
	}
	for i, h := range r.GetFromHeaders() {
		if h.GetName() == "" {
			c.errf(api.CodeJWT, at(p, "fromHeaders", i)+".name", "fromHeaders entry needs a header name")
		}
	}
	for i, q := range r.GetFromParams() {
		if q == "" {
			c.errf(api.CodeJWT, at(p, "fromParams", i), "query parameter name must not be empty")
		}
	}
	for i, ck := range r.GetFromCookies() {
		if ck == "" {
			c.errf(api.CodeJWT, at(p, "fromCookies", i), "cookie name must not be empty")
		}
	}
	for i, oc := range r.GetOutputClaimToHeaders() {
		op := at(p, "outputClaimToHeaders", i)
		if oc.GetClaim() == "" || oc.GetHeader() == "" {
			c.errf(api.CodeJWT, op, "outputClaimToHeaders needs both header and claim")
			continue
		}
		if !isStrictHeader(oc.GetHeader()) {
			c.errf(api.CodeHeader, op+".header", "header %q must use only letters, digits, '-' and '_'", oc.GetHeader())
		}
	}
	c.duration(p+".timeout", r.GetTimeout())
}

func isStrictHeader(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isAlnum(s[i]) && s[i] != '-' && s[i] != '_' {
			return false
		}
	}
	return s != ""
}

// inlineJWKS checks an inline JSON Web Key Set: a JSON object with a "keys"
// list of keys that each name their type. Private key members are flagged:
// verifiers need public keys only, and publishing private ones is a leak.
func (c *checker) inlineJWKS(p, j string) {
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal([]byte(j), &set); err != nil {
		c.errf(api.CodeJWT, p, "jwks is not valid JSON: %v", err)
		return
	}
	if len(set.Keys) == 0 {
		c.errf(api.CodeJWT, p, "jwks has no keys; it must be a JSON object with a \"keys\" list")
		return
	}
	for i, k := range set.Keys {
		kty, _ := k["kty"].(string)
		if kty == "" {
			c.errf(api.CodeJWT, p, "jwks key %d has no \"kty\" (key type)", i)
			continue
		}
		if _, private := k["d"]; private || kty == "oct" {
			c.warnf(api.CodeJWT, p, "jwks key %d contains private or symmetric key material; only public keys are needed to verify tokens", i)
		}
	}
}
