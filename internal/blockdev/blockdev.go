// Package blockdev opens the real storage under a protected export: a raw
// image file or a block device (a loop device counts). It offers positional
// I/O plus the space-management calls (punch hole, zero range, discard) that
// NBD TRIM and WRITE_ZEROES map onto, and a hole-aware extent walk so copies
// can skip unallocated ranges.
package blockdev

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// zeroChunk bounds the buffer used when a range has to be zeroed by plain
// writes: large enough to amortise syscalls, small enough to not matter.
const zeroChunk = 1 << 20

// ErrOutOfRange is returned (wrapped) for I/O that does not lie within the
// disk. A disk never grows through WriteAt: a protected volume has a fixed
// size, so writing past it is a caller bug, not a resize.
var ErrOutOfRange = errors.New("blockdev: range outside the disk")

// Disk is a raw image file or a block device, opened for positional I/O.
// All methods are safe for concurrent use.
type Disk struct {
	f        *os.File
	rc       syscall.RawConn
	path     string
	size     int64
	blockDev bool
	readOnly bool
	// sector is the logical block size of a block device; discard and
	// zero-out ioctls reject ranges not aligned to it.
	sector int64
	direct directFD
}

// Open opens path (a regular file or block device). The size of a file comes
// from stat, that of a block device from the BLKGETSIZE64 ioctl.
func Open(path string, readOnly bool) (*Disk, error) {
	flags := os.O_RDWR
	if readOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("blockdev: opening %s: %w", path, err)
	}
	d, err := newDisk(f, path, readOnly)
	if err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

func newDisk(f *os.File, path string, readOnly bool) (*Disk, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("blockdev: stat %s: %w", path, err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("blockdev: raw conn for %s: %w", path, err)
	}
	d := &Disk{f: f, rc: rc, path: path, readOnly: readOnly, sector: 512}
	mode := st.Mode()
	switch {
	case mode.IsRegular():
		d.size = st.Size()
	case mode&os.ModeDevice != 0 && mode&os.ModeCharDevice == 0:
		d.blockDev = true
		var size uint64
		var ssz int
		var ierr error
		cerr := rc.Control(func(fd uintptr) {
			size, ierr = unix.IoctlGetUint64(int(fd), unix.BLKGETSIZE64)
			if ierr != nil {
				return
			}
			ssz, ierr = unix.IoctlGetInt(int(fd), unix.BLKSSZGET)
		})
		if err := errors.Join(cerr, ierr); err != nil {
			return nil, fmt.Errorf("blockdev: querying size of block device %s: %w", path, err)
		}
		d.size = int64(size)
		if ssz > 0 {
			d.sector = int64(ssz)
		}
	default:
		return nil, fmt.Errorf("blockdev: %s is neither a regular file nor a block device (mode %v)", path, mode)
	}
	return d, nil
}

// Size is the usable size in bytes, fixed at Open.
func (d *Disk) Size() int64 { return d.size }

// Path is the path the disk was opened with.
func (d *Disk) Path() string { return d.path }

// IsBlockDevice reports whether the disk is a block device rather than a file.
func (d *Disk) IsBlockDevice() bool { return d.blockDev }

// ReadOnly reports whether the disk was opened read-only.
func (d *Disk) ReadOnly() bool { return d.readOnly }

func (d *Disk) checkRange(op string, off, n int64) error {
	if off < 0 || n < 0 || off > d.size || n > d.size-off {
		return fmt.Errorf("blockdev: %s %d bytes at %d on %s (size %d): %w", op, n, off, d.path, d.size, ErrOutOfRange)
	}
	return nil
}

func (d *Disk) checkWritable(op string) error {
	if d.readOnly {
		return fmt.Errorf("blockdev: %s on read-only %s: %w", op, d.path, syscall.EROFS)
	}
	return nil
}

// ReadAt fills p completely from off. A read reaching past the end of the
// disk is an error rather than a short read: callers serve exports of a
// fixed size and must never invent zeros.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if err := d.checkRange("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := d.f.ReadAt(p, off)
	if err != nil {
		if errors.Is(err, io.EOF) {
			// The file shrank under us (someone truncated the image).
			err = io.ErrUnexpectedEOF
		}
		return n, fmt.Errorf("blockdev: reading %d bytes at %d from %s: %w", len(p), off, d.path, err)
	}
	return n, nil
}

