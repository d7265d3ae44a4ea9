//go:build !linux

package agent

import "syscall"

// childAttr puts Envoy in its own process group, so a terminal's Ctrl-C
// goes to the agent, which stops Envoy gracefully.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
