package server

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/xds/api"
)

// dependentType says which type a type's resources refer to by name: an EDS
// cluster names its ClusterLoadAssignment, a listener its
// RouteConfiguration. A push is consistent when every such name exists.
//
// go-control-plane's Snapshot.Consistent does the same check but does not
// look inside a listener's api_listener, which is where every proxyless gRPC
// client listener keeps its HttpConnectionManager, so it rejects every gRPC
// listener that uses RDS. This check reads both places.
func dependentType(typeURL string) (string, func(proto.Message) []string) {
	switch typeURL {
	case api.ClusterType:
		return api.EndpointType, clusterRefs
	case api.ListenerType:
		return api.RouteType, listenerRefs
	}
	return "", nil
}

func clusterRefs(m proto.Message) []string {
	c, ok := m.(*clusterv3.Cluster)
	if !ok || c.GetType() != clusterv3.Cluster_EDS {
		return nil
	}
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return []string{n}
	}
	return []string{c.GetName()}
}

func listenerRefs(m proto.Message) []string {
	l, ok := m.(*listenerv3.Listener)
	if !ok {
		return nil
	}
	var out []string
	add := func(a *anypb.Any) {
		if a == nil {
			return
		}
		var hcm hcmv3.HttpConnectionManager
		if a.MessageIs(&hcm) && a.UnmarshalTo(&hcm) == nil {
			if n := hcm.GetRds().GetRouteConfigName(); n != "" {
				out = append(out, n)
			}
		}
	}
	add(l.GetApiListener().GetApiListener())
	chains := l.GetFilterChains()
	if d := l.GetDefaultFilterChain(); d != nil {
		chains = append(chains[:len(chains):len(chains)], d)
	}
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			add(f.GetTypedConfig())
		}
	}
	return out
}

// missingRefs returns the names s refers to that dep lacks, at most limit.
func missingRefs(s, dep *snapshot, limit int) []string {
	var missing []string
	for _, e := range s.sorted {
		for _, r := range e.refs {
			if dep == nil || dep.entries[r] == nil {
				missing = append(missing, r)
				if len(missing) >= limit {
					return missing
				}
			}
		}
	}
	return missing
}
