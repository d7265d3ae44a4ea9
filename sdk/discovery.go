package sdk

import (
	"google.golang.org/grpc"

	"github.com/meshd/meshd/core/plugin"
	"github.com/meshd/meshd/modules/pilot/registry"
	"github.com/meshd/meshd/modules/pilot/registry/pluginsource"
)

// ServeDiscovery serves src as a discovery plugin: a source of services
// for pilot's registry. It does not return.
//
// src.Run is called once meshd has configured the plugin and runs until
// meshd stops watching; it reports the source's whole state through the
// sink each time it changes, and returns nil when its context ends. If Run
// returns an error, meshd keeps the last state and watches again after a
// backoff. Services must be finalized (model.Service.Finalize) and, for an
// unchanged service, should be the same pointer as last time: only changed
// services are then sent again.
func ServeDiscovery(info Info, src registry.Source, opts ...Option) {
	serve(plugin.KindDiscovery, info, func(s *grpc.Server) error { return pluginsource.Register(s, src) }, opts)
}
