package blockdev

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"standby/internal/bufpool"
)

// DirectAlign is the alignment of offsets, lengths and buffers that
// ReadDirect passes to the kernel uncached.
const DirectAlign = bufpool.Align

// directFD is a second descriptor of the disk opened with O_DIRECT, for
// bulk copy reads: reading a whole disk through the page cache costs more
// CPU than the rest of the agent's copy path together (profiled in
// docs/benchmarks.md), evicts the workload's cache, and the data is read
// exactly once. The kernel writes back dirty cached pages of the range
// before an O_DIRECT read, so such a read sees every earlier buffered
// write.
type directFD struct {
	once sync.Once
	f    *os.File
	mu   sync.Mutex
	off  bool // O_DIRECT unavailable or refused: use the cached descriptor
}

// AlignedBuffer returns a zeroed buffer of n bytes whose start is aligned
// for ReadDirect.
func AlignedBuffer(n int) []byte { return bufpool.Aligned(n) }

// ReadDirect fills p from off like ReadAt, bypassing the page cache when
// the file system, the alignment of p and off, and the length allow it,
// and through the cache otherwise.
func (d *Disk) ReadDirect(p []byte, off int64) (int, error) {
	if err := d.checkRange("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	f := d.directFile()
	if f == nil || len(p) == 0 || off%DirectAlign != 0 || len(p)%DirectAlign != 0 ||
		uintptr(unsafe.Pointer(&p[0]))&(DirectAlign-1) != 0 {
		return d.ReadAt(p, off)
	}
	n, err := f.ReadAt(p, off)
	if errors.Is(err, unix.EINVAL) {
		d.directRefused()
		return d.ReadAt(p, off)
	}
	if err != nil {
		return n, fmt.Errorf("blockdev: reading %d bytes at %d from %s uncached: %w", len(p), off, d.path, err)
	}
	return n, nil
}

// WriteDirect writes all of p at off like WriteAt, bypassing the page
// cache when off and the length are aligned, and through the cache
// otherwise. p need not be aligned in memory: it is then copied into
// *scratch first, an aligned buffer the caller keeps for the next call
// (reused memory costs nothing to touch; see the master target's apply).
//
// For bulk writes that are not read back soon (a replica's initial copy):
// a page-cache write allocates and fills a page for every 4 KiB written and
// the checkpoint writes them back, which on the development VM cost more
// CPU than the rest of the master target's copy path. An O_DIRECT write
// first writes back and drops any cached pages of its range, so buffered
// reads and writes of the same disk stay coherent with it.
func (d *Disk) WriteDirect(p []byte, off int64, scratch *[]byte) (int, error) {
	if err := d.checkWritable("write"); err != nil {
		return 0, err
	}
	if err := d.checkRange("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	f := d.directFile()
	if f == nil || len(p) == 0 || off%DirectAlign != 0 || len(p)%DirectAlign != 0 {
		return d.WriteAt(p, off)
	}
	buf := p
	if uintptr(unsafe.Pointer(&p[0]))&(DirectAlign-1) != 0 {
		if cap(*scratch) < len(p) {
			*scratch = AlignedBuffer(len(p))
		}
		buf = (*scratch)[:len(p)]
		copy(buf, p)
	}
	n, err := f.WriteAt(buf, off)
	if errors.Is(err, unix.EINVAL) && n == 0 {
		d.directRefused()
		return d.WriteAt(p, off)
	}
	if err != nil {
		return n, fmt.Errorf("blockdev: writing %d bytes at %d to %s uncached: %w", len(p), off, d.path, err)
	}
	return n, nil
}

// directRefused turns uncached I/O off for good: some file systems accept
// O_DIRECT at open and refuse the I/O.
func (d *Disk) directRefused() {
	d.direct.mu.Lock()
	d.direct.off = true
	d.direct.mu.Unlock()
}

func (d *Disk) directFile() *os.File {
	d.direct.once.Do(func() {
		mode := os.O_RDONLY
		if !d.readOnly {
			mode = os.O_RDWR
		}
		f, err := os.OpenFile(d.path, mode|unix.O_DIRECT|unix.O_CLOEXEC, 0)
		d.direct.mu.Lock()
		defer d.direct.mu.Unlock()
		switch {
		case err != nil:
			d.direct.off = true
		case d.direct.off: // closed meanwhile
			f.Close()
		default:
			d.direct.f = f
		}
	})
	d.direct.mu.Lock()
	defer d.direct.mu.Unlock()
	if d.direct.off {
		return nil
	}
	return d.direct.f
}

func (d *Disk) closeDirect() {
	d.direct.mu.Lock()
	defer d.direct.mu.Unlock()
	if d.direct.f != nil {
		d.direct.f.Close()
		d.direct.f = nil
	}
	d.direct.off = true
}

// Prefetch asks the kernel to start reading [off, off+n) into the page
// cache without waiting for it, so that a series of small reads that are
// about to follow one another (before-images of scattered writes) overlap
// on the disk instead of waiting one by one. It is only advice: errors are
// ignored.
func (d *Disk) Prefetch(off, n int64) {
	if n <= 0 {
		return
	}
	_ = d.control(func(fd int) error {
		return unix.Fadvise(fd, off, n, unix.FADV_WILLNEED)
	})
}
