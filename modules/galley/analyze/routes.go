package analyze

import (
	"maps"
	"slices"
	"strconv"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/galley/api"
)

// checkDuplicates reports objects whose kind/namespace/name repeats; only
// one of them could ever be accepted.
func checkDuplicates(ix *index, r *reporter) {
	first := make(map[api.Key]*api.Object, len(ix.objs))
	for _, o := range ix.objs {
		k := o.Key()
		if prev, dup := first[k]; dup {
			r.errf(o, api.CodeDuplicateObject, "metadata.name", "%s is defined twice; the other definition is at %s:%d. Names must be unique per kind and namespace", k, prev.Source.File, prev.Source.Line)
			continue
		}
		first[k] = o
	}
}

// routeDest is one destination a VirtualService sends traffic to.
type routeDest struct {
	path string // field path of the destination
	dest *networking.Destination
}

// destinations lists every destination of a VirtualService: HTTP, TLS and
// TCP routes and mirrors.
func destinations(vs *networking.VirtualService) []routeDest {
	var out []routeDest
	for i, h := range vs.GetHttp() {
		hp := "spec.http[" + strconv.Itoa(i) + "]"
		for j, d := range h.GetRoute() {
			if d.GetDestination() != nil {
				out = append(out, routeDest{hp + ".route[" + strconv.Itoa(j) + "].destination", d.GetDestination()})
			}
		}
		if h.GetMirror() != nil {
			out = append(out, routeDest{hp + ".mirror", h.GetMirror()})
		}
		for j, m := range h.GetMirrors() {
			if m.GetDestination() != nil {
				out = append(out, routeDest{hp + ".mirrors[" + strconv.Itoa(j) + "].destination", m.GetDestination()})
			}
		}
	}
	for i, t := range vs.GetTls() {
		for j, d := range t.GetRoute() {
			if d.GetDestination() != nil {
				out = append(out, routeDest{"spec.tls[" + strconv.Itoa(i) + "].route[" + strconv.Itoa(j) + "].destination", d.GetDestination()})
			}
		}
	}
	for i, t := range vs.GetTcp() {
		for j, d := range t.GetRoute() {
			if d.GetDestination() != nil {
				out = append(out, routeDest{"spec.tcp[" + strconv.Itoa(i) + "].route[" + strconv.Itoa(j) + "].destination", d.GetDestination()})
			}
		}
	}
	return out
}

// checkDestinations checks that every route goes to a known host, to a
// subset some DestinationRule defines, and names a port when the service
// has several.
func checkDestinations(ix *index, r *reporter) {
	for _, v := range ix.vs {
		ns := v.obj.Namespace
		for _, d := range destinations(v.spec) {
			host := d.dest.GetHost()
			if host == "" || host == "*" {
				continue // validate reports these
			}
			fqdn := ix.fqdn(host, ns)
			ses := ix.serviceEntriesFor(host, fqdn, ns)
			known := len(ses) > 0 || ix.opts.Hosts != nil && (ix.opts.Hosts.HasHost(fqdn) || ix.opts.Hosts.HasHost(host))
			switch {
			case known:
			case ix.opts.Hosts == nil && (fqdn != host || ix.isClusterLocal(fqdn)):
				r.warnf(v.obj, api.CodeUnverifiedHost, d.path+".host", "host %s (%s) is not declared by any ServiceEntry; it may be a Kubernetes service, which offline validation cannot see", host, fqdn)
			default:
				r.errf(v.obj, api.CodeUnknownHost, d.path+".host", "host %s is not known to the service registry or any ServiceEntry visible from namespace %s; add a ServiceEntry or fix the host", host, ns)
			}
			if s := d.dest.GetSubset(); s != "" {
				checkSubset(ix, r, v.obj, d, fqdn, s)
			}
			if d.dest.GetPort() == nil && len(ses) > 0 {
				ports := ses[0].se.spec.GetPorts()
				if len(ports) > 1 {
					nums := make([]string, len(ports))
					for i, p := range ports {
						nums[i] = strconv.Itoa(int(p.GetNumber()))
					}
					r.errf(v.obj, api.CodePortRequired, d.path, "host %s has several ports (%s); say which with port: {number: N}", host, strings.Join(nums, ", "))
				}
			}
		}
	}
}

