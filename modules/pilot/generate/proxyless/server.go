package proxyless

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/security"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// Server listeners. An xDS-enabled gRPC server (xds.NewGRPCServer) asks
// for the Listener named by its bootstrap's
// server_listener_resource_name_template with %s replaced by the address it
// listens on, host:port as Go prints it (10.0.0.5:8080, 0.0.0.0:8080,
// [::]:8080). Both templates in use are served: grpc-go's own example and
// Istio's agent's.
const (
	ServerListenerPrefix      = "grpc/server?xds.resource.listening_address="
	IstioServerListenerPrefix = "xds.istio.io/grpc/lds/inbound/"
)

var serverPrefixes = []string{ServerListenerPrefix, IstioServerListenerPrefix}

// ParseServerListener returns the address and port of a server listener
// name, and false for other names.
func ParseServerListener(name string) (host string, port uint32, ok bool) {
	for _, prefix := range serverPrefixes {
		if addr, found := strings.CutPrefix(name, prefix); found {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return "", 0, false
			}
			return ap.Addr().String(), uint32(ap.Port()), true
		}
	}
	return "", 0, false
}

// serverPorts returns the ports the proxy serves as a workload of some
// service (by its INSTANCE_IPS), sorted.
func serverPorts(ix *index.Index, p *xdsapi.Proxy) []uint32 {
	var ports []uint32
	for _, t := range ix.ServiceTargets(p.IPs) {
		if t.Endpoint.Port != 0 {
			ports = append(ports, t.Endpoint.Port)
		}
	}
	slices.Sort(ports)
	return slices.Compact(ports)
}

func workloadOf(p *xdsapi.Proxy) security.Workload {
	ns := p.Namespace
	if ns == "" {
		ns = "default"
	}
	return security.Workload{Namespace: ns, Labels: p.Labels}
}

// ServerListeners returns the server-side listeners of a proxyless gRPC
// server: for every port its workload serves, one per address it may
// listen on (each of its INSTANCE_IPS and the wildcards 0.0.0.0 and ::),
// under both name templates. When names is not nil only the server
// listeners among them are returned (client listener names are left to
// Listeners). A server listening on a port no service of its workload
// declares gets no listener, and grpc-go keeps it not serving.
func ServerListeners(ix *index.Index, p *xdsapi.Proxy, names []string) []*listenerv3.Listener {
	ports := serverPorts(ix, p)
	if len(ports) == 0 {
		return nil
	}
	type want struct {
		name, host string
		port       uint32
	}
	var wants []want
	if names != nil {
		for _, n := range names {
			if host, port, ok := ParseServerListener(n); ok && slices.Contains(ports, port) {
				wants = append(wants, want{n, host, port})
			}
		}
	} else {
		hosts := append(slices.Clone(p.IPs), "0.0.0.0", "::")
		for _, port := range ports {
			for _, h := range hosts {
				a, err := netip.ParseAddr(h)
				if err != nil {
					continue
				}
				addr := netip.AddrPortFrom(a, uint16(port)).String()
				for _, prefix := range serverPrefixes {
					wants = append(wants, want{prefix + addr, a.String(), port})
				}
			}
		}
	}
	if len(wants) == 0 {
		return nil
	}
	cfg := security.For(ix)
	w := workloadOf(p)
	byPort := map[uint32][]*listenerv3.FilterChain{}
	out := make([]*listenerv3.Listener, 0, len(wants))
	for _, x := range wants {
		chains, ok := byPort[x.port]
		if !ok {
			chains = cfg.GRPCServerChains(ix, w, x.port).Chains
			byPort[x.port] = chains
		}
		out = append(out, &listenerv3.Listener{
			Name: x.name,
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Protocol:      corev3.SocketAddress_TCP,
				Address:       x.host,
				PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: x.port},
			}}},
			FilterChains: chains,
		})
	}
	slices.SortFunc(out, func(a, b *listenerv3.Listener) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// ServerKeyPart is the part of a proxyless client's LDS generator key
// that ServerListeners reads: its addresses, the ports it serves and the
// policies selecting its workload. Empty for pure clients, which keep
// sharing one group.
func ServerKeyPart(ix *index.Index, p *xdsapi.Proxy) string {
	ports := serverPorts(ix, p)
	if len(ports) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("srv=")
	b.WriteString(strings.Join(p.IPs, ","))
	b.WriteByte('|')
	for _, port := range ports {
		b.WriteString(strconv.FormatUint(uint64(port), 10))
		b.WriteByte(',')
	}
	b.WriteByte('|')
	b.WriteString(security.For(ix).KeyPart(workloadOf(p)))
	return b.String()
}

// Servers is pilot's extension that serves ServerListeners to proxyless
// clients next to their client listeners.
type Servers struct{}

// ProxylessListeners implements pilot's ProxylessListenerExtension.
func (Servers) ProxylessListeners(ix *index.Index, p *xdsapi.Proxy, names []string) []*listenerv3.Listener {
	return ServerListeners(ix, p, names)
}

// KeyPart implements pilot's KeyExtension: ServerKeyPart for a proxyless
// client's listeners.
func (Servers) KeyPart(ix *index.Index, p *xdsapi.Proxy, typeURL string) string {
	if p.Type != xdsapi.Proxyless || typeURL != xdsapi.ListenerType {
		return ""
	}
	return ServerKeyPart(ix, p)
}
