package security

import (
	"maps"
	"net/netip"
	"slices"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/modules/pilot/generate"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/security/authn"
)

// Filter chain names of proxyless servers' listeners.
const (
	GRPCChainMTLS      = "inbound-mtls"
	GRPCChainPlaintext = "inbound-plaintext"
)

// GRPCServer is what a proxyless gRPC server's listener for one workload
// port enforces.
type GRPCServer struct {
	Chains []*listenerv3.FilterChain
	// Mode is the port's effective mTLS mode.
	Mode authn.Mode
	// Issues are the rule attributes gRPC cannot evaluate, and how each
	// failed closed.
	Issues []Issue
}

// GRPCServerChains builds the filter chains of a proxyless server's
// listener for workload w on port, in the shapes grpc-go accepts (gRFC
// A36): no listener filters, chains matched only by addresses, TLS only
// through the bootstrap's certificate provider instances, an inline route
// configuration with a non-forwarding route, and the RBAC filter of gRFC
// A41 before the router.
//
// The mode decides the chains:
//
//   - STRICT: one chain requiring a client certificate from the mesh CA;
//   - DISABLE: one plaintext chain;
//   - PERMISSIVE: gRPC cannot tell TLS from plaintext on a connection (it
//     has no TLS inspector, and drops chains that match transport_protocol
//     tls), so the two chains are told apart by the client's address:
//     connections from the addresses of workloads known to be in the mesh
//     (authn.MeshAddresses, which originate mTLS) must be mTLS, every other
//     address gets plaintext. Without known mesh addresses the port is
//     plaintext only.
//
// Authorization is the same on every chain (a plaintext peer simply has
// no principal): DENY and the rules of CUSTOM policies (gRPC cannot call
// an ext_authz server, so those requests are denied) in one RBAC filter,
// ALLOW in the next; AUDIT is not enforced by anything and gRPC ignores
// LOG. RequestAuthentication cannot be verified, so requests carrying a
// token are denied.
func (c *Config) GRPCServerChains(ix *index.Index, w Workload, port uint32) GRPCServer {
	var filters []*hcmv3.HttpFilter
	var issues []Issue
	a := c.AuthorizationPolicies(w)
	deny, is := c.RBACPolicies(GRPC, true, a.Deny)
	issues = append(issues, is...)
	if len(a.Custom) > 0 {
		more, is := c.RBACPolicies(GRPC, true, a.Custom)
		issues = append(issues, is...)
		maps.Copy(deny, more)
		for _, p := range a.Custom {
			issues = append(issues, Issue{Policy: p.Name(), Field: "spec.action", Target: GRPC,
				Reason: "cannot call an ext_authz provider, so the requests this CUSTOM policy sends to " + p.Spec.GetProvider().GetName() + " are denied"})
		}
	}
	if ras := c.RequestAuthentications(w); len(ras) > 0 {
		if r := unverifiedTokenRule(ras); r != nil {
			deny[ras[0].Object.Namespace+"/"+ras[0].Object.Name+"[unverified-token]"] = r
		}
		for _, p := range ras {
			issues = append(issues, Issue{Policy: p.Object.Namespace + "/" + p.Object.Name, Field: "spec.jwtRules", Target: GRPC,
				Reason: "cannot verify JWTs, so requests that carry a token are denied"})
		}
	}
	if len(deny) > 0 {
		filters = append(filters, rbacFilter(FilterDeny, rbacv3.RBAC_DENY, deny))
	}
	if len(a.Allow) > 0 {
		allow, is := c.RBACPolicies(GRPC, false, a.Allow)
		issues = append(issues, is...)
		filters = append(filters, rbacFilter(FilterAllow, rbacv3.RBAC_ALLOW, allow))
	}
	filters = append(filters, &hcmv3.HttpFilter{Name: generate.FilterRouter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: Typed(&routerv3.Router{})}})
	hcm := Typed(&hcmv3.HttpConnectionManager{
		StatPrefix: "inbound_" + strconv.FormatUint(uint64(port), 10),
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: index.InboundClusterName(port),
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    "inbound|" + strconv.FormatUint(uint64(port), 10),
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routev3.Route_NonForwardingAction{NonForwardingAction: &routev3.NonForwardingAction{}},
				}},
			}},
		}},
		HttpFilters: filters,
	})
	chain := func(name string, tls bool, match *listenerv3.FilterChainMatch) *listenerv3.FilterChain {
		fc := &listenerv3.FilterChain{
			Name:             name,
			FilterChainMatch: match,
			Filters:          []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}},
		}
		if tls {
			fc.TransportSocket = grpcServerTLS()
		}
		return fc
	}
	out := GRPCServer{Mode: c.Authn.Mode(w.Namespace, w.Labels, port), Issues: issues}
	switch out.Mode {
	case authn.Strict:
		out.Chains = []*listenerv3.FilterChain{chain(GRPCChainMTLS, true, nil)}
	case authn.Disable:
		out.Chains = []*listenerv3.FilterChain{chain(GRPCChainPlaintext, false, nil)}
	default:
		if ranges := Aggregate(authn.MeshAddresses(ix)); len(ranges) > 0 {
			out.Chains = append(out.Chains, chain(GRPCChainMTLS, true, &listenerv3.FilterChainMatch{SourcePrefixRanges: ranges}))
		}
		out.Chains = append(out.Chains, chain(GRPCChainPlaintext, false, nil))
	}
	return out
}

func rbacFilter(name string, action rbacv3.RBAC_Action, pols map[string]*rbacv3.Policy) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: Typed(&rbachttpv3.RBAC{
		Rules: &rbacv3.RBAC{Action: action, Policies: pols},
	})}}
}

// grpcServerTLS is the mTLS a proxyless server terminates: identity and
// roots from its bootstrap's certificate provider instance (file_watcher
// on the agent's files), a client certificate required. gRPC servers take
// no SAN matchers; who may call is AuthorizationPolicy's business.
func grpcServerTLS() *corev3.TransportSocket {
	ctx := &tlsv3.DownstreamTlsContext{
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: generate.CertProviderInstance, CertificateName: generate.SecretDefault},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: generate.CertProviderInstance, CertificateName: generate.SecretRootCA},
			}},
		},
		RequireClientCertificate: wrapperspb.Bool(true),
	}
	return &corev3.TransportSocket{Name: generate.TransportSocketTLS, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: Typed(ctx)}}
}

// Aggregate turns addresses into the fewest CIDR ranges that cover
// exactly them: runs of consecutive addresses become aligned blocks, so a
// /24 of workloads is one range, and no address outside the list is ever
// covered. Unparsable addresses are skipped.
func Aggregate(addrs []string) []*corev3.CidrRange {
	var ips []netip.Addr
	for _, a := range addrs {
		if ip, err := netip.ParseAddr(a); err == nil {
			ips = append(ips, ip.Unmap())
		}
	}
	slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
	ips = slices.Compact(ips)
	var out []*corev3.CidrRange
	for i := 0; i < len(ips); {
		a := ips[i]
		bits := a.BitLen()
		best := bits
		for p := bits - 1; p >= 0 && bits-p < 31; p-- {
			block := netip.PrefixFrom(a, p).Masked()
			if block.Addr() != a {
				break // a is not the start of a larger aligned block
			}
			size := 1 << (bits - p)
			if i+size > len(ips) || !block.Contains(ips[i+size-1]) {
				break
			}
			best = p
		}
		out = append(out, &corev3.CidrRange{AddressPrefix: a.String(), PrefixLen: wrapperspb.UInt32(uint32(best))})
		i += 1 << (bits - best)
	}
	return out
}