func checkSubset(ix *index, r *reporter, vs *api.Object, d routeDest, fqdn, subset string) {
	drs := ix.destinationRulesFor(fqdn, vs.Namespace)
	var defined []string
	for _, dr := range drs {
		for _, s := range dr.spec.GetSubsets() {
			if s.GetName() == subset {
				return
			}
			defined = append(defined, s.GetName())
		}
	}
	if len(drs) == 0 {
		r.errf(vs, api.CodeUnknownSubset, d.path+".subset", "subset %q of host %s is not defined: no DestinationRule for the host is visible from namespace %s; add one with the subset", subset, d.dest.GetHost(), vs.Namespace)
		return
	}
	names := make([]string, len(drs))
	for i, dr := range drs {
		names[i] = nsName(dr.obj)
	}
	rules := "DestinationRule " + strings.Join(names, ", ")
	if len(defined) == 0 {
		r.errf(vs, api.CodeUnknownSubset, d.path+".subset", "subset %q of host %s is not defined: %s defines no subsets", subset, d.dest.GetHost(), rules)
		return
	}
	slices.Sort(defined)
	r.errf(vs, api.CodeUnknownSubset, d.path+".subset", "subset %q of host %s is not defined by %s, which defines %s", subset, d.dest.GetHost(), rules, strings.Join(defined, ", "))
}

// gatewayRef resolves a gateway reference of a VirtualService in namespace
// ns to namespace/name.
func gatewayRef(ref, ns string) string {
	if gns, name, ok := strings.Cut(ref, "/"); ok {
		return gns + "/" + name
	}
	if name, gns, ok := strings.Cut(ref, "."); ok {
		// Legacy name.namespace(.svc.cluster.local) form.
		gns, _, _ = strings.Cut(gns, ".")
		return gns + "/" + name
	}
	return ns + "/" + ref
}

// checkGateways checks that gateway references resolve, and that the
// gateway serves the VirtualService's hosts.
func checkGateways(ix *index, r *reporter) {
	for _, v := range ix.vs {
		o := v.obj
		for i, g := range v.spec.GetGateways() {
			checkGatewayRef(ix, r, o, "spec.gateways["+strconv.Itoa(i)+"]", g, v.spec.GetHosts())
		}
		for i, h := range v.spec.GetHttp() {
			for j, m := range h.GetMatch() {
				for k, g := range m.GetGateways() {
					checkGatewayRef(ix, r, o, "spec.http["+strconv.Itoa(i)+"].match["+strconv.Itoa(j)+"].gateways["+strconv.Itoa(k)+"]", g, nil)
				}
			}
		}
	}
}

func checkGatewayRef(ix *index, r *reporter, o *api.Object, path, ref string, hosts []string) {
	if ref == "mesh" || ref == "" {
		return
	}
	key := gatewayRef(ref, o.Namespace)
	gw, ok := ix.gwByName[key]
	if !ok {
		r.errf(o, api.CodeUnknownGateway, path, "gateway %s does not exist; add the Gateway or fix the reference (namespace/name)", key)
		return
	}
	for _, h := range hosts {
		if !gatewayServes(gw, h, o.Namespace) {
			r.warnf(o, api.CodeHostNotOnGateway, path, "gateway %s has no server for host %s, so this VirtualService gets no traffic from it for that host", key, h)
		}
	}
}

// gatewayServes reports whether some server of gw accepts host for
// VirtualServices in namespace vsNS.
func gatewayServes(gw typed[*networking.Gateway], host, vsNS string) bool {
	for _, s := range gw.spec.GetServers() {
		for _, sh := range s.GetHosts() {
			ns, h, ok := strings.Cut(sh, "/")
			if !ok {
				ns, h = "*", sh
			}
			if ns != "*" && !(ns == "." && vsNS == gw.obj.Namespace) && ns != vsNS {
				continue
			}
			if hostsOverlap(h, host) {
				return true
			}
		}
	}
	return false
}

