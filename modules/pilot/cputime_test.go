package pilot

import (
	"syscall"
	"time"
)

// cpuTime is the process's user and system CPU time. Benchmarks report it
// per operation because the 2-core build machine is shared and wall time
// mostly measures the neighbours.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
