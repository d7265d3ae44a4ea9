package analyze

import (
	"strings"

	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/modules/galley/api"
)

// index holds the lookups the analyzers share, built once per set so that
// each check is a series of map lookups rather than a scan of every object.
type index struct {
	opts Options
	objs []*api.Object

	vs       []typed[*networking.VirtualService]
	dr       []typed[*networking.DestinationRule]
	gw       []typed[*networking.Gateway]
	se       []typed[*networking.ServiceEntry]
	we       []typed[*networking.WorkloadEntry]
	wg       []typed[*networking.WorkloadGroup]
	sc       []typed[*networking.Sidecar]
	pa       []typed[*security.PeerAuthentication]
	ap       []typed[*security.AuthorizationPolicy]
	ra       []typed[*security.RequestAuthentication]
	vsByName map[string]typed[*networking.VirtualService] // namespace/name
	gwByName map[string]typed[*networking.Gateway]        // namespace/name

	// seHosts maps exact ServiceEntry hosts to the entries declaring them;
	// seWildcards lists entries with wildcard hosts, which need a scan.
	seHosts     map[string][]seHost
	seWildcards []seHost
	// drByHost maps fully qualified DestinationRule hosts to their rules;
	// drWildcards lists rules for wildcard hosts.
	drByHost    map[string][]typed[*networking.DestinationRule]
	drWildcards []typed[*networking.DestinationRule]

	// byLabel indexes workloads (for selector matching) by namespace and
	// label ("" namespace: all), so a selector only scans the workloads
	// carrying its rarest label rather than the whole namespace.
	byLabel map[labelKey][]workload
}

type labelKey struct{ ns, k, v string }

// typed pairs an object with its spec, already type-asserted.
type typed[T any] struct {
	obj  *api.Object
	spec T
}

type seHost struct {
	host string
	se   typed[*networking.ServiceEntry]
}

// workload is something a selector can select: a WorkloadEntry or the
// template of a WorkloadGroup.
type workload struct {
	labels map[string]string
	obj    *api.Object
}

func newIndex(objs []*api.Object, opts Options) *index {
	ix := &index{
		opts:     opts,
		objs:     objs,
		vsByName: make(map[string]typed[*networking.VirtualService]),
		gwByName: make(map[string]typed[*networking.Gateway]),
		seHosts:  make(map[string][]seHost),
		drByHost: make(map[string][]typed[*networking.DestinationRule]),
		byLabel:  make(map[labelKey][]workload),
	}
	for _, o := range objs {
		switch s := o.Spec.(type) {
		case *networking.VirtualService:
			t := typed[*networking.VirtualService]{o, s}
			ix.vs = append(ix.vs, t)
			if _, dup := ix.vsByName[nsName(o)]; !dup {
				ix.vsByName[nsName(o)] = t
			}
		case *networking.DestinationRule:
			t := typed[*networking.DestinationRule]{o, s}
			ix.dr = append(ix.dr, t)
			h := ix.fqdn(s.GetHost(), o.Namespace)
			if strings.HasPrefix(h, "*") {
				ix.drWildcards = append(ix.drWildcards, t)
			} else {
				ix.drByHost[h] = append(ix.drByHost[h], t)
			}
		case *networking.Gateway:
			t := typed[*networking.Gateway]{o, s}
			ix.gw = append(ix.gw, t)
			if _, dup := ix.gwByName[nsName(o)]; !dup {
				ix.gwByName[nsName(o)] = t
			}
		case *networking.ServiceEntry:
			t := typed[*networking.ServiceEntry]{o, s}
			ix.se = append(ix.se, t)
			for _, h := range s.GetHosts() {
				if strings.HasPrefix(h, "*") {
					ix.seWildcards = append(ix.seWildcards, seHost{h, t})
				} else {
					ix.seHosts[h] = append(ix.seHosts[h], seHost{h, t})
				}
			}
		case *networking.WorkloadEntry:
			ix.we = append(ix.we, typed[*networking.WorkloadEntry]{o, s})
			ix.addWorkload(workload{s.GetLabels(), o})
		case *networking.WorkloadGroup:
			ix.wg = append(ix.wg, typed[*networking.WorkloadGroup]{o, s})
			// Workloads that join the group carry the group's metadata
			// labels and the template's labels.
			labels := make(map[string]string, len(s.GetMetadata().GetLabels())+len(s.GetTemplate().GetLabels()))
			for k, v := range s.GetTemplate().GetLabels() {
				labels[k] = v
			}
			for k, v := range s.GetMetadata().GetLabels() {
				labels[k] = v
			}
			ix.addWorkload(workload{labels, o})
		case *networking.Sidecar:
			ix.sc = append(ix.sc, typed[*networking.Sidecar]{o, s})
		case *security.PeerAuthentication:
			ix.pa = append(ix.pa, typed[*security.PeerAuthentication]{o, s})
		case *security.AuthorizationPolicy:
			ix.ap = append(ix.ap, typed[*security.AuthorizationPolicy]{o, s})
		case *security.RequestAuthentication:
			ix.ra = append(ix.ra, typed[*security.RequestAuthentication]{o, s})
		}
	}
	return ix
}

func nsName(o *api.Object) string {
	return o.Namespace + "/" + o.Name
}

