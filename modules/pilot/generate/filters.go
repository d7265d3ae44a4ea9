package generate

import (
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// HTTPFilters returns the http_filters an HttpConnectionManager needs for
// the routes this package builds, in order with the router last (both
// Envoy and grpc-go require it): the fault filter, which does nothing
// unless a route's per-filter config asks for a fault, then for Envoy the
// CORS filter, likewise driven per route. Listing them always, rather than
// only when some route uses them, keeps listeners unchanged when a fault or
// CORS policy comes and goes, so such a change is an RDS push only.
func HTTPFilters(f Flavor) []*hcmv3.HttpFilter {
	out := []*hcmv3.HttpFilter{httpFilter(FilterFault, mustAny(&faultv3.HTTPFault{}))}
	if f == Envoy {
		out = append(out, httpFilter(FilterCORS, mustAny(&corsv3.Cors{})))
	}
	return append(out, httpFilter(FilterRouter, mustAny(&routerv3.Router{})))
}

func httpFilter(name string, cfg *anypb.Any) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}}
}
