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
	"github.com/meshd/meshd/modules/pilot/index"
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
// what the envoy package builds: listeners, routes and its extra clusters,
// and the telemetry module's key for the fragments it adds to listeners and
// clusters.
// Endpoints of an Envoy proxy depend on nothing more than a proxyless
// client's, so EDS groups stay as large as possible.
func (g *generator) Key(p *xdsapi.Proxy) string {
	ix := g.m.ix.Load()
	k := generate.Key(ix, p)
	for _, ext := range g.m.ext {
		if x, ok := ext.(KeyExtension); ok {
			if part := x.KeyPart(ix, p, g.typeURL); part != "" {
				k += "|" + part
			}
		}
	}
	if p.Type == xdsapi.Proxyless || g.typeURL == xdsapi.EndpointType {
		return k
	}
	k += "|" + envoy.KeyPart(ix, p)
	if g.m.tc != nil && (g.typeURL == xdsapi.ListenerType || g.typeURL == xdsapi.ClusterType) {
		k += "|t=" + g.m.tc.Key(p)
	}
	return k
}

// Generate implements xdsapi.Generator.
func (g *generator) Generate(_ context.Context, req xdsapi.GenerateRequest) ([]xdsapi.Resource, error) {
	if !g.m.pushedOnceAtomic() {
		return nil, errNotSynced
	}
	ix, p := g.m.ix.Load(), req.Proxy
	s := g.m.scope(ix, req.Key, p)
	if p.Type == xdsapi.Proxyless {
		switch g.typeURL {
		case xdsapi.ClusterType:
			return filter(resources(s, generate.Clusters(s)), req.Names), nil
		case xdsapi.EndpointType:
			return resources(s, generate.LoadAssignments(s, req.Names)), nil
		case xdsapi.ListenerType:
			ls, routes := proxyless.ListenersWithRoutes(s, req.Names)
			out := resources(s, ls)
			for i := range out {
				out[i].Version = "rds=" + routes[i]
			}
			for _, ext := range g.m.ext {
				if e, ok := ext.(ProxylessListenerExtension); ok {
					out = append(out, resources(s, e.ProxylessListeners(ix, p, req.Names))...)
				}
			}
			return out, nil
		case xdsapi.RouteType:
			return resources(s, proxyless.RouteConfigs(s, req.Names)), nil
		}
		return nil, nil
	}
	switch g.typeURL {
	case xdsapi.ClusterType:
		clusters := generate.Clusters(s)
		extra := g.m.envoy.Clusters(ix, p)
		if g.m.tc != nil {
			extra = append(extra, g.m.tc.Clusters(p)...)
		}
		for _, c := range extra {
			if _, shared := s.ClusterRef(c.GetName()); !shared {
				clusters = append(clusters, c)
			}
		}
		slices.SortFunc(clusters, func(a, b *clusterv3.Cluster) int { return strings.Compare(a.GetName(), b.GetName()) })
		return filter(resources(s, clusters), req.Names), nil
	case xdsapi.EndpointType:
		return resources(s, generate.LoadAssignments(s, req.Names)), nil
	case xdsapi.ListenerType:
		return filter(resources(s, g.m.envoy.Listeners(ix, p)), req.Names), nil
	case xdsapi.RouteType:
		return filter(resources(s, g.m.envoy.Routes(ix, p)), req.Names), nil
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
// ClusterLoadAssignments, their cluster name), with the version the scope's
// cache gave them.
func resources[T proto.Message](s *generate.Scope, msgs []T) []xdsapi.Resource {
	out := make([]xdsapi.Resource, 0, len(msgs))
	for _, msg := range msgs {
		var name string
		switch v := any(msg).(type) {
		case clusterNamed:
			name = v.GetClusterName()
		case named:
			name = v.GetName()
		}
		out = append(out, xdsapi.Resource{Name: name, Message: msg, Version: s.Version(msg)})
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

// scope returns the scope of a generator key in ix. The server generates a
// group's types one after another with the same key, so the scope (its
// service list, cluster list and policies) is built once per group and
// index rather than once per type. Scopes of an older index are dropped.
func (m *Module) scope(ix *index.Index, key string, p *xdsapi.Proxy) *generate.Scope {
	m.scopeMu.Lock()
	defer m.scopeMu.Unlock()
	if m.scopeIx != ix {
		m.scopeIx, m.scopes = ix, map[string]*generate.Scope{}
	}
	// The key of another type may differ (EDS keys leave Envoy parts out),
	// so scopes are kept by the part every type's key starts with.
	k := generate.Key(ix, p)
	if s := m.scopes[k]; s != nil {
		return s
	}
	s := generate.NewScope(ix, p, generate.FlavorOf(p.Type))
	s.Cache = m.cache
	if len(m.scopes) > maxScopes {
		clear(m.scopes)
	}
	m.scopes[k] = s
	return s
}

// maxScopes bounds the scopes kept for one index; more groups than this
// just build theirs again.
const maxScopes = 4096

// objectHash is an object's content digest: the decoder's, or computed.
func objectHash(o *galleyapi.Object) uint64 {
	if o.Hash != 0 {
		return o.Hash
	}
	return decode.Hash(o)
}
