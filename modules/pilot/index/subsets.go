package index

import "slices"

// SubsetNames returns the names of every subset any DestinationRule in any
// namespace defines for host, sorted and without duplicates. Which rule a
// proxy uses depends on its namespace, so an endpoint-only push names the
// clusters of all of them: a superset is harmless, since a proxy only
// receives the names it subscribed to.
func (ix *Index) SubsetNames(host string) []string {
	var out []string
	for _, rules := range ix.drs {
		for _, dr := range rules {
			if !HostMatches(dr.Host, host) {
				continue
			}
			for _, s := range dr.Spec.GetSubsets() {
				if s.GetName() != "" {
					out = append(out, s.GetName())
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
