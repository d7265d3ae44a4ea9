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

// matchOwner gives path the owner and group of dir when running as root,
// so a restore run with sudo leaves a meshd.db the meshd user (the owner
// of its data dir) can open. As any other user the file is already the
// caller's, which is the user that can use the data dir.
func matchOwner(path, dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	return os.Chown(path, int(st.Uid), int(st.Gid))
}
