// Package directiotest gives tests a directory on a file system that
// refuses O_DIRECT, to exercise the page-cache fallback of uncached logs.
package directiotest

import (
	"os"
	"os/exec"
	"testing"
)

// RefusingDir mounts a ramfs (which refuses O_DIRECT at open) on a new
// temporary directory for the test and unmounts it at cleanup. Mounting
// needs root, like the project's other mount tests: the test fails
// without it rather than skip. Cleanups the test registers later (closing
// its files) run before the unmount.
func RefusingDir(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root to mount a ramfs (a file system that refuses O_DIRECT)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "ramfs", "ramfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mounting a ramfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}
