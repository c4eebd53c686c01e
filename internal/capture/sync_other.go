//go:build !linux

package capture

import "os"

func datasync(f *os.File) error { return f.Sync() }

// lockFile is a no-op where flock is not available.
func lockFile(f *os.File) error { return nil }
