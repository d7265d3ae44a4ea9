package generate

import (
	"strconv"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/pilot/model"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// Labels that failoverPriority compares by topology rather than by
// workload labels. Istio adds them to every proxy's and endpoint's labels
// from its locality and network, so a rule listing them ranks endpoints by
// where they run whether or not anyone labelled them.
const (
	LabelNetwork = "topology.istio.io/network"
	LabelRegion  = "topology.kubernetes.io/region"
	LabelZone    = "topology.kubernetes.io/zone"
	LabelSubzone = "topology.istio.io/subzone"
)

// metaNetwork is the node metadata field naming a proxy's network
// (Istio's NETWORK).
const metaNetwork = "NETWORK"

// workload is what failoverPriority compares of a proxy or an endpoint.
type workload struct {
	labels   map[string]string
	locality model.Locality
	network  string
}

// label returns the workload's value of a failoverPriority label. As in
// Istio's label augmentation, a locality level the workload has replaces
// its label of that name, while a network label the workload carries wins
// over the network it reports (Istio takes the pod's label first).
func (w workload) label(name string) string {
	var v string
	switch name {
	case LabelRegion:
		v = w.locality.Region
	case LabelZone:
		v = w.locality.Zone
	case LabelSubzone:
		v = w.locality.Subzone
	case LabelNetwork:
		if l := w.labels[name]; l != "" {
			return l
		}
		return w.network
	}
	if v != "" {
		return v
	}
	return w.labels[name]
}

// priorityLabel is one failoverPriority entry resolved for a proxy: the
// label, and the value endpoints must have to match it.
type priorityLabel struct {
	name, value string
}

// priorityLabels resolves failoverPriority entries for a proxy. An entry
// "label" wants the proxy's own value; Istio's "label=value" wants the
// given value whatever the proxy has, so all proxies share one preference.
// A label the proxy lacks wants endpoints that lack it too. Istio instead
// skips failoverPriority for a proxy without any labels, but its proxies
// always carry topology.istio.io/cluster, so it never skips in practice;
// meshd has no such label and so never skips either.
func priorityLabels(entries []string, proxy workload) []priorityLabel {
	out := make([]priorityLabel, len(entries))
	for i, e := range entries {
		name, value, fixed := strings.Cut(e, "=")
		if !fixed {
			value = proxy.label(name)
		}
		out[i] = priorityLabel{name: name, value: value}
	}
	return out
}

// labelLevel returns an endpoint's failoverPriority level: the number of
// labels left after the leading ones it matches, so 0 when it matches
// them all and len(want) when it does not match the first. Matching stops
// at the first label that differs, since a later label only breaks ties
// among endpoints that agree on every earlier one.
func labelLevel(want []priorityLabel, ep workload) uint32 {
	for i, l := range want {
		if ep.label(l.name) != l.value {
			return uint32(len(want) - i)
		}
	}
	return 0
}

// workload returns the proxy as failoverPriority sees it.
func (s *Scope) workload() workload {
	return workload{labels: s.Labels, locality: s.Locality, network: s.Network}
}

// proxyWorkload returns a proxy as failoverPriority sees it.
func proxyWorkload(p *xdsapi.Proxy) workload {
	w := workload{labels: p.Labels, network: p.Metadata[metaNetwork]}
	if l := p.Node.GetLocality(); l != nil {
		w.locality = model.Locality{Region: l.GetRegion(), Zone: l.GetZone(), Subzone: l.GetSubZone()}
	}
	return w
}

// usesFailoverPriority reports whether a cluster with policy tp ranks its
// endpoints by failoverPriority, which makes them depend on the proxy's
// labels and network as well as its locality. It says "may": a distribute
// rule matching the proxy's locality still wins, which the cache keys
// cover through the locality.
func usesFailoverPriority(tp *networking.TrafficPolicy) bool {
	lb := tp.GetLoadBalancer()
	return tp.GetOutlierDetection() != nil && localityLBEnabled(lb) && len(lb.GetLocalityLbSetting().GetFailoverPriority()) > 0
}

// failoverKey is the part of a cache key for a cluster's endpoints that
// covers the proxy's failoverPriority values: empty unless the policy uses
// failoverPriority, so proxies keep sharing assignments of every other
// cluster however their labels differ.
func failoverKey(s *Scope, tp *networking.TrafficPolicy) string {
	if !usesFailoverPriority(tp) {
		return ""
	}
	var b strings.Builder
	for _, l := range priorityLabels(tp.GetLoadBalancer().GetLocalityLbSetting().GetFailoverPriority(), s.workload()) {
		writeKeyValue(&b, l.value)
	}
	return b.String()
}

// writeKeyValue appends v to a key with its length, so values holding
// separators cannot make two different lists look alike (node metadata
// labels are not restricted to Kubernetes' character set).
func writeKeyValue(b *strings.Builder, v string) {
	b.WriteString(strconv.Itoa(len(v)))
	b.WriteByte(':')
	b.WriteString(v)
}
