//go:build !linux

package imagefmttest

// evict does nothing where there is no posix_fadvise: runs are warm.
func evict(string) error { return nil }

// settle does nothing where there is no syncfs.
func settle(string) error { return nil }
