package analyze

import (
	"strconv"
	"strings"

	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/galley/api"
)

// serviceTarget is where a host's workloads live and what labels they carry.
type serviceTarget struct {
	ns        string
	workloads []map[string]string // nil entry: labels unknown
}

// targetsFor finds the namespaces and workloads behind a DestinationRule
// host: through ServiceEntries, or the namespace of a cluster-local name.
func (ix *index) targetsFor(host, fqdn, from string) []serviceTarget {
	var out []serviceTarget
	for _, s := range ix.serviceEntriesFor(host, fqdn, from) {
		t := serviceTarget{ns: s.se.obj.Namespace}
		if sel := s.se.spec.GetWorkloadSelector().GetLabels(); len(sel) > 0 {
			for _, w := range ix.workloadsMatching(t.ns, sel) {
				t.workloads = append(t.workloads, w.labels)
			}
			if len(t.workloads) == 0 {
				t.workloads = append(t.workloads, sel)
			}
		}
		for _, ep := range s.se.spec.GetEndpoints() {
			t.workloads = append(t.workloads, ep.GetLabels())
		}
		if len(t.workloads) == 0 {
			t.workloads = append(t.workloads, nil)
		}
		out = append(out, t)
	}
	if len(out) == 0 && ix.isClusterLocal(fqdn) {
		// name.namespace.svc.<domain>
		parts := strings.SplitN(fqdn, ".", 3)
		if len(parts) == 3 {
			out = append(out, serviceTarget{ns: parts[1], workloads: []map[string]string{nil}})
		}
	}
	return out
}

// tlsOff is a place where a DestinationRule disables TLS.
type tlsOff struct {
	path   string
	port   uint32            // 0: all ports
	subset map[string]string // nil: all workloads
}

func disabledTLS(dr *networking.DestinationRule) []tlsOff {
	var out []tlsOff
	add := func(base string, tp *networking.TrafficPolicy, subset map[string]string) {
		if tp == nil {
			return
		}
		if t := tp.GetTls(); t != nil && t.GetMode() == networking.ClientTLSSettings_DISABLE {
			out = append(out, tlsOff{base + ".tls.mode", 0, subset})
		}
		for i, pl := range tp.GetPortLevelSettings() {
			if t := pl.GetTls(); t != nil && t.GetMode() == networking.ClientTLSSettings_DISABLE {
				out = append(out, tlsOff{base + ".portLevelSettings[" + strconv.Itoa(i) + "].tls.mode", pl.GetPort().GetNumber(), subset})
			}
		}
	}
	add("spec.trafficPolicy", dr.GetTrafficPolicy(), nil)
	for i, s := range dr.GetSubsets() {
		labels := s.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		add("spec.subsets["+strconv.Itoa(i)+"].trafficPolicy", s.GetTrafficPolicy(), labels)
	}
	return out
}

// checkMTLS reports DestinationRules that send plaintext to workloads whose
// PeerAuthentication demands mTLS: every such request is refused.
func checkMTLS(ix *index, r *reporter) {
	for _, d := range ix.dr {
		offs := disabledTLS(d.spec)
		if len(offs) == 0 {
			continue
		}
		host := d.spec.GetHost()
		targets := ix.targetsFor(host, ix.fqdn(host, d.obj.Namespace), d.obj.Namespace)
	offLoop:
		for _, off := range offs {
			for _, t := range targets {
				for _, w := range t.workloads {
					if off.subset != nil && w != nil && !selectsAll(off.subset, w) {
						continue
					}
					if w == nil && off.subset != nil {
						w = off.subset
					}
					mode, src := ix.effectiveMTLS(t.ns, w, off.port)
					if mode != core.MTLSStrict {
						continue
					}
					r.errf(d.obj, api.CodeMTLSConflict, off.path, "TLS is disabled towards %s, but %s requires STRICT mTLS for its workloads in namespace %s, so every request will be refused; use tls mode ISTIO_MUTUAL or remove the tls setting", host, src, t.ns)
					continue offLoop
				}
			}
		}
	}
}

// selectsAll is selects, but an empty selector selects everything.
func selectsAll(selector, labels map[string]string) bool {
	return len(selector) == 0 || selects(selector, labels)
}