// WriteAt writes all of p at off; it never extends the disk.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	if err := d.checkWritable("write"); err != nil {
		return 0, err
	}
	if err := d.checkRange("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := d.f.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("blockdev: writing %d bytes at %d to %s: %w", len(p), off, d.path, err)
	}
	return n, nil
}

// control runs fn with the descriptor held, so Close cannot recycle it
// underneath a syscall.
func (d *Disk) control(fn func(fd int) error) error {
	var ferr error
	if err := d.rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// Sync makes completed writes durable. fdatasync is enough: the size of the
// disk never changes, so no metadata beyond what it covers matters.
func (d *Disk) Sync() error {
	err := d.control(func(fd int) error {
		for {
			err := unix.Fdatasync(fd)
			if err != unix.EINTR {
				return err
			}
		}
	})
	if err != nil {
		return fmt.Errorf("blockdev: fdatasync %s: %w", d.path, err)
	}
	return nil
}

// PunchHole deallocates [off, off+n). Files get
// fallocate(PUNCH_HOLE|KEEP_SIZE) and read back as zeros. Block devices get
// BLKDISCARD, after which the contents are whatever the device returns (loop
// devices return zeros; hardware need not): use ZeroRange when zeros matter.
// When neither is supported, zeros are written so the result is at least
// deterministic.
func (d *Disk) PunchHole(off, n int64) error {
	if err := d.checkWritable("punch hole"); err != nil {
		return err
	}
	if err := d.checkRange("punch hole", off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	var err error
	if d.blockDev {
		err = d.blockRangeIoctl(unix.BLKDISCARD, off, n)
	} else {
		err = d.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	}
	if err == nil {
		return nil
	}
	if !unsupported(err) {
		return fmt.Errorf("blockdev: punching hole of %d bytes at %d in %s: %w", n, off, d.path, err)
	}
	return d.writeZeros(off, n)
}

// ZeroRange makes [off, off+n) read as zeros. With mayUnmap a file gets a
// hole; without it the blocks stay allocated (FALLOC_FL_ZERO_RANGE) so later
// writes there cannot fail with ENOSPC. Block devices use BLKZEROOUT, which
// the kernel implements without unmapping. The fallback is writing zeros.
func (d *Disk) ZeroRange(off, n int64, mayUnmap bool) error {
	if err := d.checkWritable("zero range"); err != nil {
		return err
	}
	if err := d.checkRange("zero range", off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	var err error
	switch {
	case d.blockDev:
		err = d.blockRangeIoctl(unix.BLKZEROOUT, off, n)
	case mayUnmap:
		err = d.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	default:
		err = d.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	}
	if err == nil {
		return nil
	}
	if !unsupported(err) {
		return fmt.Errorf("blockdev: zeroing %d bytes at %d in %s: %w", n, off, d.path, err)
	}
	return d.writeZeros(off, n)
}

func (d *Disk) fallocate(mode uint32, off, n int64) error {
	return d.control(func(fd int) error {
		for {
			err := unix.Fallocate(fd, mode, off, n)
			if err != unix.EINTR {
				return err
			}
		}
	})
}

// blockRangeIoctl issues BLKDISCARD or BLKZEROOUT on the sector-aligned part
// of the range and writes zeros over the unaligned head and tail, which the
// ioctls would reject with EINVAL.
func (d *Disk) blockRangeIoctl(req uintptr, off, n int64) error {
	end := off + n
	aStart := (off + d.sector - 1) / d.sector * d.sector
	aEnd := end / d.sector * d.sector
	if aStart >= aEnd {
		return d.writeZeros(off, n)
	}
	if aStart > off {
		if err := d.writeZeros(off, aStart-off); err != nil {
			return err
		}
	}
	rng := [2]uint64{uint64(aStart), uint64(aEnd - aStart)}
	err := d.control(func(fd int) error {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&rng)))
		if e != 0 {
			return e
		}
		return nil
	})
	if err != nil {
		if !unsupported(err) {
			return err
		}
		if err := d.writeZeros(aStart, aEnd-aStart); err != nil {
			return err
		}
	}
	if end > aEnd {
		return d.writeZeros(aEnd, end-aEnd)
	}
	return nil
}

