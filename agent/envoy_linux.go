package agent

import "syscall"

// childAttr puts Envoy in its own process group (a terminal's Ctrl-C goes
// to the agent, which stops Envoy gracefully) and has the kernel send it
// SIGTERM if the agent dies without stopping it.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
