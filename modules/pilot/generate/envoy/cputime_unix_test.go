//go:build unix

package envoy

import (
	"syscall"
	"time"
)

// cpuTime is the process's user and system CPU time. Benchmarks report it
// per operation next to wall time, because on a shared machine wall time
// mostly measures the other tenants.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