// unsupported reports errors meaning "this file system or device cannot do
// that operation", as opposed to real I/O failures.
func unsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) ||
		errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.ENOTTY) ||
		errors.Is(err, unix.EINVAL)
}

func (d *Disk) writeZeros(off, n int64) error {
	buf := make([]byte, min(n, zeroChunk))
	for n > 0 {
		chunk := min(n, int64(len(buf)))
		if _, err := d.f.WriteAt(buf[:chunk], off); err != nil {
			return fmt.Errorf("blockdev: writing zeros at %d to %s: %w", off, d.path, err)
		}
		off += chunk
		n -= chunk
	}
	return nil
}

// Extents walks [off, off+n) calling fn for consecutive runs that are data
// or holes, so copies can skip holes without reading them. Files use
// SEEK_DATA/SEEK_HOLE; block devices, and file systems without those, report
// everything as data (always a safe answer).
func (d *Disk) Extents(off, n int64, fn func(off, n int64, data bool) error) error {
	if err := d.checkRange("extents", off, n); err != nil {
		return err
	}
	end := off + n
	if d.blockDev {
		if n == 0 {
			return nil
		}
		return fn(off, n, true)
	}
	pos := off
	for pos < end {
		var data, hole int64
		err := d.control(func(fd int) error {
			var err error
			data, err = unix.Seek(fd, pos, unix.SEEK_DATA)
			if err != nil {
				return err
			}
			hole, err = unix.Seek(fd, data, unix.SEEK_HOLE)
			return err
		})
		switch {
		case errors.Is(err, unix.ENXIO):
			// No data at or after pos: the rest is a hole.
			return fn(pos, end-pos, false)
		case err != nil && unsupported(err):
			return fn(pos, end-pos, true)
		case err != nil:
			return fmt.Errorf("blockdev: seeking data/hole at %d in %s: %w", pos, d.path, err)
		}
		if data > pos {
			if err := fn(pos, min(data, end)-pos, false); err != nil {
				return err
			}
		}
		if data >= end {
			return nil
		}
		stop := min(hole, end)
		if err := fn(data, stop-data, true); err != nil {
			return err
		}
		pos = stop
	}
	return nil
}

// Close releases the descriptor. It does not sync; call Sync first if the
// caller's contract requires durability.
func (d *Disk) Close() error {
	d.closeDirect()
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("blockdev: closing %s: %w", d.path, err)
	}
	return nil
}

// Create makes a sparse file of the given size. An existing file of exactly
// that size is accepted (so restarts are idempotent); any other existing
// file is an error, because silently resizing a disk image destroys data or
// misrepresents it.
func Create(path string, size int64) error {
	if size < 0 {
		return fmt.Errorf("blockdev: creating %s: negative size %d", path, size)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	if errors.Is(err, os.ErrExist) {
		st, serr := os.Stat(path)
		if serr != nil {
			return fmt.Errorf("blockdev: stat existing %s: %w", path, serr)
		}
		if !st.Mode().IsRegular() || st.Size() != size {
			return fmt.Errorf("blockdev: %s exists with size %d, want %d: %w", path, st.Size(), size, os.ErrExist)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("blockdev: creating %s: %w", path, err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("blockdev: sizing %s to %d: %w", path, size, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("blockdev: closing new %s: %w", path, err)
	}
	return nil
}

// IsZero reports whether p is all zero bytes. Comparing p against itself
// shifted by one byte lets the runtime's vectorised memequal do the work
// without a shared zero buffer: if p[0] is zero and every byte equals its
// predecessor, all of them are zero.
func IsZero(p []byte) bool {
	if len(p) == 0 {
		return true
	}
	if p[0] != 0 {
		return false
	}
	// A cheap early exit for the common non-zero case before the full scan.
	if len(p) >= 16 && (p[len(p)-1] != 0 || p[len(p)/2] != 0) {
		return false
	}
	return bytes.Equal(p[1:], p[:len(p)-1])
}
