package imagefmt

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// iovMax is Linux's IOV_MAX.
const iovMax = 1024

// writevAt writes the buffers back to back at off with as few system calls
// as possible: qcow2 data clusters are appended in runs that are scattered
// over the chunk buffer (zero clusters are skipped) and interleaved with L2
// tables. iov's elements are consumed.
func writevAt(f *os.File, iov [][]byte, off int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("imagefmt: write %s: %w", f.Name(), err)
	}
	for len(iov) > 0 {
		batch := iov[:min(len(iov), iovMax)]
		var n int
		var werr error
		if err := rc.Write(func(fd uintptr) bool {
			n, werr = unix.Pwritev(int(fd), batch, off)
			return true
		}); err != nil {
			return fmt.Errorf("imagefmt: write %s at %d: %w", f.Name(), off, err)
		}
		if errors.Is(werr, unix.EINTR) {
			continue
		}
		if werr != nil {
			return fmt.Errorf("imagefmt: write %s at %d: %w", f.Name(), off, werr)
		}
		if n == 0 {
			return fmt.Errorf("imagefmt: write %s at %d: %w", f.Name(), off, io.ErrShortWrite)
		}
		off += int64(n)
		for n > 0 {
			if n >= len(iov[0]) {
				n -= len(iov[0])
				iov = iov[1:]
			} else {
				iov[0] = iov[0][n:]
				n = 0
			}
		}
	}
	return nil
}
