package seglog

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// load rebuilds the in-memory state from the segment files and repairs a
// torn tail. Called by Open only.
func (l *Log) load() error {
	start := time.Now()
	bases, spares, err := listSegments(l.dir, l.log)
	if err != nil {
		return err
	}
	for i, base := range spares {
		path := filepath.Join(l.dir, spareName(base))
		if i < maxSpares {
			l.spares = append(l.spares, &segment{base: base, path: path})
		} else if err := os.Remove(path); err != nil {
			return fmt.Errorf("removing extra spare segment: %w", err)
		}
	}
	var (
		prevLast uint64
		havePrev bool
	)
	for i, base := range bases {
		last := i == len(bases)-1
		path := filepath.Join(l.dir, segmentName(base))
		verify := last || !l.opts.TrustSealed
		s, torn, err := scanSegment(path, base, prevLast, havePrev, verify, last)
		if err != nil {
			return err
		}
		if torn != nil {
			if err := l.truncateTail(s, torn); err != nil {
				return err
			}
			if s.size == 0 {
				continue
			}
		}
		l.segs = append(l.segs, s)
		l.bytes += s.size
		l.entries += s.entries
		prevLast, havePrev = s.last, true
	}
	l.lastSeq, l.haveLast = prevLast, havePrev
	l.durableSeq = prevLast
	if len(l.segs) > 0 {
		act := l.segs[len(l.segs)-1]
		f, err := os.OpenFile(act.path, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("opening active segment: %w", err)
		}
		l.wf = f
		// What a killed process left in the page cache is readable but not
		// necessarily on disk; DurableSeq must not claim it until it is.
		if err := fdatasync(f); err != nil {
			return fmt.Errorf("syncing active segment: %w", err)
		}
	}
	if err := syncDir(l.dir); err != nil {
		return err
	}
	l.log.Debug("opened", "segments", len(l.segs), "entries", l.entries, "bytes", l.bytes,
		"first_seq", l.firstSeqLocked(), "last_seq", l.lastSeq, "took", time.Since(start))
	return nil
}

func (l *Log) firstSeqLocked() uint64 {
	if len(l.segs) == 0 {
		return 0
	}
	return l.segs[0].first
}

// tornTail describes where the last segment stops holding whole records.
type tornTail struct {
	offset int64
	size   int64 // file size before truncation
	reason error
	stale  bool // what follows is an older segment's bytes in a reused file, not a torn write
}

// truncateTail cuts the last segment back to its last whole record, or
// removes it when not even its first record is whole.
func (l *Log) truncateTail(s *segment, t *tornTail) error {
	if t.stale {
		l.log.Info("cutting the old bytes of a reused segment after its last record",
			"segment", s.path, "offset", t.offset, "dropped_bytes", t.size-t.offset)
	} else {
		l.log.Warn("truncating torn tail of last segment",
			"segment", s.path, "offset", t.offset, "dropped_bytes", t.size-t.offset, "reason", t.reason.Error())
	}
	if t.offset == 0 {
		if err := os.Remove(s.path); err != nil {
			return fmt.Errorf("removing segment %s without a whole record: %w", s.path, err)
		}
		return nil
	}
	f, err := os.OpenFile(s.path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("truncating %s: %w", s.path, err)
	}
	defer f.Close()
	if err := f.Truncate(t.offset); err != nil {
		return fmt.Errorf("truncating %s at %d: %w", s.path, t.offset, err)
	}
	if err := fdatasync(f); err != nil {
		return fmt.Errorf("truncating %s: %w", s.path, err)
	}
	return nil
}

// listSegments returns the bases of the segment files and of the spares in
// dir, ascending.
func listSegments(dir string, log *slog.Logger) (bases, spares []uint64, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("listing segments: %w", err)
	}
	for _, de := range ents {
		name := de.Name()
		if name == "LOCK" {
			continue
		}
		if base, ok := parseName(name, ".spare"); ok && de.Type().IsRegular() {
			spares = append(spares, base)
			continue
		}
		base, ok := parseSegmentName(name)
		if !ok {
			log.Warn("ignoring unexpected file in log directory", "file", filepath.Join(dir, name))
			continue
		}
		if !de.Type().IsRegular() {
			return nil, nil, fmt.Errorf("segment %s is not a regular file", filepath.Join(dir, name))
		}
		bases = append(bases, base)
	}
	slices.Sort(bases)
	slices.Sort(spares)
	return bases, spares, nil
}

func parseSegmentName(name string) (uint64, bool) { return parseName(name, ".seg") }

func parseName(name, suffix string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, suffix)
	if !ok || len(digits) != 20 {
		return 0, false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	base, err := strconv.ParseUint(digits, 10, 64)
	return base, err == nil
}

