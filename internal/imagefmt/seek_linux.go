package imagefmt

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// fileExtents walks a file's data regions with SEEK_DATA/SEEK_HOLE. File
// systems without them (and block devices) answer EINVAL or report one data
// region, which degrades to "the whole file".
func fileExtents(ctx context.Context, f *os.File, size int64, fn func(off, n int64) error) error {
	fd := int(f.Fd())
	off := int64(0)
	for off < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			return fn(off, size-off)
		}
		if err != nil {
			return fmt.Errorf("imagefmt: find data in %s from %d: %w", f.Name(), off, err)
		}
		if data >= size {
			return nil
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("imagefmt: find hole in %s from %d: %w", f.Name(), data, err)
		}
		hole = min(hole, size)
		if err := fn(data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}
