package core

import (
	"context"
	"errors"
)

// The lifecycle hooks are optional one-method interfaces, found by type
// assertion, so a module implements only what it needs.

// Provisioner sets a module up: read config, open listeners, wire
// dependencies. It must be quick and must not start goroutines that outlive
// it; long-running work belongs in Run. A failed Provision is followed by
// Cleanup, so Cleanup must tolerate partial provisioning.
type Provisioner interface {
	Provision(ctx *Context) error
}

// Validator checks a provisioned module's settings without side effects.
type Validator interface {
	Validate() error
}

// Runner does a module's long-running work. Run blocks until ctx is done and
// then returns nil; any error it returns stops the whole host.
type Runner interface {
	Run(ctx context.Context) error
}

// CleanerUpper releases what Provision acquired. The host calls it in reverse
// dependency order after every Runner has returned.
type CleanerUpper interface {
	Cleanup() error
}

// Readier reports whether a module is ready to serve. A nil error means
// ready; the error text is shown on /healthz/ready.
type Readier interface {
	Ready() error
}

// Degrader reports a module that serves, but not at full strength: a plugin
// it relies on is down and it is serving that plugin's last good state. It
// shows on /healthz/ready without failing readiness, because pulling a
// control plane out of service would hurt more than the degradation does.
type Degrader interface {
	// Degraded returns "" when all is well, else what is degraded.
	Degraded() string
}

// ErrDependencyCycle is returned when module requirements form a cycle.
var ErrDependencyCycle = errors.New("module dependency cycle")

// ErrModuleDisabled is returned by Context.Dep for a module listed in Uses
// that the config leaves disabled.
var ErrModuleDisabled = errors.New("module disabled")

// ErrNotReady is the generic readiness error for modules still starting.
var ErrNotReady = errors.New("not ready")

// ExitError is an error that carries the process exit code a command should
// end with (meshd validate finding errors, meshd status finding NACKs). An
// empty Err means the command already said everything it had to say.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return ""
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// ExitCode returns the process exit code.
func (e *ExitError) ExitCode() int { return e.Code }
