package capture

import (
	"os"

	"standby/internal/fsutil"
)

// The state file never changes size after it is created, so fdatasync is
// enough and skips the inode timestamp write fsync would add to every
// activity-log commit.
func datasync(f *os.File) error { return fsutil.Datasync(f) }

// Two agents tracking one disk would overwrite each other's slots.
func lockFile(f *os.File) error { return fsutil.Lock(f) }
