// Package directio appends to log files past the page cache (O_DIRECT).
//
// The undo journal and the intake log are written once and read back
// rarely. Through the page cache every 4 KiB appended takes a new cache
// page, and on the development VM (a PVM guest whose freed memory goes back
// to the host) the first touch of a page costs more than everything else a
// small write costs the master target together: a profile of 100 MB/s of
// 64 KiB writes had 30 % of the master target's CPU in copying journal
// appends into new cache pages (docs/benchmarks.md). An uncached append
// costs a copy into a buffer that is reused, and the DMA.
//
// O_DIRECT needs offsets, lengths and buffers aligned to Align, and logs
// append records of any length, so an Appender keeps the file's last
// partial block in memory and rewrites it, followed by the new bytes and
// zeros up to the next block boundary. The file is therefore up to
// Align-1 bytes longer than what was appended, with zeros at the end; the
// owner truncates them off when it seals the file, and its recovery treats
// zeros after the last record as the end of a torn append, which they are
// indistinguishable from. Rewriting the last block never changes the bytes
// before the old end, so an append torn by a crash cannot damage data that
// was already durable.
package directio

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"standby/internal/bufpool"
	"standby/internal/fsutil"
)

// Align is the alignment of every uncached write.
const Align = bufpool.Align

// ErrRefused is returned by Append when the file system refused the
// uncached write before writing anything: the caller writes those bytes
// through the page cache instead, and stops using the Appender.
var ErrRefused = errors.New("directio: uncached write refused")

// Appender appends to one file uncached. It is not safe for concurrent use.
type Appender struct {
	f   *os.File
	end int64
	// stage is the owner's aligned buffer, reused for every write and
	// across files (a fresh one costs a first touch of every page);
	// (*stage)[:end%Align] holds the file's bytes from alignDown(end) to
	// end. The owner must not use it for anything else while the
	// Appender is open.
	stage *[]byte
}

// OpenAppender opens path for uncached appends at end, the length of the
// file's data (any bytes past it are overwritten), staging writes in
// *stage, which it grows as needed (nil or unaligned: it allocates one).
// It returns nil and no error when the file system does not take
// O_DIRECT; the caller then writes through the page cache.
func OpenAppender(path string, end int64, stage *[]byte) (*Appender, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EINVAL) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("directio: opening %s uncached: %w", path, err)
	}
	if cap(*stage) < Align || !IsAligned(*stage) {
		*stage = bufpool.Aligned(256 << 10)
	}
	a := &Appender{f: f, end: end, stage: stage}
	if head := int(end % Align); head > 0 {
		// The block being appended to is read through the page cache:
		// it was written uncached (the kernel dropped any cached copy)
		// or through the cache, and a cached read sees both.
		n, err := fsutil.ReadFileAt(path, (*stage)[:head], end-int64(head))
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("directio: reading the last block of %s: %w", path, err)
		}
		if n < head {
			f.Close()
			return nil, fmt.Errorf("directio: %s holds %d bytes, less than the %d to append after", path, end-int64(head)+int64(n), end)
		}
	}
	return a, nil
}

// Size is where the next Append writes: the length of the data appended.
func (a *Appender) Size() int64 { return a.end }

// Append writes the parts one after the other at Size(), with one write
// system call. The file then holds Size() bytes of data followed by zeros
// to the next multiple of Align.
func (a *Appender) Append(parts ...[]byte) error {
	head := int(a.end % Align)
	total := head
	for _, p := range parts {
		total += len(p)
	}
	if total == head {
		return nil
	}
	n := (total + Align - 1) &^ (Align - 1)
	if cap(*a.stage) < n {
		// A quarter more, so entries growing a little at a time do not
		// reallocate at every step.
		grown := bufpool.Aligned(n + n/4)
		copy(grown, (*a.stage)[:head])
		*a.stage = grown
	}
	buf := (*a.stage)[:n]
	k := head
	for _, p := range parts {
		k += copy(buf[k:], p)
	}
	clear(buf[total:])
	at := a.end - int64(head)
	w, err := a.f.WriteAt(buf, at)
	if err != nil {
		if errors.Is(err, unix.EINVAL) && w == 0 {
			return fmt.Errorf("%w: %s at %d: %w", ErrRefused, a.f.Name(), at, err)
		}
		// The block before the old end was rewritten with the bytes it
		// held; past the old end nothing may be trusted. The caller fails
		// the log or takes the bytes back, and Size is unchanged.
		return fmt.Errorf("directio: writing %d bytes at %d of %s: %w", n, at, a.f.Name(), err)
	}
	tail := total &^ (Align - 1)
	copy(buf, buf[tail:total])
	a.end += int64(total - head)
	return nil
}

// Close closes the uncached descriptor. The zeros past Size() stay until
// the owner truncates the file.
func (a *Appender) Close() error {
	if err := a.f.Close(); err != nil {
		return fmt.Errorf("directio: closing %s: %w", a.f.Name(), err)
	}
	return nil
}

// IsAligned reports whether b starts at a multiple of Align (an empty b
// does not).
func IsAligned(b []byte) bool {
	return cap(b) > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(b)))&(Align-1) == 0
}

// OpenRead opens path for uncached reads with ReadAligned, or through the
// page cache when the file system does not take O_DIRECT (direct false).
func OpenRead(path string) (f *os.File, direct bool, err error) {
	f, err = os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EINVAL) {
		f, err = os.Open(path)
		return f, false, err
	}
	return f, err == nil, err
}

// ReadAligned fills b from off of a file opened uncached; off, len(b) and
// b's address are multiples of Align. It returns fewer bytes only at the
// end of the file, with no error: an uncached read that ends mid-block
// leaves the next offset unaligned, which os.File.ReadAt would pass on as
// EINVAL instead of io.EOF.
func ReadAligned(f *os.File, b []byte, off int64) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	n := 0
	for n < len(b) {
		var m int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			for {
				m, rerr = unix.Pread(int(fd), b[n:], off+int64(n))
				if rerr != unix.EINTR {
					return true
				}
			}
		}); err != nil {
			return n, err
		}
		if rerr != nil {
			return n, fmt.Errorf("directio: reading %s at %d: %w", f.Name(), off+int64(n), rerr)
		}
		n += m
		if m == 0 || m%Align != 0 {
			break // the end of the file
		}
	}
	return n, nil
}
