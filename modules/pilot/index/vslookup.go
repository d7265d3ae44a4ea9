package index

import (
	"slices"
	"strings"

	galleyapi "github.com/meshd/meshd/modules/galley/api"
	networking "istio.io/api/networking/v1alpha3"
)

// meshCandidates returns the positions in meshVS of the VirtualServices
// that may match host: those naming it exactly and those with a wildcard
// host, in creation order. Looking a host up this way instead of scanning
// every VirtualService keeps route generation linear in the mesh size.
func (ix *Index) meshCandidates(host string) []int {
	ix.vsOnce.Do(func() {
		ix.vsByHost = map[string][]int{}
		for i, vs := range ix.meshVS {
			wild := false
			for _, h := range vs.Hosts {
				if strings.HasPrefix(h, "*") {
					wild = true
				} else if l := ix.vsByHost[h]; len(l) == 0 || l[len(l)-1] != i {
					ix.vsByHost[h] = append(l, i)
				}
			}
			if wild {
				ix.vsWild = append(ix.vsWild, i)
			}
		}
	})
	exact := ix.vsByHost[host]
	if len(ix.vsWild) == 0 {
		return exact
	}
	if len(exact) == 0 {
		return ix.vsWild
	}
	out := make([]int, 0, len(exact)+len(ix.vsWild))
	out = append(append(out, exact...), ix.vsWild...)
	slices.Sort(out)
	return slices.Compact(out)
}

// Delegate returns the VirtualService namespace/name as a root
// VirtualService in rootNS may delegate to it, or nil when Istio would skip
// the delegation: no such VirtualService, one with hosts (that is a
// VirtualService of its own, not a delegate), or one whose exportTo hides
// it from rootNS. The snapshot's key lookup answers this directly, so the
// index keeps no table of its own for it.
func (ix *Index) Delegate(namespace, name, rootNS string) *VirtualService {
	o, ok := ix.Config.Get(galleyapi.MakeKey(galleyapi.KindVirtualService, namespace, name))
	if !ok {
		return nil
	}
	spec, ok := o.Spec.(*networking.VirtualService)
	if !ok || len(spec.GetHosts()) > 0 || !exportedTo(spec.GetExportTo(), namespace, rootNS) {
		return nil
	}
	return &VirtualService{Object: o, Spec: spec}
}
