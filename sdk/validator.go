package sdk

import (
	"google.golang.org/grpc"

	"github.com/meshd/meshd/core/plugin"
	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/pluginvalidator"
)

// ServeValidator serves v as a validator plugin: extra checks on every
// candidate config set galley considers. It does not return.
//
// Validate gets every object of the set and returns findings; each names
// its object (Object: o.Key()) and field (spec.hosts[0]), and meshd fills in
// the file and line. An error finding blocks the change. Use codes of your
// own, stable ones, not galley's GAL codes.
func ServeValidator(info Info, v api.Validator, opts ...Option) {
	serve(plugin.KindValidator, info, func(s *grpc.Server) error { return pluginvalidator.Register(s, v) }, opts)
}