// effectiveMTLS returns the mTLS mode for a workload (labels may be nil when
// unknown) on port (0: any) and what set it: the most specific
// PeerAuthentication that sets a mode, else the mesh default.
func (ix *index) effectiveMTLS(ns string, labels map[string]string, port uint32) (string, string) {
	describe := func(o *api.Object) string { return "PeerAuthentication " + nsName(o) }
	if labels != nil {
		for _, p := range ix.pa {
			sel := p.spec.GetSelector().GetMatchLabels()
			if p.obj.Namespace != ns || len(sel) == 0 || !selects(sel, labels) {
				continue
			}
			if port != 0 {
				if m, ok := p.spec.GetPortLevelMtls()[port]; ok && m.GetMode() != security.PeerAuthentication_MutualTLS_UNSET {
					return m.GetMode().String(), describe(p.obj)
				}
			}
			if m := p.spec.GetMtls().GetMode(); m != security.PeerAuthentication_MutualTLS_UNSET {
				return m.String(), describe(p.obj)
			}
		}
	}
	for _, level := range []string{ns, ix.opts.RootNamespace} {
		for _, p := range ix.pa {
			if p.obj.Namespace != level || len(p.spec.GetSelector().GetMatchLabels()) > 0 {
				continue
			}
			if m := p.spec.GetMtls().GetMode(); m != security.PeerAuthentication_MutualTLS_UNSET {
				return m.String(), describe(p.obj)
			}
		}
	}
	return strings.ToUpper(ix.opts.Mesh.DefaultMTLSMode), "the mesh default (mesh.defaultMTLSMode " + ix.opts.Mesh.DefaultMTLSMode + ")"
}

// checkSelectors reports workload selectors that select nothing: the object
// they belong to then has no effect.
func checkSelectors(ix *index, r *reporter) {
	check := func(o *api.Object, path string, sel map[string]string, meshWide bool, effect string) {
		if len(sel) == 0 {
			return
		}
		ns := o.Namespace
		if meshWide && ns == ix.opts.RootNamespace {
			ns = ""
		}
		if ix.hasWorkload(ns, sel) {
			return
		}
		where := "namespace " + o.Namespace
		if ns == "" {
			where = "the mesh"
		}
		r.warnf(o, api.CodeSelectorNoMatch, path, "selector %s matches no WorkloadEntry, WorkloadGroup or known workload in %s, so %s", selectorText(sel), where, effect)
	}
	for _, s := range ix.sc {
		check(s.obj, "spec.workloadSelector.labels", s.spec.GetWorkloadSelector().GetLabels(), false, "this Sidecar applies to nothing")
	}
	for _, s := range ix.se {
		check(s.obj, "spec.workloadSelector.labels", s.spec.GetWorkloadSelector().GetLabels(), false, "the service has no endpoints")
	}
	for _, d := range ix.dr {
		check(d.obj, "spec.workloadSelector.matchLabels", d.spec.GetWorkloadSelector().GetMatchLabels(), false, "this DestinationRule applies to nothing")
	}
	for _, p := range ix.pa {
		check(p.obj, "spec.selector.matchLabels", p.spec.GetSelector().GetMatchLabels(), true, "this PeerAuthentication applies to nothing")
	}
	for _, p := range ix.ap {
		check(p.obj, "spec.selector.matchLabels", p.spec.GetSelector().GetMatchLabels(), true, "this AuthorizationPolicy applies to nothing")
	}
	for _, p := range ix.ra {
		check(p.obj, "spec.selector.matchLabels", p.spec.GetSelector().GetMatchLabels(), true, "this RequestAuthentication applies to nothing")
	}
}

// selectorText renders labels as k=v,k=v in key order.
func selectorText(m map[string]string) string {
	return strings.TrimSuffix(selectorKey(m), ",")
}

// checkSubsetWorkloads reports DestinationRule subsets whose labels match
// none of the service's known workloads; a canary routed there gets 503s.
func checkSubsetWorkloads(ix *index, r *reporter) {
	for _, d := range ix.dr {
		if len(d.spec.GetSubsets()) == 0 {
			continue
		}
		host := d.spec.GetHost()
		var known []map[string]string
		for _, s := range ix.serviceEntriesFor(host, ix.fqdn(host, d.obj.Namespace), d.obj.Namespace) {
			if sel := s.se.spec.GetWorkloadSelector().GetLabels(); len(sel) > 0 {
				for _, w := range ix.workloadsMatching(s.se.obj.Namespace, sel) {
					known = append(known, w.labels)
				}
			}
			for _, ep := range s.se.spec.GetEndpoints() {
				known = append(known, ep.GetLabels())
			}
		}
		if len(known) == 0 {
			continue // nothing known about the workloads; nothing to compare
		}
		for i, s := range d.spec.GetSubsets() {
			if len(s.GetLabels()) == 0 {
				continue
			}
			found := false
			for _, w := range known {
				if selects(s.GetLabels(), w) {
					found = true
					break
				}
			}
			if !found {
				r.warnf(d.obj, api.CodeSubsetNoMatch, "spec.subsets["+strconv.Itoa(i)+"].labels", "subset %q (%s) matches none of the %d known workloads of %s, so traffic routed to it fails", s.GetName(), selectorText(s.GetLabels()), len(known), host)
			}
		}
	}
}
