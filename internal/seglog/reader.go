package seglog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"standby/internal/bufpool"
	"standby/internal/directio"
)

// readAhead is how much a reader asks for at once when entries are small, so
// that a reader following a writer of small entries does not make a system
// call per entry.
const readAhead = 1 << 20

// Reader reads entries in order, waiting for new ones at the end of the log.
// A Reader is not safe for concurrent use; to stop a blocked Next, cancel
// its context.
type Reader struct {
	l    *Log
	from uint64

	started bool
	base    uint64   // segment being read
	seg     *segment // the same, counted in its readers; nil if none
	path    string
	f       *os.File
	direct  bool // f was opened uncached (Options.Direct): fill reads whole blocks

	// buf[pos:n] holds unread bytes of the segment starting at file offset
	// bufOff+pos.
	buf    []byte
	bufOff int64
	pos, n int
	closed bool
}

// NewReader returns a reader of the entries with Last >= from, including
// entries appended after it was made. Trimming is not held back by readers:
// a reader whose segment is trimmed under it returns what it had already
// read of that segment, then skips to the oldest segment still held.
func (l *Log) NewReader(from uint64) *Reader {
	return &Reader{l: l, from: from}
}

// Next returns the next entry, waiting until one is appended, ctx is done or
// the log is closed. The returned Data aliases the reader's buffer: it is
// valid only until the next call to Next or Close; copy it to keep it. Every
// entry is checked against its checksum; damage gives a *CorruptError.
func (r *Reader) Next(ctx context.Context) (Entry, error) {
	for {
		if r.closed {
			return Entry{}, fmt.Errorf("seglog: read: %w", ErrClosed)
		}
		want := headerSize
		if r.pos < r.n {
			e, n, err := decodeRecord(r.buf[r.pos:r.n])
			if err == nil {
				r.pos += n
				if e.Last < r.from {
					continue
				}
				return e, nil
			}
			if !errors.Is(err, errShortRecord) {
				return Entry{}, &CorruptError{Segment: r.path, Offset: r.cursor(), Err: err}
			}
			if r.n-r.pos >= headerSize {
				h, _ := parseHeader(r.buf[r.pos:r.n]) // decodeRecord already checked it
				want = headerSize + int(h.length)
			}
		}
		limit, err := r.position(ctx)
		if err != nil {
			return Entry{}, err
		}
		if limit < 0 {
			continue // moved to another segment
		}
		if err := r.fill(limit, want); err != nil {
			return Entry{}, err
		}
	}
}

func (r *Reader) cursor() int64 { return r.bufOff + int64(r.pos) }

// position finds out how far the current segment may be read, moving to the
// next segment when this one is finished or trimmed, and waiting when the
// reader is at the end of the log. It returns the readable size of the
// current segment, or -1 after moving to another segment.
func (r *Reader) position(ctx context.Context) (int64, error) {
	l := r.l
	l.mu.Lock()
	for {
		if l.closed {
			l.mu.Unlock()
			return 0, fmt.Errorf("seglog: read: %w", ErrClosed)
		}
		var next *segment
		if !r.started {
			if len(l.segs) > 0 {
				// Sequence numbers grow across segments, so entries with
				// Last >= from start in the last segment whose base <= from.
				i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].base > r.from })
				next = l.segs[max(i-1, 0)]
			}
		} else {
			i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].base >= r.base })
			switch {
			case i < len(l.segs) && l.segs[i].base == r.base:
				if size := l.segs[i].size; r.cursor() < size {
					l.mu.Unlock()
					return size, nil
				}
				if i+1 < len(l.segs) {
					next = l.segs[i+1] // this one is sealed and read to its end
				}
			case i < len(l.segs):
				next = l.segs[i] // ours was trimmed
			}
		}
		if next != nil {
			r.pinLocked(next)
			path := next.path
			l.mu.Unlock()
			return -1, r.open(next.base, path)
		}
		wait := l.dataChLocked()
		l.mu.Unlock()
		select {
		case <-wait:
		case <-l.closedCh:
		case <-ctx.Done():
			return 0, fmt.Errorf("seglog: read: %w", ctx.Err())
		}
		l.mu.Lock()
	}
}

