// Package proxyless builds the listeners and route configurations that
// gRPC's xDS clients (grpc-go, grpc-java, ...) need to dial
// xds:///<host>:<port> without a sidecar; their clusters and endpoints come
// from the shared generate package in the Proxyless flavor.
//
// A gRPC client asks for the Listener named exactly as its dial target's
// authority, so every name a client may dial gets a listener: for each
// visible service port host:port, name.namespace:port and, in the service's
// own namespace, name:port for Kubernetes-style hosts
// (name.namespace.svc.<domain>), address:port for its addresses, and the
// bare host for the service's first port. Fewer names than a sidecar's
// virtual host domains on purpose: a gRPC target names a port, and every
// extra alias is a listener in every full push. Each listener is an
// api_listener wrapping an HttpConnectionManager that fetches its routes
// over ADS (RDS named host:port, shared by the aliases of one port) with
// the fault filter and the router last, which is all grpc-go accepts.
package proxyless

import (
	"slices"
	"strconv"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/modules/pilot/generate"
	"github.com/meshd/meshd/modules/pilot/model"
)

// RouteName is the RouteConfiguration a service port's listeners use.
func RouteName(host string, port uint32) string {
	return host + ":" + strconv.FormatUint(uint64(port), 10)
}

// Listeners returns the client listeners of every name a proxyless client
// in the scope may dial, sorted by name. When names is not nil only those
// are returned.
func Listeners(s *generate.Scope, names []string) []*listenerv3.Listener {
	ls, _ := ListenersWithRoutes(s, names)
	return ls
}

// ListenersWithRoutes is Listeners, also returning each listener's route
// configuration name. A client listener is a function of that name alone,
// so it is a version the xds server can reuse the listener's encoding by.
func ListenersWithRoutes(s *generate.Scope, names []string) ([]*listenerv3.Listener, []string) {
	var want map[string]bool
	if names != nil {
		want = make(map[string]bool, len(names))
		for _, n := range names {
			want[n] = true
		}
	}
	type entry struct {
		l     *listenerv3.Listener
		route string
	}
	var out []entry
	used := map[string]bool{}
	for _, svc := range s.Services() {
		if strings.HasPrefix(svc.Hostname, "*") {
			continue // nobody dials a wildcard
		}
		for i, p := range svc.Ports {
			var api *listenerv3.ApiListener
			route := RouteName(svc.Hostname, p.Number)
			add := func(name string) {
				if used[name] || (want != nil && !want[name]) {
					return
				}
				used[name] = true
				if api == nil {
					api = &listenerv3.ApiListener{ApiListener: connectionManager(route)}
				}
				out = append(out, entry{&listenerv3.Listener{Name: name, ApiListener: api}, route})
			}
			for _, a := range Aliases(s, svc, p.Number, i == 0) {
				add(a)
			}
		}
	}
	slices.SortFunc(out, func(a, b entry) int { return strings.Compare(a.l.Name, b.l.Name) })
	ls, routes := make([]*listenerv3.Listener, len(out)), make([]string, len(out))
	for i, e := range out {
		ls[i], routes[i] = e.l, e.route
	}
	return ls, routes
}

// ConnectionManager returns the api_listener of a client listener whose
// routes are the RouteConfiguration route.
func ConnectionManager(route string) *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{
		StatPrefix: route,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    generate.ADS(),
			RouteConfigName: route,
		}},
		HttpFilters: generate.HTTPFilters(generate.Proxyless),
	}
}

// The encoded parts every client listener shares: the ADS config source
// and the HTTP filters. A listener's HttpConnectionManager is those plus its
// route name, so it is appended rather than marshalled: thousands of
// listeners cost thousands of small appends.
var (
	adsBytes    = mustMarshal(generate.ADS())
	filterBytes = mustMarshal(&hcmv3.HttpConnectionManager{HttpFilters: generate.HTTPFilters(generate.Proxyless)})
	hcmTypeURL  = "type.googleapis.com/" + string((&hcmv3.HttpConnectionManager{}).ProtoReflect().Descriptor().FullName())
)

func mustMarshal(m proto.Message) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic("proxyless: marshal " + string(m.ProtoReflect().Descriptor().FullName()) + ": " + err.Error())
	}
	return b
}

