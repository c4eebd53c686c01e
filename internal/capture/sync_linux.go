package capture

import (
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
