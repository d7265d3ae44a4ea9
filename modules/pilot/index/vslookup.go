package index

import (
	"slices"
	"strings"
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
