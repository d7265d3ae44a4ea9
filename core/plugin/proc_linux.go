package plugin

import (
	"os/exec"
	"syscall"
)

// prepareCommand makes the kernel kill the plugin when meshd dies, however
// it dies (SIGKILL, OOM): no plugin process outlives meshd. Pdeathsig fires
// when the thread that started the child exits; Go only ends threads whose
// goroutine exits while locked to them, which meshd never does on this
// path. The SDK's parent watch is the second line of defence.
func prepareCommand(cmd *exec.Cmd) {
	if noPdeathsig {
		return
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
