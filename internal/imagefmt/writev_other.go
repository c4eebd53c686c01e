//go:build !linux

package imagefmt

import (
	"fmt"
	"os"
)

// writevAt writes the buffers back to back at off.
func writevAt(f *os.File, iov [][]byte, off int64) error {
	for _, b := range iov {
		if _, err := f.WriteAt(b, off); err != nil {
			return fmt.Errorf("imagefmt: write %s at %d: %w", f.Name(), off, err)
		}
		off += int64(len(b))
	}
	return nil
}
