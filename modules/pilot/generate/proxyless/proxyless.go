// Package proxyless builds the listeners and route configurations that
// gRPC's xDS clients (grpc-go, grpc-java, ...) need to dial
// xds:///<host>:<port> without a sidecar; their clusters and endpoints come
// from the shared generate package in the Proxyless flavor.
//
// A gRPC client asks for the Listener named exactly as its dial target's
// authority, so every name a client may dial gets a listener: for each
// visible service port host:port under every alias (FQDN, name.ns.svc,
// name.ns, the short name in the service's own namespace, its addresses),
// and the bare alias for the service's first port. Each listener is an
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
	var want map[string]bool
	if names != nil {
		want = make(map[string]bool, len(names))
		for _, n := range names {
			want[n] = true
		}
	}
	var out []*listenerv3.Listener
	used := map[string]bool{}
	for _, svc := range s.Services() {
		if strings.HasPrefix(svc.Hostname, "*") {
			continue // nobody dials a wildcard
		}
		for i, p := range svc.Ports {
			var hcm *anypb.Any
			add := func(name string) {
				if used[name] || (want != nil && !want[name]) {
					return
				}
				used[name] = true
				if hcm == nil {
					hcm = connectionManager(RouteName(svc.Hostname, p.Number))
				}
				out = append(out, &listenerv3.Listener{Name: name, ApiListener: &listenerv3.ApiListener{ApiListener: hcm}})
			}
			ps := ":" + strconv.FormatUint(uint64(p.Number), 10)
			for _, a := range generate.HostAliases(s, svc, p.Number) {
				if strings.HasSuffix(a, ps) {
					add(a)
				} else if i == 0 {
					add(a) // the bare name dials the first port
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b *listenerv3.Listener) int { return strings.Compare(a.Name, b.Name) })
	return out
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

func connectionManager(route string) *anypb.Any {
	a, err := anypb.New(ConnectionManager(route))
	if err != nil {
		panic("proxyless: marshal HttpConnectionManager: " + err.Error())
	}
	return a
}

// RouteConfigs returns one RouteConfiguration per visible service port,
// named host:port, with one virtual host whose domains are every alias a
// client may dial (grpc-go matches the virtual host against the authority
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

func routeConfig(s *generate.Scope, svc *model.Service, p model.Port, first bool) *routev3.RouteConfiguration {
	aliases := generate.HostAliases(s, svc, p.Number)
	if !first {
		// Bare names dial the first port; only that port's routes may claim them.
		ps := ":" + strconv.FormatUint(uint64(p.Number), 10)
		aliases = slices.DeleteFunc(aliases, func(a string) bool { return !strings.HasSuffix(a, ps) })
	}
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
