package api

import "github.com/meshd/meshd/core/bus"

// Accepted is what the galley module offers other modules: the config set it
// accepted last. Pilot gets it with core.Dep[api.Accepted](ctx, "galley") and
// re-reads it whenever a ConfigAccepted event arrives (or a bus.Resync).
type Accepted interface {
	// Accepted returns the current accepted snapshot; never nil once the
	// galley module has provisioned (it may be empty).
	Accepted() *Snapshot
}

// Topics galley publishes.
const (
	TopicConfigAccepted bus.Topic = "galley.config.accepted"
	TopicConfigRejected bus.Topic = "galley.config.rejected"
)

// ConfigAccepted announces a new accepted revision. It carries keys, not
// objects: read the snapshot from Accepted.
type ConfigAccepted struct {
	Revision uint64
	// Changed lists the keys added, updated or removed since the previous
	// revision; nil means "anything may have changed".
	Changed []Key
}

// Topic implements bus.Event.
func (ConfigAccepted) Topic() bus.Topic { return TopicConfigAccepted }

// ConfigRejected announces that a change was refused; the previous accepted
// revision keeps serving.
type ConfigRejected struct {
	// Source is the file (or other source) whose change was refused.
	Source string
	// Errors is how many error findings the change had.
	Errors int
}

// Topic implements bus.Event.
func (ConfigRejected) Topic() bus.Topic { return TopicConfigRejected }