// connectionManager encodes ConnectionManager(route): stat_prefix (2),
// rds (3: config_source 1, route_config_name 2), then http_filters (5), in
// field order as the proto encoder writes them.
func connectionManager(route string) *anypb.Any {
	rdsLen := protowire.SizeTag(1) + protowire.SizeBytes(len(adsBytes)) + protowire.SizeTag(2) + protowire.SizeBytes(len(route))
	v := make([]byte, 0, protowire.SizeTag(2)+protowire.SizeBytes(len(route))+protowire.SizeTag(3)+protowire.SizeBytes(rdsLen)+len(filterBytes))
	v = protowire.AppendTag(v, 2, protowire.BytesType)
	v = protowire.AppendString(v, route)
	v = protowire.AppendTag(v, 3, protowire.BytesType)
	v = protowire.AppendVarint(v, uint64(rdsLen))
	v = protowire.AppendTag(v, 1, protowire.BytesType)
	v = protowire.AppendBytes(v, adsBytes)
	v = protowire.AppendTag(v, 2, protowire.BytesType)
	v = protowire.AppendString(v, route)
	v = append(v, filterBytes...)
	return &anypb.Any{TypeUrl: hcmTypeURL, Value: v}
}

// RouteConfigs returns one RouteConfiguration per visible service port,
// named host:port, with one virtual host whose domains are the names a
// client may dial it by (grpc-go matches the virtual host against the authority
// it dialled). When names is not nil only those are returned.
func RouteConfigs(s *generate.Scope, names []string) []*routev3.RouteConfiguration {
	var out []*routev3.RouteConfiguration
	if names != nil {
		for _, n := range names {
			if rc := RouteConfig(s, n); rc != nil {
				out = append(out, rc)
			}
		}
		return out
	}
	for _, svc := range s.Services() {
		if strings.HasPrefix(svc.Hostname, "*") {
			continue
		}
		for i, p := range svc.Ports {
			out = append(out, routeConfig(s, svc, p, i == 0))
		}
	}
	slices.SortFunc(out, func(a, b *routev3.RouteConfiguration) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// RouteConfig returns the RouteConfiguration named name (host:port), or
// nil when the scope has no such service port.
func RouteConfig(s *generate.Scope, name string) *routev3.RouteConfiguration {
	i := strings.LastIndexByte(name, ':')
	if i < 0 {
		return nil
	}
	port, err := strconv.ParseUint(name[i+1:], 10, 32)
	if err != nil {
		return nil
	}
	svc := s.Service(name[:i])
	if svc == nil {
		return nil
	}
	for j, p := range svc.Ports {
		if p.Number == uint32(port) {
			return routeConfig(s, svc, p, j == 0)
		}
	}
	return nil
}

// Aliases returns the names a proxyless client in the scope may dial svc's
// port by (see the package comment); first adds the bare host name.
func Aliases(s *generate.Scope, svc *model.Service, port uint32, first bool) []string {
	ps := ":" + strconv.FormatUint(uint64(port), 10)
	out := make([]string, 0, 4+len(svc.Addresses))
	out = append(out, svc.Hostname+ps)
	if first {
		out = append(out, svc.Hostname)
	}
	if base, ok := strings.CutSuffix(svc.Hostname, ".svc."+s.Index.Mesh.ClusterDomain); ok {
		if name, ns, ok := strings.Cut(base, "."); ok && !strings.Contains(ns, ".") {
			out = append(out, base+ps)
			if ns == s.Namespace {
				out = append(out, name+ps)
			}
		}
	}
	for _, a := range svc.Addresses {
		if !strings.Contains(a, "/") {
			out = append(out, a+ps)
		}
	}
	return out
}

func routeConfig(s *generate.Scope, svc *model.Service, p model.Port, first bool) *routev3.RouteConfiguration {
	aliases := Aliases(s, svc, p.Number, first)
	name := RouteName(svc.Hostname, p.Number)
	return &routev3.RouteConfiguration{
		Name:         name,
		VirtualHosts: []*routev3.VirtualHost{generate.VirtualHost(s, svc, p, aliases)},
	}
}

// Names returns the resource names a message carries, for tests.
func Names[T interface{ GetName() string }](msgs []T) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.GetName()
	}
	return out
}
