package envoy

import (
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/pilot/generate"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/xds/api"
)

// destinationCluster is the outbound cluster a VirtualService destination
// written in namespace vsNS names, for traffic that arrived on port: the
// destination's port, else the service's only port (of the services the
// proxy sees), else port. HTTP routes resolve destinations the same way.
func destinationCluster(s *generate.Scope, vsNS string, d *networking.Destination, port uint32) string {
	host := s.Index.ExpandHost(d.GetHost(), vsNS)
	n := d.GetPort().GetNumber()
	if n == 0 {
		if svc := s.Service(host); svc != nil && len(svc.Ports) == 1 {
			n = svc.Ports[0].Number
		} else {
			n = port
		}
	}
	return index.ClusterName(n, d.GetSubset(), host)
}

// l4Match is what TCP and TLS route matches have in common.
type l4Match interface {
	GetPort() uint32
	GetSourceLabels() map[string]string
	GetGateways() []string
	GetSourceNamespace() string
}

// l4Applies reports whether a tcp or tls match written in vsNS applies to
// traffic on port through gateway ("mesh" for sidecars) from proxy p.
// Gateways do not match on source labels or namespace: the gateway is the
// source.
func l4Applies(ix *index.Index, m l4Match, vsNS, gateway string, port uint32, p *api.Proxy) bool {
	if m == nil {
		return true
	}
	if m.GetPort() != 0 && m.GetPort() != port {
		return false
	}
	if gws := m.GetGateways(); len(gws) > 0 {
		found := false
		for _, g := range gws {
			if ix.GatewayName(g, vsNS) == gateway {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	if gateway == index.MeshGateway {
		if !model.LabelsMatch(m.GetSourceLabels(), p.Labels) {
			return false
		}
		if ns := m.GetSourceNamespace(); ns != "" && ns != proxyNamespace(p) {
			return false
		}
	}
	return true
}

// routeClusters turns route destinations into TCP proxy clusters. Zero
// weights are dropped when there are several destinations, as Istio does.
func routeClusters(s *generate.Scope, vsNS string, routes []*networking.RouteDestination, port uint32) []weightedCluster {
	var out []weightedCluster
	for _, r := range routes {
		if len(routes) > 1 && r.GetWeight() <= 0 {
			continue
		}
		out = append(out, weightedCluster{
			name:   destinationCluster(s, vsNS, r.GetDestination(), port),
			weight: uint32(max(r.GetWeight(), 0)),
		})
	}
	return out
}

// l4StatPrefix is Istio's: the cluster for one destination, name.namespace
// of the VirtualService for a weighted split.
func l4StatPrefix(vs *index.VirtualService, clusters []weightedCluster) string {
	if len(clusters) == 1 {
		return clusters[0].name
	}
	return vs.Object.Name + "." + vs.Namespace()
}

// configMetadata names the config object a filter chain came from, in
// Istio's form, so config_dump readers can find it.
func configMetadata(vs *index.VirtualService) *corev3.Metadata {
	if vs == nil {
		return nil
	}
	path := "/apis/networking.istio.io/v1/namespaces/" + vs.Namespace() + "/virtual-service/" + vs.Object.Name
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		"istio": {Fields: map[string]*structpb.Value{"config": structpb.NewStringValue(path)}},
	}}
}

// sortedUnique returns the sorted distinct values of in.
func sortedUnique(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out)
}
