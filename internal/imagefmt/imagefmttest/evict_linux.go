package imagefmttest

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// evict drops path's pages from the page cache, so the next read comes from
// the disk, without dropping every other file's cache on a shared machine.
func evict(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("imagefmttest: evict %s: %w", path, err)
	}
	defer f.Close()
	// Dirty pages cannot be dropped: write them first.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("imagefmttest: evict %s: %w", path, err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return fmt.Errorf("imagefmttest: evict %s: %w", path, err)
	}
	return nil
}

// settle waits until the file system holding dir has written everything,
// including the discards of files just deleted (on a file system mounted
// with -o discard those can take seconds), so that no run is timed while
// the previous one's clean-up still loads the disk.
func settle(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("imagefmttest: settle %s: %w", dir, err)
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return fmt.Errorf("imagefmttest: settle %s: %w", dir, err)
	}
	return nil
}
