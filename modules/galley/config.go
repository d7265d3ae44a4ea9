package galley

import (
	"errors"
	"fmt"
	"time"
)

// Config is the modules.galley section of meshd.yaml.
type Config struct {
	// Paths are the files and directory trees the file source reads and
	// watches. Empty turns the file source off (config then comes only
	// from other sources, such as Kubernetes).
	Paths []string `mapstructure:"paths" doc:"files and directory trees of Istio config (.yaml, .yml, .json) to read and watch; a path that does not exist yet is picked up when it appears; empty: no file source"`
	// Debounce is the quiet time after a file event before files are read
	// again, so an editor's burst of writes becomes one change.
	Debounce time.Duration `mapstructure:"debounce" doc:"quiet time after a file change before the files are read again (one editor save is one change); changes are applied at the latest 10x this after the first event"`
	// History is how many accepted revisions the store keeps.
	History    int              `mapstructure:"history" doc:"accepted revisions kept in the store for meshd config history, diff and rollback"`
	Validators ValidatorsConfig `mapstructure:"validators"`
}

// ValidatorsConfig configures external validators (the validator plugin
// kind): how long they may take and what happens when they fail.
type ValidatorsConfig struct {
	Timeout       time.Duration `mapstructure:"timeout" doc:"how long one external validator may take to check a change"`
	FailurePolicy string        `mapstructure:"failurePolicy" doc:"when an external validator fails or times out: fail (reject the change with GAL4001 and retry it; the last accepted config keeps serving) or ignore (accept it with a GAL4001 warning)"`
	RetryInterval time.Duration `mapstructure:"retryInterval" doc:"how often a change rejected because a validator failed is tried again"`
}

// Default returns the defaults documented in docs/config-reference.md.
func Default() *Config {
	return &Config{
		Paths:    []string{"./mesh"},
		Debounce: 100 * time.Millisecond,
		History:  100,
		Validators: ValidatorsConfig{
			Timeout:       DefaultValidatorTimeout,
			FailurePolicy: string(FailClosed),
			RetryInterval: 30 * time.Second,
		},
	}
}

// Validate checks the settings decoding cannot.
func (c *Config) Validate() error {
	var errs []error
	if c.Debounce < 0 {
		errs = append(errs, fmt.Errorf("modules.galley.debounce: must not be negative"))
	}
	if c.History < 1 {
		errs = append(errs, fmt.Errorf("modules.galley.history: must be at least 1"))
	}
	for i, p := range c.Paths {
		if p == "" {
			errs = append(errs, fmt.Errorf("modules.galley.paths[%d]: must not be empty", i))
		}
	}
	switch FailurePolicy(c.Validators.FailurePolicy) {
	case FailClosed, FailOpen:
	default:
		errs = append(errs, fmt.Errorf("modules.galley.validators.failurePolicy: %q is not one of fail, ignore", c.Validators.FailurePolicy))
	}
	if c.Validators.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("modules.galley.validators.timeout: must be positive"))
	}
	if c.Validators.RetryInterval <= 0 {
		errs = append(errs, fmt.Errorf("modules.galley.validators.retryInterval: must be positive"))
	}
	return errors.Join(errs...)
}
