package envoy

import (
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

	telemetryapi "github.com/meshd/meshd/modules/telemetry/api"
)

// Telemetry is the extension that makes proxies report to the telemetry
// module: every HTTP connection manager gets telemetry's access logs and
// tracing, every TCP proxy its access logs. Pilot adds it to
// Options.Extensions when telemetry is enabled. The clusters the fragments
// refer to (Config.Clusters) belong in the proxy's CDS response, and
// Config.Key in the generator key, which this package does not build.
type Telemetry struct {
	Config telemetryapi.EnvoyConfig
}

// Interface guards.
var (
	_ ConnectionManagerExtension = Telemetry{}
	_ TCPProxyExtension          = Telemetry{}
)

// direction tells telemetry which side reports: a sidecar's inbound chains
// report as the destination, everything else as the source.
func direction(c Class) telemetryapi.Direction {
	if c == SidecarInbound {
		return telemetryapi.Inbound
	}
	return telemetryapi.Outbound
}

// ConnectionManager implements ConnectionManagerExtension.
func (t Telemetry) ConnectionManager(c Chain, h *hcmv3.HttpConnectionManager) {
	dir := direction(c.Class)
	h.AccessLog = append(h.AccessLog, t.Config.HTTPAccessLogs(c.Proxy, dir)...)
	if tr := t.Config.Tracing(c.Proxy, dir); tr != nil {
		h.Tracing = tr
	}
}

// TCPProxy implements TCPProxyExtension.
func (t Telemetry) TCPProxy(c Chain, p *tcpv3.TcpProxy) {
	logs, opts := t.Config.TCPAccessLogs(c.Proxy, direction(c.Class))
	p.AccessLog = append(p.AccessLog, logs...)
	if opts != nil {
		p.AccessLogOptions = opts
	}
}
