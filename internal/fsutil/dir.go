package fsutil

import "os"

// SyncDir makes a directory's entries (a created, renamed or removed file)
// durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
