package sdk

import (
	"google.golang.org/grpc"

	"github.com/meshd/meshd/core/plugin"
	"github.com/meshd/meshd/modules/telemetry/api"
	"github.com/meshd/meshd/modules/telemetry/pluginsink"
)

// ServeSink serves s as a telemetry sink plugin: it receives batches of
// access-log records. It does not return.
//
// Export should return promptly; meshd never waits on it (a slow sink's
// queue drops batches, counted in meshd_telemetry_sink_records_dropped_total).
func ServeSink(info Info, s api.Sink, opts ...Option) {
	serve(plugin.KindSink, info, func(srv *grpc.Server) error { return pluginsink.Register(srv, s) }, opts)
}
