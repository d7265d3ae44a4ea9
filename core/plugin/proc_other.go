//go:build !linux

package plugin

import "os/exec"

// prepareCommand has no parent-death signal outside Linux; the SDK's parent
// watch (Serve exits when its parent process changes) covers meshd dying.
func prepareCommand(*exec.Cmd) {}
