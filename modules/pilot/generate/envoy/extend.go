package envoy

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/xds/api"
)

// Class says which kind of traffic a listener or filter chain handles.
type Class int

// Classes, as Istio's EnvoyFilter contexts name them.
const (
	SidecarOutbound Class = iota
	SidecarInbound
	Gateway
)

func (c Class) String() string {
	switch c {
	case SidecarInbound:
		return "SIDECAR_INBOUND"
	case Gateway:
		return "GATEWAY"
	}
	return "SIDECAR_OUTBOUND"
}

// Chain describes the filter chain being built, for extensions to decide
// what to add. Extensions must treat it as read-only.
type Chain struct {
	Class Class
	Proxy *api.Proxy
	Index *index.Index
	// Listener is the listener's name.
	Listener string
	// Port is the listener port (sidecar outbound, gateway) or the
	// workload port (inbound).
	Port     uint32
	Protocol model.Protocol
	// Service is the service the chain serves when there is exactly one
	// (inbound chains, TCP and TLS outbound chains); nil otherwise.
	Service *model.Service
	// Server and Gateway (namespace/name) are set on gateway chains.
	Server  *networking.Server
	Gateway string
	// Passthrough marks chains that forward to the original destination
	// or to the black hole rather than to a service.
	Passthrough bool
	// HTTP says the chain ends in an HTTP connection manager (rather than
	// a TCP proxy), whatever Protocol says: a gateway's HTTPS server that
	// terminates TLS is Protocol HTTPS and HTTP.
	HTTP bool
}

// The extension points below are one-method interfaces. A value in
// Options.Extensions implements any of them; each is called for every chain
// it applies to, in the order of Options.Extensions. Later issues plug in
// here: telemetry (access logs, tracing, stats filters) and security (mTLS
// on inbound chains, RBAC filters) without changing how chains are built.

// NetworkFilterExtension adds network filters ahead of a chain's terminal
// filter (the HTTP connection manager or the TCP proxy): RBAC, metadata
// exchange, stats.
type NetworkFilterExtension interface {
	NetworkFilters(c Chain) []*listenerv3.Filter
}

// HTTPFilterExtension adds HTTP filters ahead of the built-in fault, CORS
// and router filters: authentication, authorization, stats, Wasm.
type HTTPFilterExtension interface {
	HTTPFilters(c Chain) []*hcmv3.HttpFilter
}

// ConnectionManagerExtension adjusts an HTTP connection manager after it
// is built: access logs, tracing, request ID settings. Its HTTP filters
// are shared between connection managers: append or replace entries, but
// do not modify the existing filter messages in place.
type ConnectionManagerExtension interface {
	ConnectionManager(c Chain, h *hcmv3.HttpConnectionManager)
}

// TCPProxyExtension adjusts a TCP proxy after it is built: access logs.
type TCPProxyExtension interface {
	TCPProxy(c Chain, t *tcpv3.TcpProxy)
}

// ListenerExtension adjusts a whole listener after it is built: listener
// access logs, connection balance.
type ListenerExtension interface {
	Listener(class Class, p *api.Proxy, l *listenerv3.Listener)
}

// InboundMatch is one way traffic may arrive on an inbound port: the match
// added to the port's destination_port and the transport socket that
// terminates it. An inbound port gets one filter chain per InboundMatch.
type InboundMatch struct {
	// NameSuffix tells the chains of one port apart ("", "-mtls").
	NameSuffix           string
	TransportProtocol    string
	ApplicationProtocols []string
	TransportSocket      *corev3.TransportSocket
}

// InboundTLSExtension decides how an inbound port is reached (mTLS modes
// from PeerAuthentication). Without one, every inbound port is plaintext.
// The first extension that returns matches wins.
type InboundTLSExtension interface {
	InboundMatches(c Chain) []InboundMatch
}

// InboundPassthroughExtension decides how a sidecar's inbound passthrough
// (ports no service declares) is reached, as InboundTLSExtension does for
// declared ports; c is the passthrough chain's (Passthrough, Port 15006).
// Without one, or when it returns no matches, the passthrough is one
// plaintext chain. The first extension that returns matches wins.
type InboundPassthroughExtension interface {
	PassthroughMatches(c Chain) []InboundMatch
}
