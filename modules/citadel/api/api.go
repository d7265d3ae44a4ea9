// Package api is what citadel offers other modules: the events it
// publishes and the interface through which they read the trust bundle.
// It holds types only; the host hands out the implementation (the citadel
// module itself) through core.Dep.
package api

import "github.com/meshd/meshd/core/bus"

// Topics citadel publishes.
const (
	// TopicBundleChanged: the set of trusted roots changed (a rotation
	// added or retired a root, or plugged-in CA files changed).
	TopicBundleChanged bus.Topic = "citadel.bundle.changed"
	// TopicRootsRotated: a rotation finished; the new root signs and the
	// old one is no longer trusted.
	TopicRootsRotated bus.Topic = "citadel.roots.rotated"
)

// BundleChanged is published on TopicBundleChanged. Read the bundle itself
// through TrustBundle.
type BundleChanged struct {
	Version uint64
}

// Topic implements bus.Event.
func (BundleChanged) Topic() bus.Topic { return TopicBundleChanged }

// RootsRotated is published on TopicRootsRotated.
type RootsRotated struct {
	Old, New      string // root IDs (first 8 bytes of the SHA-256 of the certificate, hex)
	BundleVersion uint64
}

// Topic implements bus.Event.
func (RootsRotated) Topic() bus.Topic { return TopicRootsRotated }

// TrustBundle gives the current trust bundle: every trusted root, PEM, and
// its version, which increases with each change.
type TrustBundle interface {
	TrustBundle() (pem []byte, version uint64)
}
