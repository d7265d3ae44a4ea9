package index

import (
	"strings"

	"github.com/meshd/meshd/modules/pilot/model"
)

// Target is one service port a workload serves: the service, the service
// port, and the workload's endpoint for it (whose Port is where the
// workload listens). Envoy's inbound listeners are built from these.
type Target struct {
	Service  *model.Service
	Port     model.Port
	Endpoint *model.Endpoint
}

// ServiceTargets returns what the workload at any of addrs serves, ordered
// by service host name, namespace and port. Istio calls these a proxy's
// service targets; a proxy finds its own by its INSTANCE_IPS.
func (ix *Index) ServiceTargets(addrs []string) []Target {
	if ix.Registry == nil || len(addrs) == 0 {
		return nil
	}
	ix.targetsOnce.Do(func() {
		ix.targets = map[string][]Target{}
		for _, s := range ix.Registry.Services {
			for _, e := range s.Endpoints {
				p, ok := s.Port(e.ServicePort)
				if !ok {
					continue
				}
				ix.targets[e.Address] = append(ix.targets[e.Address], Target{Service: s, Port: p, Endpoint: e})
			}
		}
	})
	if len(addrs) == 1 {
		return ix.targets[addrs[0]]
	}
	var out []Target
	seen := map[*model.Endpoint]bool{}
	for _, a := range addrs {
		for _, t := range ix.targets[a] {
			if !seen[t.Endpoint] {
				seen[t.Endpoint] = true
				out = append(out, t)
			}
		}
	}
	return out
}

// MeshVirtualServicesIn returns every mesh-bound VirtualService exported to
// ns, in namespace/name order.
func (ix *Index) MeshVirtualServicesIn(ns string) []*VirtualService {
	var out []*VirtualService
	for _, vs := range ix.meshVS {
		if exportedTo(vs.Spec.GetExportTo(), vs.Namespace(), ns) {
			out = append(out, vs)
		}
	}
	return out
}

// GatewayName expands a gateway reference written in namespace ns (in a
// VirtualService's gateways or a route match's gateways) to namespace/name,
// or "mesh".
func (ix *Index) GatewayName(ref, ns string) string { return ix.gatewayName(ref, ns) }

// EgressHostsAllow reports whether a Sidecar egress listener's hosts
// ("ns/host", "./host", "*/host"; "~/host" admits nothing) admit a service
// of namespace svcNS and host name host for a proxy in ns. Empty hosts admit
// nothing.
func EgressHostsAllow(hosts []string, ns, svcNS, host string) bool {
	for _, h := range hosts {
		hns, hhost, ok := strings.Cut(h, "/")
		if !ok {
			continue
		}
		switch hns {
		case "~":
			continue
		case ".":
			hns = ns
		}
		if (hns == "*" || hns == svcNS) && HostMatches(hhost, host) {
			return true
		}
	}
	return false
}