// fqdn expands a short host ("reviews") to its cluster name
// ("reviews.<ns>.svc.<clusterDomain>"), as Istio does for VirtualService and
// DestinationRule hosts. Names with a dot, and "*", are left alone.
func (ix *index) fqdn(host, ns string) string {
	if host == "" || host == "*" || strings.Contains(host, ".") {
		return host
	}
	return host + "." + ns + ".svc." + ix.opts.Mesh.ClusterDomain
}

// isClusterLocal reports whether a (qualified) host is a Kubernetes-style
// service name in the cluster domain.
func (ix *index) isClusterLocal(fqdn string) bool {
	return strings.HasSuffix(fqdn, ".svc."+ix.opts.Mesh.ClusterDomain)
}

// hostCovers reports whether pattern covers host: equal, or pattern is a
// wildcard whose suffix host ends with. A wildcard host is covered only by a
// wildcard at least as broad.
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

// hostsOverlap reports whether two host patterns share a host.
func hostsOverlap(a, b string) bool {
	return hostCovers(a, b) || hostCovers(b, a)
}

// visible reports whether an object exported with exportTo in namespace
// owner is visible from namespace from. An empty list exports to everyone.
func visible(exportTo []string, owner, from string) bool {
	if len(exportTo) == 0 {
		return true
	}
	for _, e := range exportTo {
		switch e {
		case "*":
			return true
		case ".":
			if owner == from {
				return true
			}
		case "~":
		default:
			if e == from {
				return true
			}
		}
	}
	return false
}

// scopesOverlap reports whether two exportTo scopes share a namespace.
func scopesOverlap(a []string, aNS string, b []string, bNS string) bool {
	expand := func(list []string, ns string) (all bool, set map[string]bool) {
		if len(list) == 0 {
			return true, nil
		}
		set = map[string]bool{}
		for _, e := range list {
			switch e {
			case "*":
				return true, nil
			case ".":
				set[ns] = true
			case "~":
			default:
				set[e] = true
			}
		}
		return false, set
	}
	aAll, aSet := expand(a, aNS)
	bAll, bSet := expand(b, bNS)
	switch {
	case aAll && bAll:
		return true
	case aAll:
		return len(bSet) > 0
	case bAll:
		return len(aSet) > 0
	}
	for k := range aSet {
		if bSet[k] {
			return true
		}
	}
	return false
}

// serviceEntriesFor returns the ServiceEntries visible from namespace from
// that declare host (as written, and expanded).
func (ix *index) serviceEntriesFor(host, fqdn, from string) []seHost {
	var out []seHost
	add := func(list []seHost) {
		for _, s := range list {
			if visible(s.se.spec.GetExportTo(), s.se.obj.Namespace, from) {
				out = append(out, s)
			}
		}
	}
	add(ix.seHosts[fqdn])
	if host != fqdn {
		add(ix.seHosts[host])
	}
	for _, w := range ix.seWildcards {
		if hostCovers(w.host, fqdn) && visible(w.se.spec.GetExportTo(), w.se.obj.Namespace, from) {
			out = append(out, w)
		}
	}
	return out
}

// destinationRulesFor returns the DestinationRules visible from namespace
// from whose host covers fqdn.
func (ix *index) destinationRulesFor(fqdn, from string) []typed[*networking.DestinationRule] {
	var out []typed[*networking.DestinationRule]
	for _, d := range ix.drByHost[fqdn] {
		if visible(d.spec.GetExportTo(), d.obj.Namespace, from) {
			out = append(out, d)
		}
	}
	for _, d := range ix.drWildcards {
		if hostCovers(ix.fqdn(d.spec.GetHost(), d.obj.Namespace), fqdn) && visible(d.spec.GetExportTo(), d.obj.Namespace, from) {
			out = append(out, d)
		}
	}
	return out
}

// selects reports whether selector (non-empty) matches labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

func (ix *index) addWorkload(w workload) {
	ns := w.obj.Namespace
	for k, v := range w.labels {
		ix.byLabel[labelKey{ns, k, v}] = append(ix.byLabel[labelKey{ns, k, v}], w)
		ix.byLabel[labelKey{"", k, v}] = append(ix.byLabel[labelKey{"", k, v}], w)
	}
}

// candidates returns the workloads in ns ("" for all) that carry the
// selector's rarest label; only they can match it.
func (ix *index) candidates(ns string, selector map[string]string) []workload {
	var best []workload
	first := true
	for k, v := range selector {
		list := ix.byLabel[labelKey{ns, k, v}]
		if first || len(list) < len(best) {
			best, first = list, false
		}
		if len(best) == 0 {
			break
		}
	}
	return best
}

// workloadsMatching returns the known workloads in namespace ns (all
// namespaces when ns is "") that selector selects.
func (ix *index) workloadsMatching(ns string, selector map[string]string) []workload {
	var out []workload
	for _, w := range ix.candidates(ns, selector) {
		if selects(selector, w.labels) {
			out = append(out, w)
		}
	}
	return out
}

// hasWorkload reports whether selector selects any workload in ns (all
// namespaces when ns is ""), asking the run-time index too.
func (ix *index) hasWorkload(ns string, selector map[string]string) bool {
	for _, w := range ix.candidates(ns, selector) {
		if selects(selector, w.labels) {
			return true
		}
	}
	return ix.opts.Workloads != nil && ix.opts.Workloads.HasWorkload(ns, selector)
}
