//go:build unix

package telemetry

import (
	"syscall"
	"time"
)

// cpuTime is the CPU time (user and system) the process has used. The
// benchmarks report throughput per CPU-second besides wall time: on a
// shared machine, wall time mostly measures the neighbours.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
