//go:build !unix

package envoy

import "time"

func cpuTime() time.Duration { return 0 }
