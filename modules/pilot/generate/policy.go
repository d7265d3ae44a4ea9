package generate

import (
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/pilot/index"
)

type policyKey struct {
	dr     *index.DestinationRule
	port   uint32
	subset string
}

// Policy returns the traffic policy that applies to a cluster, merged the
// way Istio merges it: the rule's top-level policy, overridden by its
// port-level settings for the cluster's port, then by the subset's policy
// and the subset's own port-level settings. Each of load balancer,
// connection pool, outlier detection and TLS is replaced whole by the more
// specific level, never merged field by field, so a subset that sets only
// maxConnections does not inherit half of a parent's pool. It returns nil
// when no rule applies.
func (s *Scope) Policy(r ClusterRef) *networking.TrafficPolicy {
	if r.Rule == nil {
		return nil
	}
	k := policyKey{r.Rule, r.Port.Number, r.SubsetName()}
	if tp, ok := s.policies[k]; ok {
		return tp
	}
	tp := mergePolicy(nil, r.Rule.Spec.GetTrafficPolicy(), r.Port.Number)
	if r.Subset != nil {
		tp = mergePolicy(tp, r.Subset.GetTrafficPolicy(), r.Port.Number)
	}
	if s.policies == nil {
		s.policies = map[policyKey]*networking.TrafficPolicy{}
	}
	s.policies[k] = tp
	return tp
}

// mergePolicy returns base overridden by over and over's port-level
// settings for port. Neither input is modified.
func mergePolicy(base, over *networking.TrafficPolicy, port uint32) *networking.TrafficPolicy {
	if over == nil {
		return base
	}
	out := &networking.TrafficPolicy{}
	if base != nil {
		out.LoadBalancer = base.LoadBalancer
		out.ConnectionPool = base.ConnectionPool
		out.OutlierDetection = base.OutlierDetection
		out.Tls = base.Tls
		out.Tunnel = base.Tunnel
		out.ProxyProtocol = base.ProxyProtocol
		out.RetryBudget = base.RetryBudget
	}
	if over.LoadBalancer != nil {
		out.LoadBalancer = over.LoadBalancer
	}
	if over.ConnectionPool != nil {
		out.ConnectionPool = over.ConnectionPool
	}
	if over.OutlierDetection != nil {
		out.OutlierDetection = over.OutlierDetection
	}
	if over.Tls != nil {
		out.Tls = over.Tls
	}
	if over.Tunnel != nil {
		out.Tunnel = over.Tunnel
	}
	if over.ProxyProtocol != nil {
		out.ProxyProtocol = over.ProxyProtocol
	}
	if over.RetryBudget != nil {
		out.RetryBudget = over.RetryBudget
	}
	for _, pl := range over.GetPortLevelSettings() {
		if pl.GetPort().GetNumber() != port {
			continue
		}
		if pl.LoadBalancer != nil {
			out.LoadBalancer = pl.LoadBalancer
		}
		if pl.ConnectionPool != nil {
			out.ConnectionPool = pl.ConnectionPool
		}
		if pl.OutlierDetection != nil {
			out.OutlierDetection = pl.OutlierDetection
		}
		if pl.Tls != nil {
			out.Tls = pl.Tls
		}
	}
	return out
}
