package pilot

import (
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

	"github.com/meshd/meshd/modules/pilot/generate/envoy"
	telemetryapi "github.com/meshd/meshd/modules/telemetry/api"
)

// telemetryExtension puts the telemetry module's fragments into Envoy
// output: access logs streamed to meshd and tracing on every connection
// manager, access logs on every TCP proxy. Proxyless clients get none.
type telemetryExtension struct {
	tc telemetryapi.EnvoyConfig
}

var (
	_ envoy.ConnectionManagerExtension = telemetryExtension{}
	_ envoy.TCPProxyExtension          = telemetryExtension{}
)

// direction is inbound for a sidecar's own workload's traffic, outbound for
// the rest (a sidecar's outbound listeners, every gateway listener).
func direction(c envoy.Chain) telemetryapi.Direction {
	if c.Class == envoy.SidecarInbound {
		return telemetryapi.Inbound
	}
	return telemetryapi.Outbound
}

// ConnectionManager implements envoy.ConnectionManagerExtension.
func (t telemetryExtension) ConnectionManager(c envoy.Chain, h *hcmv3.HttpConnectionManager) {
	dir := direction(c)
	h.AccessLog = append(h.AccessLog, t.tc.HTTPAccessLogs(c.Proxy, dir)...)
	if tr := t.tc.Tracing(c.Proxy, dir); tr != nil {
		h.Tracing = tr
	}
}

// TCPProxy implements envoy.TCPProxyExtension.
func (t telemetryExtension) TCPProxy(c envoy.Chain, p *tcpv3.TcpProxy) {
	logs, opts := t.tc.TCPAccessLogs(c.Proxy, direction(c))
	p.AccessLog = append(p.AccessLog, logs...)
	if opts != nil {
		p.AccessLogOptions = opts
	}
}
