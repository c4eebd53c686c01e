//go:build !linux

package fsutil

import (
	"errors"
	"os"
)

// ErrLocked means another process holds the lock.
var ErrLocked = errors.New("held by another process")

// Datasync falls back to a full fsync.
func Datasync(f *os.File) error { return f.Sync() }

// Lock is advisory only on Linux; elsewhere it does nothing.
func Lock(*os.File) error { return nil }
