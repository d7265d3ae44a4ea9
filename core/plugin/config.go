package plugin

import (
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Config is the modules.plugins section of meshd.yaml.
type Config struct {
	StartTimeout   time.Duration  `mapstructure:"startTimeout" doc:"how long a plugin may take from exec to answering the handshake; longer is a failed start"`
	CallTimeout    time.Duration  `mapstructure:"callTimeout" doc:"deadline of the host's calls to a plugin's base service (Info, ConfigSchema, SetConfig) at each start"`
	HealthInterval time.Duration  `mapstructure:"healthInterval" doc:"how often each running plugin's health is checked"`
	HealthTimeout  time.Duration  `mapstructure:"healthTimeout" doc:"a health check not answered within this restarts the plugin"`
	Backoff        BackoffConfig  `mapstructure:"backoff"`
	MaxMessageSize int            `mapstructure:"maxMessageSize" doc:"largest gRPC message, in bytes, accepted from or sent to a plugin"`
	Plugins        []PluginConfig `mapstructure:"plugins" doc:"the plugins to run: each {name, kind, path, sha256, args, config}; see docs/plugins.md"`
}

// BackoffConfig bounds the restart delay of a failing plugin.
type BackoffConfig struct {
	Initial time.Duration `mapstructure:"initial" doc:"delay before the first restart of a failed plugin; it doubles with each failure"`
	Max     time.Duration `mapstructure:"max" doc:"longest delay between restarts; a plugin that stayed up for a minute starts again from initial"`
}

// PluginConfig declares one plugin.
type PluginConfig struct {
	// Name identifies this plugin instance in logs, metrics, events and
	// `meshd plugins list`, and in the registry as the source of what it
	// discovers. One binary may run under several names.
	Name string `mapstructure:"name"`
	// Kind is the extension point: discovery, validator, signer or sink.
	// The plugin must report the same kind.
	Kind string `mapstructure:"kind"`
	// Path is the plugin binary; a relative path is taken from meshd's
	// working directory.
	Path string `mapstructure:"path"`
	// SHA256 is the hex SHA-256 of the binary. meshd refuses to run a binary
	// whose checksum differs (`sha256sum <path>`).
	SHA256 string `mapstructure:"sha256"`
	// Args are passed to the binary.
	Args []string `mapstructure:"args"`
	// Config is the plugin's own section, checked against the schema the
	// plugin declares before it is handed over.
	Config map[string]any `mapstructure:"config"`
}

// Default returns the defaults: no plugins; a 10 s start timeout; a health
// check every 5 s; restarts from 250 ms, doubling to 30 s.
func Default() *Config {
	return &Config{
		StartTimeout:   10 * time.Second,
		CallTimeout:    10 * time.Second,
		HealthInterval: 5 * time.Second,
		HealthTimeout:  2 * time.Second,
		Backoff:        BackoffConfig{Initial: 250 * time.Millisecond, Max: 30 * time.Second},
		MaxMessageSize: 16 << 20,
	}
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$`)

// Validate checks the section without touching the file system. Error
// paths are the config keys (modules.plugins.plugins[1].sha256).
func (c *Config) Validate() error {
	var errs []error
	p := "modules." + ID
	if c.StartTimeout <= 0 || c.CallTimeout <= 0 || c.HealthInterval <= 0 || c.HealthTimeout <= 0 {
		errs = append(errs, fmt.Errorf("%s: startTimeout, callTimeout, healthInterval and healthTimeout must be positive", p))
	}
	if c.Backoff.Initial <= 0 || c.Backoff.Max < c.Backoff.Initial {
		errs = append(errs, fmt.Errorf("%s.backoff: need 0 < initial (%v) <= max (%v)", p, c.Backoff.Initial, c.Backoff.Max))
	}
	if c.MaxMessageSize < 64<<10 {
		errs = append(errs, fmt.Errorf("%s.maxMessageSize: %d is below the 64 KiB minimum", p, c.MaxMessageSize))
	}
	seen := map[string]int{}
	for i, pc := range c.Plugins {
		at := fmt.Sprintf("%s.plugins[%d]", p, i)
		if !nameRE.MatchString(pc.Name) {
			errs = append(errs, fmt.Errorf("%s.name: %q must be 1-64 lowercase letters, digits, '.', '_' or '-'", at, pc.Name))
		} else if j, dup := seen[pc.Name]; dup {
			errs = append(errs, fmt.Errorf("%s.name: %q is also the name of plugins[%d]", at, pc.Name, j))
		}
		seen[pc.Name] = i
		if !knownKind(pc.Kind) {
			errs = append(errs, fmt.Errorf("%s.kind: %q is not one of %s", at, pc.Kind, strings.Join(Kinds(), ", ")))
		}
		if pc.Path == "" {
			errs = append(errs, fmt.Errorf("%s.path: required", at))
		}
		if _, err := parseSHA256(pc.SHA256); err != nil {
			errs = append(errs, fmt.Errorf("%s.sha256: %w", at, err))
		}
	}
	return errors.Join(errs...)
}

func parseSHA256(s string) ([]byte, error) {
	s = strings.TrimSpace(strings.TrimPrefix(strings.ToLower(s), "sha256:"))
	if s == "" {
		return nil, errors.New("required: meshd runs no plugin binary without its checksum (sha256sum <path>)")
	}
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		hint := ""
		if strings.Trim(s, "0123456789.e+-") == "" {
			hint = "; YAML read it as a number: put it in quotes"
		}
		return nil, fmt.Errorf("%q is not a hex SHA-256 (64 hex digits)%s", s, hint)
	}
	return b, nil
}

func absPath(p string) (string, error) {
	a, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.Clean(a), nil
}
