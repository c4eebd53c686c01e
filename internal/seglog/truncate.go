package seglog

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// TruncateFrom removes every entry whose First is at or above seq and makes
// that durable. It is for a log whose tail is known to be unwanted: the
// master target's intake after a restart, where everything behind a batch
// it held only in memory must be received again, in order. An entry that
// straddles seq (First below it, Last at or above) fails with ErrOrder and
// changes nothing. LastSeq becomes the Last of the newest entry kept, or
// seq-1 when none is kept, so appends resume right at seq.
//
// No reader may be open and no append may run meanwhile: call it right
// after Open.
func (l *Log) TruncateFrom(seq uint64) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return fmt.Errorf("seglog: truncate from %d: %w", seq, ErrClosed)
	}
	if l.err != nil {
		return fmt.Errorf("seglog: truncate from %d: %w", seq, l.err)
	}
	if !l.haveLast || l.lastSeq < seq {
		return nil
	}
	// Find the cut before touching anything, so a straddling entry leaves
	// the log as it was.
	keep := len(l.segs)
	for keep > 0 && l.segs[keep-1].entries > 0 && l.segs[keep-1].first >= seq {
		keep--
	}
	var cut *segment
	var cutAt int64
	var cutLast uint64
	var cutEntries int64
	if keep > 0 && l.segs[keep-1].last >= seq {
		cut = l.segs[keep-1]
		var err error
		cutAt, cutLast, cutEntries, err = findCut(cut.path, cut.size, seq)
		if err != nil {
			return fmt.Errorf("seglog: truncate from %d: %w", seq, err)
		}
	}
	if l.wf != nil && (keep < len(l.segs) || cut != nil) {
		if err := l.wf.Close(); err != nil {
			l.log.Warn("closing active segment before truncating", "err", err)
		}
		l.wf = nil
	}
	var errs []error
	for _, s := range l.segs[keep:] {
		if err := os.Remove(s.path); err != nil {
			errs = append(errs, err)
		}
		l.bytes -= s.size
		l.entries -= s.entries
	}
	l.segs = l.segs[:keep]
	if cut != nil {
		if err := cutFile(cut.path, cutAt); err != nil {
			errs = append(errs, err)
		}
		l.bytes -= cut.size - cutAt
		l.entries -= cut.entries - cutEntries
		cut.size, cut.last, cut.entries = cutAt, cutLast, cutEntries
		if cutEntries == 0 {
			// A segment is named after its first entry: an empty one goes.
			if err := os.Remove(cut.path); err != nil {
				errs = append(errs, err)
			}
			l.segs = l.segs[:len(l.segs)-1]
		}
	}
	if err := errors.Join(errs...); err != nil {
		l.err = fmt.Errorf("truncate from %d failed, reopen the log: %w", seq, err)
		return fmt.Errorf("seglog: %w", l.err)
	}
	if n := len(l.segs); n > 0 {
		l.lastSeq = l.segs[n-1].last
		f, err := os.OpenFile(l.segs[n-1].path, os.O_RDWR, 0)
		if err != nil {
			l.err = fmt.Errorf("reopening active segment after truncating: %w", err)
			return fmt.Errorf("seglog: truncate from %d: %w", seq, l.err)
		}
		l.wf = f
	} else if seq == 0 {
		l.lastSeq, l.haveLast = 0, false
	} else {
		l.lastSeq = seq - 1
	}
	l.durableSeq = min(l.durableSeq, l.lastSeq)
	if err := syncDir(l.dir); err != nil {
		l.err = fmt.Errorf("truncate from %d: %w", seq, err)
		return fmt.Errorf("seglog: %w", l.err)
	}
	l.log.Warn("truncated log", "from_seq", seq, "last_seq", l.lastSeq)
	return nil
}

// findCut walks the record headers of a segment and returns the offset of
// the first record with First >= seq, with the Last and count of the
// records before it.
func findCut(path string, size int64, seq uint64) (int64, uint64, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	var hb [headerSize]byte
	var off int64
	var last uint64
	var n int64
	for off < size {
		if _, err := f.ReadAt(hb[:], off); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, 0, 0, fmt.Errorf("reading record header at %d of %s: %w", off, path, err)
		}
		h, err := parseHeader(hb[:])
		if err != nil {
			return 0, 0, 0, &CorruptError{Segment: path, Offset: off, Err: err}
		}
		if h.first >= seq {
			return off, last, n, nil
		}
		if h.last >= seq {
			return 0, 0, 0, fmt.Errorf("%w: entry %d..%d of %s straddles the cut", ErrOrder, h.first, h.last, path)
		}
		last = h.last
		n++
		off += headerSize + int64(h.length)
	}
	return size, last, n, nil
}

func cutFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if err == nil {
		err = fdatasync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("truncating %s at %d: %w", path, size, err)
	}
	return nil
}
