package imagefmt

import (
	"context"
	"fmt"
	"io"
	"os"
)

// Source is what is exported: a disk of Size bytes.
//
// Extents reports, in ascending order and without overlaps, the ranges that
// may hold data; everything else reads as zeros and is never read. A
// recovery point's view can answer cheaply; a Source with no better idea
// reports the whole disk as one extent, and zero blocks are still found by
// looking at the data. Extents stops with fn's error when fn fails.
//
// ReadAt follows io.ReaderAt. Write calls it from inside fn, so that a
// disk's extents are streamed rather than collected first: Extents must not
// hold, while it calls fn, a lock that ReadAt takes. Write reads from one
// goroutine, only ranges inside reported extents, in ascending order.
type Source interface {
	Size() int64
	ReadAt(p []byte, off int64) (int, error)
	Extents(ctx context.Context, fn func(off, n int64) error) error
}

// ReaderSource exports any io.ReaderAt of a known size, reporting the whole
// of it as one extent.
type ReaderSource struct {
	R io.ReaderAt
	N int64
}

// Size returns N.
func (s ReaderSource) Size() int64 { return s.N }

// ReadAt reads from R.
func (s ReaderSource) ReadAt(p []byte, off int64) (int, error) { return s.R.ReadAt(p, off) }

// Extents reports [0, N) as one extent.
func (s ReaderSource) Extents(ctx context.Context, fn func(off, n int64) error) error {
	if s.N == 0 {
		return nil
	}
	return fn(0, s.N)
}

// FileSource exports a raw image file or block device. Its extents come from
// the file system's SEEK_DATA/SEEK_HOLE where it has them, so holes in a
// sparse file are skipped without being read.
type FileSource struct {
	f    *os.File
	size int64
}

// OpenFileSource opens path read-only as a Source. Close it when done.
func OpenFileSource(path string) (*FileSource, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("imagefmt: open source: %w", err)
	}
	// Seek to the end rather than Stat: it also gives the size of a block
	// device, where Stat reports 0.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("imagefmt: size of source %s: %w", path, err)
	}
	return &FileSource{f: f, size: size}, nil
}

// Size returns the size of the file or device when it was opened.
func (s *FileSource) Size() int64 { return s.size }

// ReadAt reads from the file.
func (s *FileSource) ReadAt(p []byte, off int64) (int, error) { return s.f.ReadAt(p, off) }

// Extents reports the file's data regions, or the whole file where the file
// system cannot tell.
func (s *FileSource) Extents(ctx context.Context, fn func(off, n int64) error) error {
	return fileExtents(ctx, s.f, s.size, fn)
}

// Close closes the file.
func (s *FileSource) Close() error { return s.f.Close() }
