//go:build unix

package store

import (
	"errors"
	"os"
	"syscall"
	"time"
)

var errLockTimeout = errors.New("timed out waiting for the file lock")

// lockFile takes the exclusive flock bbolt takes on the store file, polling
// until timeout; it is released when f is closed.
func lockFile(f *os.File, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		if time.Now().After(deadline) {
			return errLockTimeout
		}
		time.Sleep(50 * time.Millisecond)
	}
}
