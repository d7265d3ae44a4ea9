// Package plugin is meshd's plugin host: it runs extensions as separate
// processes through github.com/hashicorp/go-plugin and keeps them alive.
//
// The package is generic. It knows how to launch a plugin binary (after
// checking its SHA-256 against meshd.yaml), shake hands with it, agree on a
// protocol version, talk to the base service every plugin answers (Info,
// ConfigSchema, SetConfig), route its logs into meshd's log, watch its
// health and restart it with backoff. It does not know what a discovery
// source or a validator is: each extension point's Go interface belongs to
// the module that consumes it, and so do its gRPC shims
// (modules/pilot/registry/pluginsource, modules/galley/pluginvalidator,
// modules/citadel/pluginsigner). A consumer asks the plugins module for the
// instances of its kind and wraps each instance's connection in its shim:
//
//	p, err := core.Dep[plugin.Provider](ctx, plugin.ID)
//	for _, inst := range p.Instances(plugin.KindDiscovery) { ... }
//
// The protocol. Host and plugin meet with one fixed handshake (Handshake:
// its magic cookie never changes) and a versioned plugin set: protocol
// version 1 is the base service plus the kind services in proto/<kind>/v1.
// A change that old plugins cannot follow adds version 2 beside 1 in
// ProtocolVersions; the host keeps offering 1 until it is retired on
// purpose. Only gRPC is spoken, always over automatic mutual TLS.
//
// The plugin side of the protocol (Serve) is here too, so that one package
// owns both ends; plugin authors use the friendlier sdk package.
package plugin

import (
	"errors"
	"fmt"

	goplugin "github.com/hashicorp/go-plugin"

	"github.com/meshd/meshd/core/bus"
)

// ID is the plugins module's ID and the key of its config section.
const ID = "plugins"

// Plugin kinds: the extension points meshd offers. The Go interface behind
// each is owned by the consuming module.
const (
	// KindDiscovery: a source of services for pilot's registry
	// (registry.Source).
	KindDiscovery = "discovery"
	// KindValidator: extra config checks for galley (api.Validator).
	KindValidator = "validator"
	// KindSigner: an external CA that signs workload certificates for
	// citadel (api.Signer).
	KindSigner = "signer"
	// KindSink: a telemetry exporter.
	KindSink = "sink"
)

// Kinds lists the plugin kinds meshd.yaml may declare.
func Kinds() []string { return []string{KindDiscovery, KindValidator, KindSigner, KindSink} }

func knownKind(k string) bool {
	for _, x := range Kinds() {
		if x == k {
			return true
		}
	}
	return false
}

// Handshake is the one handshake of every meshd plugin. The magic cookie is
// a UX check that keeps a plugin binary from being run by hand (or by a
// different program) by mistake, not a security measure; it must never
// change, or every plugin ever built stops loading. Protocol versions are
// negotiated through ProtocolVersions instead.
var Handshake = goplugin.HandshakeConfig{
	MagicCookieKey:   "MESHD_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "0aef256905f5be1a3488cb71cdca12aae45404e086a49552",
}

// ProtocolVersions are the plugin protocol versions this meshd speaks,
// oldest first. Version 1: base.v1 plus discovery.v1, validator.v1,
// signer.v1 and sink.v1. Add 2 beside 1 when a kind changes in a way old
// plugins cannot follow; remove 1 only on purpose, in a release note.
var ProtocolVersions = []int{1}

// Topics the plugins module publishes.
const (
	// TopicPluginUp: a plugin started (or restarted) and took its config.
	TopicPluginUp bus.Topic = "plugins.plugin.up"
	// TopicPluginDown: a plugin crashed, stopped answering its health
	// check, or failed to restart. Its consumers keep serving the last good
	// state they had from it.
	TopicPluginDown bus.Topic = "plugins.plugin.down"
)

// PluginUp is published on TopicPluginUp.
type PluginUp struct {
	Name     string // instance name from meshd.yaml
	Kind     string
	Version  string // the plugin's own version
	PID      int
	Restarts int
}

// Topic implements bus.Event.
func (PluginUp) Topic() bus.Topic { return TopicPluginUp }

// PluginDown is published on TopicPluginDown.
type PluginDown struct {
	Name     string
	Kind     string
	Reason   string
	Restarts int
}

// Topic implements bus.Event.
func (PluginDown) Topic() bus.Topic { return TopicPluginDown }

// Errors callers may test for with errors.Is.
var (
	// ErrChecksum: the binary's SHA-256 differs from meshd.yaml's. meshd
	// never runs it.
	ErrChecksum = errors.New("checksum mismatch")
	// ErrDown: the plugin is not running right now (crashed, restarting).
	ErrDown = errors.New("plugin is down")
	// ErrIncompatible: the plugin is not what meshd.yaml says (another
	// kind) or speaks no protocol version this meshd knows.
	ErrIncompatible = errors.New("incompatible plugin")
	// ErrConfig: the plugin's config section does not match its schema, or
	// the plugin refused it.
	ErrConfig = errors.New("plugin config")
	// ErrStopped: the host is shutting down.
	ErrStopped = errors.New("plugin host stopped")
)

// Error prefixes err with the plugin's instance name, the way every plugin
// error meshd reports reads: `plugin "csv": ...`.
func Error(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("plugin %q: %w", name, err)
}
