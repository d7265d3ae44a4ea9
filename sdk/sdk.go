// Package sdk is what a meshd plugin's main function calls. A plugin is a
// program that serves one extension point of meshd from its own process:
//
//	func main() {
//		src := &mySource{}
//		sdk.ServeDiscovery(sdk.Info{Name: "my-source", Version: "1.0.0"}, src, sdk.WithConfig(&src.cfg))
//	}
//
// Serve* hides go-plugin: the handshake, protocol versions, mutual TLS, the
// base service (Info, ConfigSchema, SetConfig) and the plugin's exit when
// meshd goes away. The implementation is the same Go interface meshd uses
// for its built-in extensions, owned by the module that consumes it:
//
//	discovery   registry.Source   modules/pilot/registry
//	validator   api.Validator     modules/galley/api
//	signer      api.Signer        modules/citadel/api
//	sink        api.Sink          modules/telemetry/api
//
// Each kind has a conformance suite (sourcetest, validatortest, signertest,
// sinktest beside its shims) that a plugin's own tests can run against its
// implementation, in process and across the shims. docs/plugins.md walks
// through writing, building, checksumming, configuring and debugging one.
package sdk

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"google.golang.org/grpc"

	"github.com/meshd/meshd/core/plugin"
)

// Info says who a plugin is; `meshd plugins list` shows it.
type Info struct {
	// Name is the plugin's own name, e.g. "csv-source".
	Name string
	// Version is the plugin's release (semver recommended).
	Version string
	// Description is one line about what it does.
	Description string
}

// Option configures a Serve call.
type Option func(*options)

type options struct {
	cfg       any
	configure func(ctx context.Context, instance string) error
}

// WithConfig declares the plugin's config section. cfg points to a struct:
// each exported field with a json tag is a key named by the tag, its `doc`
// tag describes it, `required:"true"` makes it required, `allowed:"a,b"`
// restricts a string, and the value the field holds is the default. Field
// types: string, bool, integers, floats, time.Duration, []string and
// map[string]string.
//
// meshd checks the plugin's section of meshd.yaml against this schema
// before it starts using the plugin, and the SDK decodes it into *cfg. If
// *cfg has a method Validate() error, it is called next, and its error
// refuses the config: meshd then reports it and does not use the plugin.
func WithConfig(cfg any) Option { return func(o *options) { o.cfg = cfg } }

// OnConfigure runs f once the config is decoded and valid, before meshd
// uses the plugin: the place to open files or connect to a backend. Its
// error refuses the config. instance is the plugin's name in meshd.yaml.
func OnConfigure(f func(ctx context.Context, instance string) error) Option {
	return func(o *options) { o.configure = f }
}

// Logger returns the plugin's logger. What it logs appears in meshd's log
// at the same level, tagged plugin=<name in meshd.yaml>. Anything the
// plugin prints to stdout or stderr also ends up there, one record per
// line, but structured logs are easier to search.
func Logger() *slog.Logger { return plugin.PluginLogger() }

// serve is what every kind's Serve does.
func serve(kind string, info Info, register func(*grpc.Server) error, opts []Option) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	cfg := plugin.ServeConfig{
		Info:    plugin.Info{Name: info.Name, Kind: kind, Version: info.Version, Description: info.Description},
		Servers: map[int]func(*grpc.Server) error{1: register},
	}
	if o.cfg != nil {
		schema, err := plugin.SchemaOf(o.cfg)
		if err != nil {
			fmt.Fprintf(os.Stderr, "meshd plugin %s: config: %v\n", info.Name, err)
			os.Exit(1)
		}
		cfg.Schema = schema
	}
	cfg.Configure = func(ctx context.Context, req plugin.ConfigRequest) error {
		if o.cfg != nil {
			if err := plugin.DecodeConfig(req.JSON, o.cfg); err != nil {
				return err
			}
			if v, ok := o.cfg.(interface{ Validate() error }); ok {
				if err := v.Validate(); err != nil {
					return err
				}
			}
		}
		if o.configure != nil {
			return o.configure(ctx, req.Instance)
		}
		return nil
	}
	plugin.Serve(cfg)
}
