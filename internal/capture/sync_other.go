//go:build !linux

package capture

import "os"

func datasync(f *os.File) error { return f.Sync() }
