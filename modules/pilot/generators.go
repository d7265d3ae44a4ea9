package pilot

import (
	"context"
	"errors"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/proto"

	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
	"github.com/meshd/meshd/modules/pilot/generate"
	"github.com/meshd/meshd/modules/pilot/generate/envoy"
	"github.com/meshd/meshd/modules/pilot/generate/proxyless"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// errNotSynced is what generators answer before the first full push, so a
// proxy that connects early is not served a half-discovered mesh; it gets
// its config with that push.
var errNotSynced = errors.New("pilot: waiting for registry sources and config before the first push")

// generator serves one resource type to every proxy type.
type generator struct {
	m       *Module
	typeURL string
}

// Key covers exactly what Generate reads from a proxy: generate.Key (type,
// namespace, Sidecar, source-label matches, locality when it matters) for
// everything, plus the Envoy generator's key (labels, workload ports) for
// what the envoy package builds: listeners, routes and its extra clusters.
// Endpoints of an Envoy proxy depend on nothing more than a proxyless
// client's, so EDS groups stay as large as possible.
func (g *generator) Key(p *xdsapi.Proxy) string {
	ix := g.m.ix.Load()
	k := generate.Key(ix, p)
	if p.Type == xdsapi.Proxyless || g.typeURL == xdsapi.EndpointType {
		return k
	}
	return k + "|" + envoy.KeyPart(ix, p)
}

// Generate implements xdsapi.Generator.
func (g *generator) Generate(_ context.Context, req xdsapi.GenerateRequest) ([]xdsapi.Resource, error) {
	if !g.m.pushedOnceAtomic() {
		return nil, errNotSynced
	}
	ix := g.m.ix.Load()
	p := req.Proxy
	s := generate.NewScope(ix, p, generate.FlavorOf(p.Type))
	if p.Type == xdsapi.Proxyless {
		switch g.typeURL {
		case xdsapi.ClusterType:
			return filter(resources(generate.Clusters(s)), req.Names), nil
		case xdsapi.EndpointType:
			return resources(generate.LoadAssignments(s, req.Names)), nil
		case xdsapi.ListenerType:
			return resources(proxyless.Listeners(s, req.Names)), nil
		case xdsapi.RouteType:
			return resources(proxyless.RouteConfigs(s, req.Names)), nil
		}
		return nil, nil
	}
	switch g.typeURL {
	case xdsapi.ClusterType:
		clusters := generate.Clusters(s)
		for _, c := range g.m.envoy.Clusters(ix, p) {
			if _, shared := s.ClusterRef(c.GetName()); !shared {
				clusters = append(clusters, c)
			}
		}
		slices.SortFunc(clusters, func(a, b *clusterv3.Cluster) int { return strings.Compare(a.GetName(), b.GetName()) })
		return filter(resources(clusters), req.Names), nil
	case xdsapi.EndpointType:
		return resources(generate.LoadAssignments(s, req.Names)), nil
	case xdsapi.ListenerType:
		return filter(resources(g.m.envoy.Listeners(ix, p)), req.Names), nil
	case xdsapi.RouteType:
		return filter(resources(g.m.envoy.Routes(ix, p)), req.Names), nil
	}
	return nil, nil
}

type named interface {
	proto.Message
	GetName() string
}

type clusterNamed interface {
	proto.Message
	GetClusterName() string
}

// resources wraps messages as xDS resources named by their name (or, for
// ClusterLoadAssignments, their cluster name).
func resources[T proto.Message](msgs []T) []xdsapi.Resource {
	out := make([]xdsapi.Resource, 0, len(msgs))
	for _, msg := range msgs {
		var name string
		switch v := any(msg).(type) {
		case clusterNamed:
			name = v.GetClusterName()
		case named:
			name = v.GetName()
		}
		out = append(out, xdsapi.Resource{Name: name, Message: msg})
	}
	return out
}

// filter keeps the resources named in names (all when names is nil), for
// incremental pushes of a type the generator builds whole.
func filter(res []xdsapi.Resource, names []string) []xdsapi.Resource {
	if names == nil {
		return res
	}
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	return slices.DeleteFunc(res, func(r xdsapi.Resource) bool { return !want[r.Name] })
}

// objectHash is an object's content digest: the decoder's, or computed.
func objectHash(o *galleyapi.Object) uint64 {
	if o.Hash != 0 {
		return o.Hash
	}
	return decode.Hash(o)
}
