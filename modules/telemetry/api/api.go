// Package api is what the telemetry module offers other modules. It holds
// types and interfaces only; the host hands out the implementation (the
// telemetry module itself) through core.Dep.
//
// Pilot asks for EnvoyConfig and puts its fragments into what it generates,
// so that proxies stream access logs to meshd and send traces to the
// collector. Telemetry is an optional dependency: pilot lists it in
// ModuleInfo.Uses, and when it is disabled core.Dep returns an error wrapping
// core.ErrModuleDisabled and pilot adds nothing:
//
//	tc, err := core.Dep[api.EnvoyConfig](ctx, api.ID)
//	switch {
//	case errors.Is(err, core.ErrModuleDisabled):
//		tc = nil // telemetry off: generate without it
//	case err != nil:
//		return err
//	}
//
// Then, for each proxy p (sidecar or gateway; proxyless clients get nothing):
//
//   - every HttpConnectionManager: hcm.AccessLog = append(hcm.AccessLog,
//     tc.HTTPAccessLogs(p, dir)...) and hcm.Tracing = tc.Tracing(p, dir);
//   - every tcp_proxy filter: logs, opts := tc.TCPAccessLogs(p, dir), then
//     tcp.AccessLog = append(tcp.AccessLog, logs...) and
//     tcp.AccessLogOptions = opts;
//   - CDS: add tc.Clusters(p);
//   - the Generator keys of LDS and CDS: append tc.Key(p).
//
// dir is Inbound for a sidecar's listeners that receive traffic for its own
// workload and Outbound for everything else (a sidecar's outbound listeners,
// every gateway listener). The access logs name the bootstrap's cluster to
// meshd (Istio's xds-grpc by default, modules.telemetry.accessLog.cluster);
// the tracing config names a cluster that Clusters returns.
//
// Sinks: a module that exports access logs elsewhere (the plugin host's
// external sink, for one) implements Sink and adds it through SinkRegistry
// from its Provision, listing telemetry in its Requires.
package api

import (
	"context"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

	"github.com/meshd/meshd/core"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// ID is the telemetry module's ID.
const ID core.ModuleID = "telemetry"

// Direction says which way the traffic through a listener flows, relative
// to the proxy's own workload. It decides the reporter of the access logs:
// destination for Inbound, source for Outbound.
type Direction string

// Directions.
const (
	// Inbound is a sidecar's listener for traffic to its own workload.
	Inbound Direction = "inbound"
	// Outbound is a sidecar's listener for traffic its workload sends, and
	// every listener of a gateway.
	Outbound Direction = "outbound"
)

// EnvoyConfig gives the Envoy config fragments that make a proxy report to
// telemetry. Every method is safe for concurrent use, returns new messages
// the caller may keep and modify, and returns nil for proxyless clients.
type EnvoyConfig interface {
	// HTTPAccessLogs returns the access logs to append to
	// HttpConnectionManager.access_log: the gRPC access-log service on
	// meshd, which turns them into request metrics.
	HTTPAccessLogs(p *xdsapi.Proxy, dir Direction) []*accesslogv3.AccessLog
	// TCPAccessLogs returns the access logs to append to
	// TcpProxy.access_log and the TcpProxy.access_log_options to set (the
	// connection-opened entry that istio_tcp_connections_opened_total
	// counts needs flush_access_log_on_start).
	TCPAccessLogs(p *xdsapi.Proxy, dir Direction) ([]*accesslogv3.AccessLog, *tcpv3.TcpProxy_TcpAccessLogOptions)
	// Tracing returns HttpConnectionManager.tracing: the OpenTelemetry
	// tracer, sampling and custom tags of modules.telemetry.tracing. It is
	// nil when tracing is off.
	Tracing(p *xdsapi.Proxy, dir Direction) *hcmv3.HttpConnectionManager_Tracing
	// Clusters returns the clusters the fragments refer to that the proxy
	// does not have from its bootstrap (the OpenTelemetry collector); add
	// them to the proxy's CDS response. Empty when tracing is off.
	Clusters(p *xdsapi.Proxy) []*clusterv3.Cluster
	// Key returns what the fragments read from p, to append to the
	// Generator keys of the listener and cluster generators so that
	// proxies sharing generated resources also share these fragments.
	Key(p *xdsapi.Proxy) string
}

// Sink exports access-log records somewhere else: a file, a log pipeline,
// an out-of-process plugin.
//
// Telemetry calls Export from one goroutine per sink, with batches of the
// records of one or more access-log messages, and never blocks the
// receiver on it: each sink has a bounded queue, and a batch that does not
// fit is dropped and counted (meshd_telemetry_sink_records_dropped_total).
// Export must return when ctx is done. The records slice is reused after
// Export returns, so a sink that keeps records must copy them.
type Sink interface {
	Export(ctx context.Context, records []Record) error
}

// SinkRegistry adds sinks. The telemetry module implements it.
type SinkRegistry interface {
	// AddSink makes s receive every access-log record from now on. name
	// identifies it in metrics and /debug/telemetryz and must be unique.
	// Call it from Provision.
	AddSink(name string, s Sink) error
}

// Record kinds.
const (
	KindHTTP = "http"
	KindTCP  = "tcp"
)

// Record is one access-log entry as telemetry understood it: the identity
// labels it derived (the same values as the request metrics, before any
// folding for cardinality) and the entry's own fields. Unknown values are
// empty, except the identity labels, which are "unknown" as in the metrics.
type Record struct {
	// Kind is KindHTTP or KindTCP.
	Kind string `json:"kind"`
	// Start is when the request or connection started.
	Start time.Time `json:"start"`
	// Reporter is source or destination.
	Reporter string `json:"reporter"`
	// Proxy is the node ID of the proxy that logged the entry.
	Proxy string `json:"proxy"`

	SourceWorkload           string `json:"sourceWorkload"`
	SourceNamespace          string `json:"sourceNamespace"`
	SourcePrincipal          string `json:"sourcePrincipal"`
	DestinationService       string `json:"destinationService"`
	DestinationWorkload      string `json:"destinationWorkload"`
	DestinationNamespace     string `json:"destinationNamespace"`
	ConnectionSecurityPolicy string `json:"connectionSecurityPolicy"`

	// HTTP only.
	Protocol     string `json:"protocol,omitempty"` // HTTP/1.0, HTTP/1.1, HTTP/2, HTTP/3
	Method       string `json:"method,omitempty"`
	Authority    string `json:"authority,omitempty"`
	Path         string `json:"path,omitempty"`
	UserAgent    string `json:"userAgent,omitempty"`
	RequestID    string `json:"requestId,omitempty"`
	ResponseCode uint32 `json:"responseCode,omitempty"`
	GRPCStatus   string `json:"grpcStatus,omitempty"`

	// ResponseFlags are Envoy's short flags (UH, UF, URX, ...), comma
	// separated as in Envoy's %RESPONSE_FLAGS%.
	ResponseFlags string `json:"responseFlags,omitempty"`
	// Duration is from the first byte received to the last byte sent.
	Duration time.Duration `json:"durationNanos"`
	// BytesReceived and BytesSent: request and response body bytes for
	// HTTP, bytes from and to the downstream for TCP.
	BytesReceived uint64 `json:"bytesReceived"`
	BytesSent     uint64 `json:"bytesSent"`

	UpstreamCluster string `json:"upstreamCluster,omitempty"`
	UpstreamHost    string `json:"upstreamHost,omitempty"`
	DownstreamPeer  string `json:"downstreamPeer,omitempty"`
}
