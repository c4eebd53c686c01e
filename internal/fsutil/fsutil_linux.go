// Package fsutil holds the few file-system calls every durable store of
// standby needs: fdatasync, directory fsync and a lock that dies with its
// owner.
package fsutil

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// ErrLocked means another process holds the lock.
var ErrLocked = errors.New("held by another process")

// Datasync flushes a file's data and the metadata needed to read it back
// (its size), without the inode timestamps a full fsync would also write.
func Datasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if serr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}

// Lock takes an exclusive advisory lock without waiting; the kernel drops
// it when the process dies, so a crashed owner never blocks recovery.
func Lock(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) {
		lerr = syscall.Flock(int(fd), syscall.LOCK_EX|syscall.LOCK_NB)
	}); err != nil {
		return err
	}
	if errors.Is(lerr, syscall.EWOULDBLOCK) {
		return fmt.Errorf("%s is %w", f.Name(), ErrLocked)
	}
	return lerr
}
