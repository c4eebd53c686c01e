package imagefmt

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// renameNoReplace renames old to new unless new exists (then the error
// matches fs.ErrExist), atomically: a check before a plain rename would race
// with anyone creating new meanwhile.
func renameNoReplace(old, new string) error {
	err := unix.Renameat2(unix.AT_FDCWD, old, unix.AT_FDCWD, new, unix.RENAME_NOREPLACE)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EOPNOTSUPP) {
		return &os.LinkError{Op: "rename", Old: old, New: new, Err: err}
	}
	// The file system has no RENAME_NOREPLACE: a hard link is just as
	// exclusive.
	if err := os.Link(old, new); err != nil {
		return err
	}
	return os.Remove(old)
}
