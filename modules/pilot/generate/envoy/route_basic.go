package envoy

import (
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
)

// basicRoutes is the stand-in RouteTranslator: URI, port, gateway and
// source label matches, weighted destinations and the route timeout.
// Rules using anything else are translated without it; pilot's full
// translation replaces this one through Options.Routes.
type basicRoutes struct{}

func (basicRoutes) HTTPRoutes(in RouteInput) []*routev3.Route {
	vs := in.VirtualService
	var out []*routev3.Route
	for _, rule := range vs.Spec.GetHttp() {
		if len(rule.GetRoute()) == 0 {
			continue
		}
		action := &routev3.RouteAction{
			Timeout: durationpb.New(0),
			MaxStreamDuration: &routev3.RouteAction_MaxStreamDuration{
				MaxStreamDuration:    durationpb.New(0),
				GrpcTimeoutHeaderMax: durationpb.New(0),
			},
			RetryPolicy: DefaultRetryPolicy(),
		}
		if t := rule.GetTimeout(); t != nil {
			action.Timeout = t
			action.MaxStreamDuration.MaxStreamDuration = t
		}
		var weighted []*routev3.WeightedCluster_ClusterWeight
		for _, d := range rule.GetRoute() {
			if len(rule.GetRoute()) > 1 && d.GetWeight() <= 0 {
				continue
			}
			weighted = append(weighted, &routev3.WeightedCluster_ClusterWeight{
				Name:   DestinationCluster(in.Index, in.Proxy.Namespace, vs.Namespace(), d.GetDestination(), in.Port),
				Weight: wrapperspb.UInt32(uint32(max(d.GetWeight(), 1))),
			})
		}
		if len(weighted) == 1 {
			action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: weighted[0].GetName()}
		} else {
			action.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: weighted}}
		}
		matches := rule.GetMatch()
		if len(matches) == 0 {
			matches = []*networking.HTTPMatchRequest{nil}
		}
		for _, m := range matches {
			if !httpMatchApplies(in, m) {
				continue
			}
			out = append(out, &routev3.Route{
				Name:   rule.GetName(),
				Match:  uriMatch(m.GetUri()),
				Action: &routev3.Route_Route{Route: action},
			})
		}
	}
	return out
}

func httpMatchApplies(in RouteInput, m *networking.HTTPMatchRequest) bool {
	if m == nil {
		return true
	}
	if m.GetPort() != 0 && m.GetPort() != in.Port {
		return false
	}
	if gws := m.GetGateways(); len(gws) > 0 {
		ok := false
		for _, g := range gws {
			for _, want := range in.Gateways {
				if in.Index.GatewayName(g, in.VirtualService.Namespace()) == want {
					ok = true
				}
			}
		}
		if !ok {
			return false
		}
	}
	if len(in.Gateways) == 1 && in.Gateways[0] == index.MeshGateway {
		return model.LabelsMatch(m.GetSourceLabels(), in.Proxy.Labels)
	}
	return true
}

func uriMatch(u *networking.StringMatch) *routev3.RouteMatch {
	switch m := u.GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: m.Exact}}
	case *networking.StringMatch_Prefix:
		return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: m.Prefix}}
	case *networking.StringMatch_Regex:
		return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: m.Regex}}}
	}
	return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
}