// checkDelegates checks that delegate references name a VirtualService
// that exists and is a delegate (has no hosts).
func checkDelegates(ix *index, r *reporter) {
	for _, v := range ix.vs {
		for i, h := range v.spec.GetHttp() {
			d := h.GetDelegate()
			if d == nil || d.GetName() == "" {
				continue
			}
			ns := d.GetNamespace()
			if ns == "" {
				ns = v.obj.Namespace
			}
			path := "spec.http[" + strconv.Itoa(i) + "].delegate"
			target, ok := ix.vsByName[ns+"/"+d.GetName()]
			switch {
			case !ok:
				r.errf(v.obj, api.CodeUnknownDelegate, path+".name", "delegate VirtualService %s/%s does not exist", ns, d.GetName())
			case len(target.spec.GetHosts()) > 0:
				r.errf(v.obj, api.CodeUnknownDelegate, path+".name", "VirtualService %s/%s has hosts, so it is not a delegate and will be ignored here; remove its hosts", ns, d.GetName())
			}
		}
	}
}

// checkVSConflicts reports VirtualServices that claim the same host on the
// same gateway with overlapping exportTo. On the mesh only one of them takes
// effect; on a gateway their routes are merged in no defined order.
func checkVSConflicts(ix *index, r *reporter) {
	type claim struct {
		vs   typed[*networking.VirtualService]
		host string // as written
		idx  int
	}
	claims := map[string][]claim{} // gateway + "|" + fqdn host
	for _, v := range ix.vs {
		gws := v.spec.GetGateways()
		if len(gws) == 0 {
			gws = []string{"mesh"}
		}
		for hi, h := range v.spec.GetHosts() {
			fq := ix.fqdn(h, v.obj.Namespace)
			for _, g := range gws {
				gk := "mesh"
				if g != "mesh" {
					gk = gatewayRef(g, v.obj.Namespace)
				}
				claims[gk+"|"+fq] = append(claims[gk+"|"+fq], claim{v, h, hi})
			}
		}
	}
	// Visit hosts in a fixed order so that, when two VirtualServices share
	// several hosts, the same one is reported every run.
	reported := map[[2]api.Key]bool{}
	for _, k := range slices.Sorted(maps.Keys(claims)) {
		cs := claims[k]
		gk, fq, _ := strings.Cut(k, "|")
		for i := 1; i < len(cs); i++ {
			for j := 0; j < i; j++ {
				a, b := cs[j], cs[i]
				if a.vs.obj == b.vs.obj || a.vs.obj.Key() == b.vs.obj.Key() {
					continue
				}
				if !scopesOverlap(a.vs.spec.GetExportTo(), a.vs.obj.Namespace, b.vs.spec.GetExportTo(), b.vs.obj.Namespace) {
					continue
				}
				pair := [2]api.Key{a.vs.obj.Key(), b.vs.obj.Key()}
				if reported[pair] {
					continue
				}
				reported[pair] = true
				path := "spec.hosts[" + strconv.Itoa(b.idx) + "]"
				if gk == "mesh" {
					r.errf(b.vs.obj, api.CodeVSConflict, path, "host %s is also routed on the mesh by VirtualService %s; only one of them takes effect, so merge them into one", fq, where(a.vs.obj))
				} else {
					r.warnf(b.vs.obj, api.CodeVSMerged, path, "host %s on gateway %s is also routed by VirtualService %s; their routes are merged in no defined order, so merge them into one", fq, gk, where(a.vs.obj))
				}
			}
		}
	}
}

// checkDRConflicts reports DestinationRules in one namespace for the same
// host and workloads. Istio merges them: subsets are combined, and only the
// first rule's traffic policy counts.
func checkDRConflicts(ix *index, r *reporter) {
	groups := map[string][]typed[*networking.DestinationRule]{}
	var order []string
	for _, d := range ix.dr {
		k := d.obj.Namespace + "|" + ix.fqdn(d.spec.GetHost(), d.obj.Namespace) + "|" + selectorKey(d.spec.GetWorkloadSelector().GetMatchLabels())
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], d)
	}
	for _, k := range order {
		ds := groups[k]
		for i := 1; i < len(ds); i++ {
			b := ds[i]
			for j := 0; j < i; j++ {
				a := ds[j]
				if a.obj.Key() == b.obj.Key() || !scopesOverlap(a.spec.GetExportTo(), a.obj.Namespace, b.spec.GetExportTo(), b.obj.Namespace) {
					continue
				}
				host := b.spec.GetHost()
				conflict := false
				for si, s := range b.spec.GetSubsets() {
					for _, sa := range a.spec.GetSubsets() {
						if sa.GetName() == s.GetName() {
							r.errf(b.obj, api.CodeDRConflict, "spec.subsets["+strconv.Itoa(si)+"].name", "subset %q of host %s is also defined by DestinationRule %s; only one definition is used, so keep one", s.GetName(), host, where(a.obj))
							conflict = true
						}
					}
				}
				if a.spec.GetTrafficPolicy() != nil && b.spec.GetTrafficPolicy() != nil {
					r.errf(b.obj, api.CodeDRConflict, "spec.trafficPolicy", "host %s already has a trafficPolicy in DestinationRule %s; this one is ignored, so merge them", host, where(a.obj))
					conflict = true
				}
				if !conflict {
					r.infof(b.obj, api.CodeDRMerged, "spec.host", "DestinationRule %s also applies to host %s; the two are merged", where(a.obj), host)
				}
			}
		}
	}
}