// scanSegment walks the records of one segment file, checking structure,
// sequence order and (with verify) every checksum. For the last segment a
// damaged or incomplete record is reported as a torn tail when nothing valid
// follows it; any other damage is a *CorruptError.
func scanSegment(path string, base, prevLast uint64, havePrev, verify, last bool) (*segment, *tornTail, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("scanning segment: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("scanning segment: %w", err)
	}
	size := fi.Size()
	s := &segment{base: base, path: path}
	corrupt := func(off int64, err error) error {
		return &CorruptError{Segment: path, Offset: off, Err: err}
	}
	// damaged handles a record that cannot be decoded at off.
	damaged := func(off int64, reason error) (*segment, *tornTail, error) {
		if !last {
			if errors.Is(reason, errShortRecord) {
				reason = fmt.Errorf("%w: sealed segment ends inside a record", ErrCorrupt)
			}
			return nil, nil, corrupt(off, reason)
		}
		p, old, err := findRecordAfter(f, off, size, base)
		if err != nil {
			return nil, nil, fmt.Errorf("scanning segment %s: %w", path, err)
		}
		if p >= 0 {
			// A whole record after the damaged one means this is not what
			// an interrupted append leaves: data that may have been
			// acknowledged is damaged.
			if errors.Is(reason, errShortRecord) {
				reason = fmt.Errorf("%w: record runs past end of file", ErrCorrupt)
			}
			return nil, nil, corrupt(off, fmt.Errorf("%w (a valid record follows at offset %d)", reason, p))
		}
		return s, &tornTail{offset: off, size: size, reason: reason, stale: old}, nil
	}

	if size == 0 {
		if last {
			return s, &tornTail{offset: 0, size: 0, reason: errors.New("empty segment")}, nil
		}
		return nil, nil, corrupt(0, fmt.Errorf("%w: empty sealed segment", ErrCorrupt))
	}
	var br *bufio.Reader
	if verify {
		br = bufio.NewReaderSize(f, 1<<20)
	}
	var hdr [headerSize]byte
	off := int64(0)
	for off < size {
		if size-off < headerSize {
			return damaged(off, errShortRecord)
		}
		if verify {
			_, err = io.ReadFull(br, hdr[:])
		} else {
			_, err = f.ReadAt(hdr[:], off)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading %s at %d: %w", path, off, err)
		}
		h, err := parseHeader(hdr[:])
		if err != nil {
			return damaged(off, err)
		}
		n := int64(headerSize) + int64(h.length)
		if n > size-off {
			return damaged(off, errShortRecord)
		}
		if verify {
			sum := crc32.Update(0, castagnoli, hdr[:crcOffset])
			// Checksummed straight out of the read buffer: no copy.
			for left := int(h.length); left > 0; {
				p, err := br.Peek(min(left, br.Size()))
				if err != nil {
					return nil, nil, fmt.Errorf("reading %s at %d: %w", path, off, err)
				}
				sum = crc32.Update(sum, castagnoli, p)
				br.Discard(len(p))
				left -= len(p)
			}
			if got, want := sum, binary.LittleEndian.Uint32(hdr[crcOffset:]); got != want {
				return damaged(off, fmt.Errorf("%w: checksum %#08x, header says %#08x", ErrCorrupt, got, want))
			}
		}
		// In the last segment, a whole record older than the segment's
		// name is what a reused file held before (Log.reuseSpare): the
		// records written into it end here. Nothing written into a
		// segment is below its base, so this never hides a new record.
		if last && h.first < base {
			return s, &tornTail{offset: off, size: size, reason: errors.New("old bytes of a reused file"), stale: true}, nil
		}
		// A record that passes its checksum but breaks the order was
		// written wrong, not torn: never a tail to cut.
		if off == 0 && h.first != base {
			return nil, nil, corrupt(off, fmt.Errorf("%w: first seq %d does not match file name", ErrCorrupt, h.first))
		}
		if havePrev && h.first <= prevLast {
			return nil, nil, corrupt(off, fmt.Errorf("%w: first seq %d not above previous last %d", ErrCorrupt, h.first, prevLast))
		}
		if s.entries == 0 {
			s.first = h.first
		}
		s.last = h.last
		s.entries++
		s.size = off + n
		prevLast, havePrev = h.last, true
		off += n
	}
	return s, nil, nil
}

// findRecordAfter returns the offset of the first whole, valid record that
// starts after off and belongs to the segment named base, or -1, and
// whether it passed records below base on the way: those are what a reused
// file held before, not data written into this segment. Only used on the
// failure path of the last segment. It searches in windows and reads a
// candidate whole only once its header parses, so memory stays bounded
// even behind an oversized record.
func findRecordAfter(f *os.File, off, size int64, base uint64) (int64, bool, error) {
	old := false
	const window = 1 << 20
	var magic [4]byte
	binary.LittleEndian.PutUint32(magic[:], recordMagic)
	buf := make([]byte, window)
	var rec []byte
	for start := off + 1; start+headerSize <= size; start += window - int64(len(magic)-1) {
		n := int(min(window, size-start))
		if _, err := f.ReadAt(buf[:n], start); err != nil {
			return 0, old, fmt.Errorf("reading tail at %d: %w", start, err)
		}
		for i := 0; ; i++ {
			j := bytes.Index(buf[i:n], magic[:])
			if j < 0 {
				break
			}
			i += j
			p := start + int64(i)
			var hdr [headerSize]byte
			if p+headerSize > size {
				break
			}
			if _, err := f.ReadAt(hdr[:], p); err != nil {
				return 0, old, fmt.Errorf("reading tail at %d: %w", p, err)
			}
			h, err := parseHeader(hdr[:])
			if err != nil || p+headerSize+int64(h.length) > size {
				continue
			}
			if h.first < base {
				old = true
				continue
			}
			rec = slices.Grow(rec[:0], headerSize+int(h.length))[:headerSize+int(h.length)]
			if _, err := f.ReadAt(rec, p); err != nil {
				return 0, old, fmt.Errorf("reading tail at %d: %w", p, err)
			}
			if _, _, err := decodeRecord(rec); err == nil {
				return p, old, nil
			}
		}
	}
	return -1, old, nil
}
