package fsutil

import (
	"errors"
	"io"
	"os"
)

// ReadFileAt reads up to len(b) bytes at off of the file at path. Reaching
// the end of the file is not an error: the count says how much there was,
// and the caller judges a short read.
func ReadFileAt(path string, b []byte, off int64) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := f.ReadAt(b, off)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return n, err
}
