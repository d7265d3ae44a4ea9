//go:build !unix

package store

import (
	"errors"
	"os"
	"time"
)

var errLockTimeout = errors.New("timed out waiting for the file lock")

// lockFile is not implemented off unix: Restore refuses rather than risk
// replacing the store under a running meshd.
func lockFile(*os.File, time.Duration) error {
	return errors.New("offline restore is supported on unix systems only")
}

func matchOwner(string, string) error { return nil }