// selectorKey renders labels canonically, for grouping.
func selectorKey(m map[string]string) string {
	if len(m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(m[k])
		b.WriteByte(',')
	}
	return b.String()
}

// checkShadowedRoutes reports routes that come after a route matching every
// request: routes are tried in order and the first match wins.
func checkShadowedRoutes(ix *index, r *reporter) {
	for _, v := range ix.vs {
		catchAll := -1
		for i, h := range v.spec.GetHttp() {
			if catchAll >= 0 {
				r.warnf(v.obj, api.CodeShadowedRoute, "spec.http["+strconv.Itoa(i)+"]", "HTTP route %s can never match: route %s before it matches every request; move it up or narrow the earlier match", routeLabel(h.GetName(), i), routeLabel(v.spec.GetHttp()[catchAll].GetName(), catchAll))
				continue
			}
			if httpCatchAll(h) {
				catchAll = i
			}
		}
		shadowL4(r, v.obj, "tcp", tcpMatchCounts(v.spec.GetTcp()))
		shadowL4(r, v.obj, "tls", tlsMatchCounts(v.spec.GetTls()))
	}
}

func tcpMatchCounts(rs []*networking.TCPRoute) []int {
	out := make([]int, len(rs))
	for i, rt := range rs {
		out[i] = len(rt.GetMatch())
	}
	return out
}

func tlsMatchCounts(rs []*networking.TLSRoute) []int {
	out := make([]int, len(rs))
	for i, rt := range rs {
		out[i] = len(rt.GetMatch())
	}
	return out
}

// shadowL4 reports TCP or TLS routes after one without match conditions.
func shadowL4(r *reporter, o *api.Object, field string, matchCounts []int) {
	catchAll := -1
	for i, n := range matchCounts {
		if catchAll >= 0 {
			r.warnf(o, api.CodeShadowedRoute, "spec."+field+"["+strconv.Itoa(i)+"]", "%s route #%d can never match: route #%d before it has no match conditions and takes all traffic", strings.ToUpper(field), i, catchAll)
			continue
		}
		if n == 0 {
			catchAll = i
		}
	}
}

func routeLabel(name string, i int) string {
	if name != "" {
		return strconv.Quote(name) + " (#" + strconv.Itoa(i) + ")"
	}
	return "#" + strconv.Itoa(i)
}

// httpCatchAll reports whether a route matches every request: it has no
// match, or one of its matches has no condition beyond a URI prefix of "/".
func httpCatchAll(h *networking.HTTPRoute) bool {
	if len(h.GetMatch()) == 0 {
		return true
	}
	for _, m := range h.GetMatch() {
		if m == nil {
			continue
		}
		if m.GetScheme() != nil || m.GetMethod() != nil || m.GetAuthority() != nil || len(m.GetHeaders()) > 0 ||
			len(m.GetQueryParams()) > 0 || len(m.GetWithoutHeaders()) > 0 || m.GetPort() != 0 ||
			len(m.GetSourceLabels()) > 0 || len(m.GetGateways()) > 0 || m.GetSourceNamespace() != "" {
			continue
		}
		u := m.GetUri()
		if u == nil {
			return true
		}
		switch t := u.GetMatchType().(type) {
		case *networking.StringMatch_Prefix:
			if t.Prefix == "/" || t.Prefix == "" {
				return true
			}
		case *networking.StringMatch_Regex:
			if t.Regex == ".*" || t.Regex == "/.*" {
				return true
			}
		case nil:
			return true
		}
	}
	return false
}
