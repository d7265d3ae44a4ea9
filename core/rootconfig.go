package core

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/meshd/meshd/core/config"
)

// Config is the root of meshd.yaml. Module sections stay raw here; the host
// decodes each one strictly over that module's defaults.
type Config struct {
	DataDir         string        `mapstructure:"dataDir" doc:"directory of the bbolt store (meshd.db) and other state; created with mode 0700"`
	ShutdownTimeout time.Duration `mapstructure:"shutdownTimeout" doc:"how long a graceful shutdown may take before meshd exits anyway"`
	Admin           AdminConfig   `mapstructure:"admin"`
	Log             LogConfig     `mapstructure:"log"`
	Bus             BusConfig     `mapstructure:"bus"`
	Mesh            MeshConfig    `mapstructure:"mesh"`
	Store           StoreConfig   `mapstructure:"store"`
	// Modules holds one section per module, keyed by module ID. Each section
	// may set `enabled` besides the module's own keys.
	Modules map[string]map[string]any `mapstructure:"modules"`
}

// AdminConfig configures the admin HTTP server.
type AdminConfig struct {
	Address string `mapstructure:"address" doc:"admin HTTP listen address: /healthz/ready, /metrics, /debug/*, POST /store/snapshot"`
	Pprof   bool   `mapstructure:"pprof" doc:"serve /debug/pprof on the admin address"`
}

// LogConfig configures logging.
type LogConfig struct {
	Level  string `mapstructure:"level" doc:"log level: debug, info, warn or error"`
	Format string `mapstructure:"format" doc:"log format: text or json"`
}

// BusConfig configures the event bus.
type BusConfig struct {
	BufferSize int `mapstructure:"bufferSize" doc:"events each subscriber may queue before it is sent a resync marker"`
}

// StoreConfig configures the store (meshd.db) beyond where it lives.
type StoreConfig struct {
	Snapshots SnapshotsConfig `mapstructure:"snapshots"`
}

// SnapshotsConfig bounds the snapshots POST /store/snapshot writes into
// <dataDir>/snapshots. Each is a full copy of the store, CA key included, so
// they are pruned rather than left to fill the disk.
type SnapshotsConfig struct {
	Keep int `mapstructure:"keep" doc:"snapshots kept in <dataDir>/snapshots (written by meshd store snapshot / POST /store/snapshot); older ones are removed after each new one"`
}

// DefaultConfig is the embedded default: a store under ./data and the admin
// server on loopback, so `meshd serve` with no file is safe to try anywhere.
func DefaultConfig() Config {
	return Config{
		DataDir:         "./data",
		ShutdownTimeout: 15 * time.Second,
		Admin:           AdminConfig{Address: "127.0.0.1:15014"},
		Log:             LogConfig{Level: "info", Format: "text"},
		Bus:             BusConfig{BufferSize: 256},
		Mesh:            DefaultMeshConfig(),
		Store:           StoreConfig{Snapshots: SnapshotsConfig{Keep: 5}},
	}
}

// Validate checks root settings that decoding cannot. Each problem is a
// config.KeyError on the key at fault, so the CLI can name its file and line.
func (c *Config) Validate() error {
	return keyErrors(c.validate())
}

// keyErrors turns "path: reason" errors, joined ones one by one, into
// config.KeyErrors.
func keyErrors(err error) error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs := j.Unwrap()
		out := make([]error, len(errs))
		for i, e := range errs {
			out[i] = keyErrors(e)
		}
		return errors.Join(out...)
	}
	var ke *config.KeyError
	if errors.As(err, &ke) {
		return err
	}
	if key, reason, ok := strings.Cut(err.Error(), ": "); ok && key != "" && !strings.ContainsAny(key, " \t\"") {
		return &config.KeyError{Path: key, Err: errors.New(reason)}
	}
	return err
}

func (c *Config) validate() error {
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log.level: %q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return fmt.Errorf("log.format: %q is not one of text, json", c.Log.Format)
	}
	if c.DataDir == "" {
		return fmt.Errorf("dataDir: must not be empty")
	}
	if c.ShutdownTimeout <= 0 {
		return fmt.Errorf("shutdownTimeout: must be positive")
	}
	if c.Bus.BufferSize <= 0 {
		return fmt.Errorf("bus.bufferSize: must be positive")
	}
	if c.Store.Snapshots.Keep < 1 {
		return fmt.Errorf("store.snapshots.keep: must be at least 1")
	}
	switch c.Mesh.DefaultMTLSMode {
	case MTLSStrict, MTLSPermissive, MTLSDisable:
	default:
		return fmt.Errorf("mesh.defaultMTLSMode: %q is not one of STRICT, PERMISSIVE, DISABLE", c.Mesh.DefaultMTLSMode)
	}
	switch c.Mesh.OutboundTrafficPolicy {
	case OutboundAllowAny, OutboundRegistryOnly:
	default:
		return fmt.Errorf("mesh.outboundTrafficPolicy: %q is not one of ALLOW_ANY, REGISTRY_ONLY", c.Mesh.OutboundTrafficPolicy)
	}
	if c.Mesh.RootNamespace == "" {
		return fmt.Errorf("mesh.rootNamespace: must not be empty")
	}
	if c.Mesh.TrustDomain == "" {
		return fmt.Errorf("mesh.trustDomain: must not be empty")
	}
	return c.Mesh.ValidateSecurity()
}
