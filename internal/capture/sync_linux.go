package capture

import (
	"errors"
	"os"
	"syscall"
)

// datasync flushes file data. The state file never changes size after it
// is created, so fdatasync is enough and skips the inode timestamp write
// that fsync would add to every activity-log commit.
func datasync(f *os.File) error {
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
	return serr
}

// lockFile takes an exclusive advisory lock on f without waiting: two
// agents tracking one disk would overwrite each other's slots.
func lockFile(f *os.File) error {
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
	if lerr == syscall.EWOULDBLOCK {
		return errors.New("state file is in use by another process")
	}
	return lerr
}
