package journal

import (
	"os"

	"standby/internal/fsutil"
)

func fdatasync(f *os.File) error { return fsutil.Datasync(f) }
func lockFile(f *os.File) error  { return fsutil.Lock(f) }
func syncDir(dir string) error   { return fsutil.SyncDir(dir) }