// pinLocked moves the reader's count from its segment to s (nil: none).
// Log.mu held.
func (r *Reader) pinLocked(s *segment) {
	if r.seg != nil {
		r.seg.readers--
	}
	r.seg = s
	if s != nil {
		s.readers++
	}
}

// open switches the reader to the segment named base, at path.
func (r *Reader) open(base uint64, path string) error {
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
	r.started, r.base, r.path = true, base, path
	r.bufOff, r.pos, r.n = 0, 0, 0
	var f *os.File
	var err error
	r.direct = false
	if r.l.opts.Direct {
		f, r.direct, err = directio.OpenRead(path)
	} else {
		f, err = os.Open(path)
	}
	if errors.Is(err, os.ErrNotExist) {
		// Trimmed since we looked; position will skip past it. Leaving
		// r.f nil is fine: a trimmed segment is never read.
		return nil
	}
	if err != nil {
		return fmt.Errorf("seglog: read: opening segment: %w", err)
	}
	r.f = f
	return nil
}

// fill reads more of the current segment, up to limit, so that at least want
// bytes are buffered at the cursor.
func (r *Reader) fill(limit int64, want int) error {
	cur := r.cursor()
	if int64(want) > limit-cur {
		// Committed sizes always end on a record boundary.
		return &CorruptError{Segment: r.path, Offset: cur,
			Err: fmt.Errorf("%w: record of %d bytes runs past the %d bytes written", ErrCorrupt, want, limit-cur)}
	}
	if r.f == nil {
		// The file vanished before we opened it: it was trimmed, so
		// position will move on. Pretend we are at its end.
		r.bufOff, r.pos, r.n = limit, 0, 0
		return nil
	}
	size := int(min(limit-cur, int64(max(want, readAhead))))
	if r.direct {
		return r.fillDirect(cur, size, limit)
	}
	kept := r.n - r.pos
	if cap(r.buf) < size {
		nb := make([]byte, size)
		copy(nb, r.buf[r.pos:r.n])
		r.buf = nb
	} else if r.pos > 0 {
		copy(r.buf, r.buf[r.pos:r.n])
	}
	r.buf = r.buf[:cap(r.buf)]
	if _, err := r.f.ReadAt(r.buf[kept:size], cur+int64(kept)); err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("%w: file shorter than the %d bytes written", ErrCorrupt, limit)
			return &CorruptError{Segment: r.path, Offset: cur, Err: err}
		}
		return fmt.Errorf("seglog: read %s at %d: %w", r.path, cur, err)
	}
	r.bufOff, r.pos, r.n = cur, 0, size
	return nil
}

// fillDirect is fill for a segment opened uncached: it reads the whole
// blocks holding [cur, cur+size) into an aligned buffer, reading again
// whatever of that was already buffered (the same bytes).
// Reading past limit may catch bytes an append is writing; only bytes
// below limit are ever parsed.
func (r *Reader) fillDirect(cur int64, size int, limit int64) error {
	a0 := cur &^ (directio.Align - 1)
	skip := int(cur - a0)
	n := (skip + size + directio.Align - 1) &^ (directio.Align - 1)
	if cap(r.buf) < n || !directio.IsAligned(r.buf) {
		r.buf = bufpool.Aligned(max(n, readAhead+directio.Align))
	}
	r.buf = r.buf[:cap(r.buf)]
	got, err := directio.ReadAligned(r.f, r.buf[:n], a0)
	if err != nil {
		return fmt.Errorf("seglog: read %s at %d: %w", r.path, cur, err)
	}
	if got < skip+size {
		err = fmt.Errorf("%w: file shorter than the %d bytes written", ErrCorrupt, limit)
		return &CorruptError{Segment: r.path, Offset: cur, Err: err}
	}
	r.bufOff, r.pos, r.n = a0, skip, skip+size
	return nil
}

// Close releases the reader's file handle and buffer.
func (r *Reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.buf = nil
	r.l.mu.Lock()
	r.pinLocked(nil)
	r.l.mu.Unlock()
	if r.f != nil {
		err := r.f.Close()
		r.f = nil
		if err != nil {
			return fmt.Errorf("seglog: close reader: %w", err)
		}
	}
	return nil
}
