package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"standby/internal/directio"
	"standby/internal/fsutil"
)

const segSuffix = ".ujl"

func segName(base uint64) string { return fmt.Sprintf("%020d%s", base, segSuffix) }

func parseSegName(name string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, segSuffix)
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

// recover finds the segment files, checks their headers and the chain
// between them, and settles the block size. It leaves j.segs holding the
// segments to scan, oldest first.
func (j *Journal) recover(wantBS int64) error {
	ents, err := os.ReadDir(j.dir)
	if err != nil {
		return fmt.Errorf("journal: listing %s: %w", j.dir, err)
	}
	var bases []uint64
	for _, de := range ents {
		base, ok := parseSegName(de.Name())
		if !ok {
			if de.Name() != "LOCK" {
				j.log.Warn("ignoring unexpected file in journal directory", "file", filepath.Join(j.dir, de.Name()))
			}
			continue
		}
		if !de.Type().IsRegular() {
			return fmt.Errorf("journal: segment %s is not a regular file", filepath.Join(j.dir, de.Name()))
		}
		bases = append(bases, base)
	}
	slices.Sort(bases)
	var segs []*segment
	for i, base := range bases {
		s := &segment{path: filepath.Join(j.dir, segName(base))}
		var hb [segHeaderSize]byte
		n, rerr := fsutil.ReadFileAt(s.path, hb[:], 0) // a short header is judged by the parser
		if rerr != nil {
			return fmt.Errorf("journal: reading segment header of %s: %w", s.path, rerr)
		}
		h, herr := parseSegHeader(hb[:n])
		if herr != nil {
			if i == len(bases)-1 {
				// A segment's header is made durable right after the file
				// is created, before anything relies on it: a damaged one
				// in the newest file can only be a crash during creation.
				j.log.Warn("removing newest journal segment with a torn header", "segment", s.path, "reason", herr)
				if err := os.Remove(s.path); err != nil {
					return fmt.Errorf("journal: removing torn segment %s: %w", s.path, err)
				}
				continue
			}
			return &CorruptError{Segment: s.path, Offset: 0, Err: fmt.Errorf("%w (segment header)", herr)}
		}
		if h.base != base {
			return &CorruptError{Segment: s.path, Offset: 0, Err: fmt.Errorf("%w: header says base %d, file name %d", ErrCorrupt, h.base, base)}
		}
		s.hdr = h
		segs = append(segs, s)
	}
	// Dropping a segment is a plain unlink, not made durable: after a crash
	// an older dropped segment can come back. The chain of prev fields
	// tells it apart from the kept ones.
	for i := len(segs) - 1; i > 0; i-- {
		h := segs[i].hdr
		if h.flags&segFlagGenesis == 0 && h.prev == segs[i-1].hdr.base {
			continue
		}
		for _, o := range segs[:i] {
			j.log.Warn("removing journal segment outside the chain of kept segments (dropped before a crash)", "segment", o.path, "next_kept", segs[i].path)
			if err := os.Remove(o.path); err != nil {
				return fmt.Errorf("journal: removing stale segment %s: %w", o.path, err)
			}
		}
		segs = segs[i:]
		break
	}
	bs := wantBS
	for _, s := range segs {
		sbs := int64(1) << s.hdr.shift
		if bs == 0 {
			bs = sbs
		}
		if sbs != bs {
			return fmt.Errorf("journal: segment %s uses %d-byte blocks, want %d: a journal keeps one block size", s.path, sbs, bs)
		}
	}
	if bs == 0 {
		bs = DefaultBlockSize
	}
	shift, err := blockShift(bs)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	j.bs, j.shift = bs, shift
	for i, s := range segs {
		s.id = uint32(i)
	}
	j.segs = segs
	j.nextID = uint32(len(segs))
	return nil
}

// rebuild scans every segment's records into the index: headers only for
// sealed segments, everything for the last one, whose tail may be torn.
func (j *Journal) rebuild() error {
	for i, s := range j.segs {
		last := i == len(j.segs)-1
		if err := j.scanSegment(s, last); err != nil {
			return err
		}
	}
	j.bytes = 0
	for _, s := range j.segs {
		j.bytes += s.size
	}
	j.synced = j.lastDone
	if n := len(j.segs); n > 0 {
		// Every call below the newest segment's base completed before the
		// segment was created, and was synced when the previous one was
		// sealed: that holds even when the newest segment lost its records.
		if b := j.segs[n-1].hdr.base; b > 0 {
			j.synced = max(j.synced, b-1)
		}
		if h := j.segs[0].hdr; h.flags&segFlagGenesis == 0 && h.base > 0 {
			j.oldest = h.base - 1
		}
		j.synced = max(j.synced, j.oldest)
		j.active = j.segs[n-1]
	}
	return nil
}

// scanReader reads a segment through a window, so that walking small
// records costs one read per window and large records' data can be skipped.
type scanReader struct {
	f    *os.File
	size int64
	buf  []byte
	at   int64 // file offset of buf[0]
	n    int
}

// get returns n bytes at off, or fewer if the file ends first.
func (r *scanReader) get(off int64, n int) ([]byte, error) {
	if off >= r.at && off+int64(n) <= r.at+int64(r.n) {
		return r.buf[off-r.at : off-r.at+int64(n)], nil
	}
	want := max(n, 1<<20)
	if cap(r.buf) < want {
		r.buf = make([]byte, want)
	}
	r.buf = r.buf[:want]
	m := int(min(int64(want), r.size-off))
	if m < 0 {
		m = 0
	}
	if _, err := r.f.ReadAt(r.buf[:m], off); err != nil {
		return nil, fmt.Errorf("reading %s at %d: %w", r.f.Name(), off, err)
	}
	r.at, r.n = off, m
	return r.buf[:min(n, m)], nil
}

func (j *Journal) scanSegment(s *segment, last bool) error {
	flag := os.O_RDONLY
	if last {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(s.path, flag, 0)
	if err != nil {
		return fmt.Errorf("journal: opening segment %s: %w", s.path, err)
	}
	s.f = f
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("journal: stat segment %s: %w", s.path, err)
	}
	size := fi.Size()
	r := &scanReader{f: f, size: size}
	bs := int(j.bs)
	off := int64(segHeaderSize)
	corrupt := func(off int64, err error) error { return &CorruptError{Segment: s.path, Offset: off, Err: err} }
	// damaged decides between a torn tail and corruption for a record that
	// does not decode at off.
	damaged := func(off int64, reason error) error {
		if !last {
			if errors.Is(reason, errShort) {
				reason = fmt.Errorf("%w: sealed segment ends inside a record", ErrCorrupt)
			}
			return corrupt(off, reason)
		}
		p, err := j.findRecordAfter(f, off, size)
		if err != nil {
			return fmt.Errorf("journal: scanning segment %s: %w", s.path, err)
		}
		if p >= 0 {
			// A whole record after the damaged one is not what an
			// interrupted append leaves: synced data is damaged.
			if errors.Is(reason, errShort) {
				reason = fmt.Errorf("%w: record runs past end of file", ErrCorrupt)
			}
			return corrupt(off, fmt.Errorf("%w (a valid record follows at offset %d)", reason, p))
		}
		j.log.Warn("truncating torn tail of journal segment", "segment", s.path, "offset", off, "dropped_bytes", size-off, "reason", reason)
		if err := f.Truncate(off); err != nil {
			return fmt.Errorf("journal: truncating torn tail of %s at %d: %w", s.path, off, err)
		}
		if err := fdatasync(f); err != nil {
			return fmt.Errorf("journal: syncing truncated %s: %w", s.path, err)
		}
		size = off
		return nil
	}
	for off < size {
		b, err := r.get(off, recHeaderSize+(maxRunBlocks+7)/8)
		if err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		h, err := parseRecHead(b)
		if err != nil {
			if derr := damaged(off, err); derr != nil {
				return derr
			}
			break
		}
		n := int64(h.length(bs))
		if n > size-off {
			if derr := damaged(off, errShort); derr != nil {
				return derr
			}
			break
		}
		if last {
			rb, err := r.get(off, int(n))
			if err != nil {
				return fmt.Errorf("journal: %w", err)
			}
			if _, _, err := DecodeRecord(rb, bs); err != nil {
				if derr := damaged(off, err); derr != nil {
					return derr
				}
				break
			}
			// Decoding may have refilled the window: the bitmap h points
			// into must be read again.
			if h, err = parseRecHead(rb); err != nil {
				return corrupt(off, err)
			}
		}
		// A record that passes its checksums but breaks these rules was
		// written wrong, not torn: never a tail to cut.
		switch {
		case s.records == 0 && h.seq != s.hdr.base:
			return corrupt(off, fmt.Errorf("%w: first record has seq %d, segment base is %d", ErrCorrupt, h.seq, s.hdr.base))
		case j.haveAny && (h.seq < j.lastAny || (h.seq == j.lastAny && j.lastFinal)):
			return corrupt(off, fmt.Errorf("%w: record seq %d after seq %d", ErrCorrupt, h.seq, j.lastAny))
		case int(h.disk) >= len(j.disks):
			return corrupt(off, fmt.Errorf("%w: record for disk %d, the machine has %d disks", ErrCorrupt, h.disk, len(j.disks)))
		case h.first+uint64(h.count) > uint64((j.disks[h.disk].Size+j.bs-1)/j.bs):
			return corrupt(off, fmt.Errorf("%w: record for blocks %d..%d of disk %d, which has %d bytes", ErrCorrupt, h.first, h.first+uint64(h.count)-1, h.disk, j.disks[h.disk].Size))
		case off+n > 1<<32:
			return corrupt(off, fmt.Errorf("%w: record ends past 4 GiB into its segment", ErrCorrupt))
		}
		runs, pages := j.idx[h.disk].indexRecord(&h, s.id, off+int64(headLen(h.count)), j.bs)
		j.runs += runs
		j.pages += pages
		if s.records == 0 {
			s.first = h.seq
		}
		s.last = h.seq
		s.records++
		j.records++
		j.lastAny, j.lastFinal, j.haveAny = h.seq, h.final, true
		if h.final {
			j.lastDone = h.seq
		}
		off += n
	}
	if !last && s.records == 0 {
		return corrupt(segHeaderSize, fmt.Errorf("%w: sealed segment holds no records", ErrCorrupt))
	}
	s.size, s.written = size, size
	if size < segHeaderSize {
		return corrupt(0, fmt.Errorf("%w: segment shorter than its header", ErrCorrupt))
	}
	if !last {
		// Sealed segments are opened again when a view first reads one:
		// a large journal would otherwise hold a descriptor per segment.
		s.f = nil
		if err := f.Close(); err != nil {
			return fmt.Errorf("journal: closing segment %s after scanning: %w", s.path, err)
		}
	}
	return nil
}

// findRecordAfter returns the offset of the first whole, valid record that
// starts after off, or -1. Only used on the failure path of the last segment.
func (j *Journal) findRecordAfter(f *os.File, off, size int64) (int64, error) {
	var magic [4]byte
	binary.LittleEndian.PutUint32(magic[:], recMagic)
	buf := make([]byte, size-off)
	if _, err := f.ReadAt(buf, off); err != nil {
		return 0, fmt.Errorf("reading tail at %d: %w", off, err)
	}
	for i := 1; ; i++ {
		k := bytes.Index(buf[i:], magic[:])
		if k < 0 {
			return -1, nil
		}
		i += k
		if _, _, err := DecodeRecord(buf[i:], int(j.bs)); err == nil {
			return off + int64(i), nil
		}
	}
}

// roll seals the active segment and starts a new one for a record with seq
// base. The sealed segment is made durable before the new one exists, and
// the new one's header before any record goes in, so after a crash only the
// newest segment can be torn, and its header tells what came before it.
// Caller holds wmu.
func (j *Journal) roll(base uint64) error {
	h := segHeader{shift: j.shift, base: base}
	if j.active != nil {
		if err := j.flush(); err != nil {
			return err
		}
		if err := j.seal(j.active); err != nil {
			return err
		}
		if err := fdatasync(j.active.f); err != nil {
			return j.fail(fmt.Errorf("journal: syncing segment %s before sealing it: %w", j.active.path, err))
		}
		j.unsynced = false
		j.mu.Lock()
		j.synced = j.lastDone
		j.mu.Unlock()
		h.prev = j.active.hdr.base
	} else {
		// Only a journal that never held a segment starts a chain: if
		// segments were lost to a crash, Open keeps the newest's header.
		h.flags = segFlagGenesis
	}
	return j.create(h)
}

// rebaseEmpty replaces the active segment, which holds no record (a crash
// came between its creation and its first record's write), with one named
// for base, the first record now going in. After a crash that record need
// not come again: a copy relayed past the intake is re-read by the agent
// under a new sequence number. Appending to the old segment would break
// "a segment's base is its first record's seq", which Open checks. The
// empty file goes first: a crash between the two steps leaves the
// segment before it as the newest, as if the empty one had never been
// made. Caller holds wmu.
func (j *Journal) rebaseEmpty(base uint64) error {
	old := j.active
	if old.app != nil {
		old.app.Close()
		old.app = nil
	}
	if err := old.f.Close(); err != nil {
		return j.fail(fmt.Errorf("journal: closing empty segment %s: %w", old.path, err))
	}
	if err := os.Remove(old.path); err != nil {
		return j.fail(fmt.Errorf("journal: removing empty segment %s: %w", old.path, err))
	}
	if err := syncDir(j.dir); err != nil {
		return j.fail(fmt.Errorf("journal: syncing directory after removing %s: %w", old.path, err))
	}
	j.mu.Lock()
	j.segs = j.segs[:len(j.segs)-1]
	j.bytes -= old.size
	j.active = nil
	j.mu.Unlock()
	// The new header keeps the chain the empty one recorded.
	h := old.hdr
	h.base = base
	return j.create(h)
}

// create makes a new active segment with header h.
func (j *Journal) create(h segHeader) error {
	s := &segment{hdr: h, path: filepath.Join(j.dir, segName(h.base)), size: segHeaderSize, written: segHeaderSize}
	f, err := os.OpenFile(s.path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return j.fail(fmt.Errorf("journal: creating segment: %w", err))
	}
	var hb [segHeaderSize]byte
	putSegHeader(hb[:], h)
	if _, err := f.WriteAt(hb[:], 0); err != nil {
		f.Close()
		return j.fail(fmt.Errorf("journal: writing header of %s: %w", s.path, err))
	}
	if err := fdatasync(f); err != nil {
		f.Close()
		return j.fail(fmt.Errorf("journal: syncing new segment %s: %w", s.path, err))
	}
	if err := syncDir(j.dir); err != nil {
		f.Close()
		return j.fail(fmt.Errorf("journal: syncing directory after creating %s: %w", s.path, err))
	}
	s.f = f
	j.mu.Lock()
	s.id = j.nextID
	j.nextID++
	j.segs = append(j.segs, s)
	j.bytes += segHeaderSize
	j.active = s
	j.mu.Unlock()
	return nil
}

// fail records a write-side error: after a failed write or fdatasync the
// kernel may have dropped pages it could not write, so a later sync that
// succeeds would prove nothing. Reopen to find out what is on disk.
func (j *Journal) fail(err error) error {
	j.mu.Lock()
	if j.err == nil {
		j.err = err
	}
	j.mu.Unlock()
	return err
}

// flush writes the buffered tail of the active segment. Views may read
// those bytes meanwhile: they stay reachable through j.flushing until
// written. Caller holds wmu.
func (j *Journal) flush() error {
	j.mu.Lock()
	if len(j.wbuf) == 0 {
		j.mu.Unlock()
		return nil
	}
	buf, s := j.wbuf, j.active
	j.flushing, j.wbuf = buf, j.spare[:0]
	at := s.written
	j.mu.Unlock()
	return j.finishWrite(buf, at, true)
}

// finishWrite writes buf (published as j.flushing) at offset at of the
// active segment and retires it; recycle makes buf the next spare buffer.
func (j *Journal) finishWrite(buf []byte, at int64, recycle bool) error {
	s := j.active
	err := j.write(s, buf, at)
	j.mu.Lock()
	j.flushing = nil
	if err == nil {
		s.written += int64(len(buf))
	} else if j.err == nil {
		j.err = fmt.Errorf("journal: writing %d bytes at %d of %s: %w", len(buf), at, s.path, err)
	}
	serr := j.err
	j.mu.Unlock()
	if recycle {
		j.spare = buf[:0]
	}
	return serr
}

// write appends buf at offset at, the end of the data of the active
// segment s: past the page cache where the file system allows
// (internal/directio), which leaves zeros after the data up to a block
// boundary until seal cuts them. Caller holds wmu.
func (j *Journal) write(s *segment, buf []byte, at int64) error {
	if !j.cached {
		if written, err := j.writeDirect(s, buf, at); written || err != nil {
			return err
		}
	}
	_, err := s.f.WriteAt(buf, at)
	return err
}

// writeDirect is write past the page cache. When the file system refuses,
// it writes nothing, reports written false, and turns uncached writes off
// for good. Caller holds wmu.
func (j *Journal) writeDirect(s *segment, buf []byte, at int64) (written bool, err error) {
	refused := func(why error) (bool, error) {
		j.cached = true
		j.log.Info("the file system refuses O_DIRECT: journal segments are written through the page cache", "dir", j.dir, "why", why)
		return false, nil
	}
	if s.app == nil {
		a, err := directio.OpenAppender(s.path, at, &j.stage)
		if err != nil {
			return false, err
		}
		if a == nil {
			return refused(errors.New("O_DIRECT refused at open"))
		}
		s.app = a
	}
	if s.app.Size() != at {
		return false, fmt.Errorf("journal: writing at %d of %s, whose data ends at %d", at, s.path, s.app.Size())
	}
	err = s.app.Append(buf)
	if errors.Is(err, directio.ErrRefused) {
		s.app.Close()
		s.app = nil
		return refused(err)
	}
	return err == nil, err
}

// seal cuts the zeros an uncached append leaves past the data of s and
// stops appending to it. Caller holds wmu and has flushed s.
func (j *Journal) seal(s *segment) error {
	if s.app == nil {
		return nil
	}
	err := s.app.Close()
	s.app = nil
	if err == nil {
		err = s.f.Truncate(s.written)
	}
	if err != nil {
		return j.fail(fmt.Errorf("journal: cutting the padding of %s at %d: %w", s.path, s.written, err))
	}
	return nil
}

// appendRecord puts one encoded record at the end of the active segment and
// indexes it. Caller holds wmu.
func (j *Journal) appendRecord(rec []byte) error {
	h, err := parseRecHead(rec)
	if err != nil {
		return fmt.Errorf("journal: encoding error: %w", err)
	}
	direct := len(rec) >= flushThreshold
	if direct || len(j.wbuf)+len(rec) > flushThreshold {
		if err := j.flush(); err != nil {
			return err
		}
	}
	s := j.active
	j.mu.Lock()
	at := s.size
	if direct {
		// Large records are written from the encoding buffer itself rather
		// than copied into the write buffer first.
		j.flushing = rec
	} else {
		j.wbuf = append(j.wbuf, rec...)
	}
	s.size += int64(len(rec))
	j.bytes += int64(len(rec))
	if s.records == 0 {
		s.first = h.seq
	}
	s.last = h.seq
	s.records++
	j.records++
	runs, pages := j.idx[h.disk].indexRecord(&h, s.id, at+int64(headLen(h.count)), j.bs)
	j.runs += runs
	j.pages += pages
	j.lastAny, j.lastFinal, j.haveAny = h.seq, h.final, true
	if h.final {
		j.lastDone = h.seq
	}
	for v := range j.views {
		if v.point >= h.seq && v.invalid == nil && v.disk == int(h.disk) {
			// The view was opened at a point apply had not reached: its
			// replica reads already showed content from before seq.
			v.invalidateLocked(fmt.Sprintf("apply preserved seq %d, at or below the view's point: the view was opened ahead of apply", h.seq))
		}
	}
	j.mu.Unlock()
	j.unsynced = true
	if direct {
		return j.finishWrite(rec, at, false)
	}
	return nil
}

// dropLocked removes the n oldest segments from the journal (not yet from
// disk), invalidating views that needed them. Caller holds mu.
func (j *Journal) dropLocked(n int, why string) (PruneInfo, []*segment) {
	gone := append([]*segment(nil), j.segs[:n]...)
	j.segs = append(j.segs[:0:0], j.segs[n:]...)
	info := PruneInfo{DroppedSegments: n}
	for _, s := range gone {
		info.DroppedBytes += s.size
		j.bytes -= s.size
		j.records -= s.records
		j.oldest = max(j.oldest, s.last)
	}
	info.OldestSeq = j.oldest
	for v := range j.views {
		if v.invalid == nil && v.point < j.oldest {
			v.invalidateLocked(fmt.Sprintf("%s dropped before-images up to seq %d", why, j.oldest))
		}
	}
	select {
	case j.compact <- struct{}{}:
	default:
	}
	return info, gone
}

// removeSegments deletes dropped segment files. A reader that picked up a
// file before the drop may still be reading it: os.File keeps the
// descriptor valid until that read returns.
func (j *Journal) removeSegments(gone []*segment) {
	for _, s := range gone {
		if s.f != nil {
			s.f.Close()
		}
		if err := os.Remove(s.path); err != nil {
			j.log.Warn("removing dropped journal segment", "segment", s.path, "err", err)
		}
	}
}

// dropForSpace enforces MaxBytes after an append, oldest segments first,
// pins or not: apply never waits for space. Caller holds wmu.
func (j *Journal) dropForSpace() {
	j.mu.Lock()
	n := 0
	var freed int64
	for n < len(j.segs)-1 && j.bytes-freed > j.max {
		freed += j.segs[n].size
		n++
	}
	if n == 0 {
		j.mu.Unlock()
		return
	}
	info, gone := j.dropLocked(n, "space pressure (MaxBytes)")
	j.mu.Unlock()
	j.removeSegments(gone)
	j.log.Info("journal full: dropped oldest segments", "dir", j.dir, "segments", info.DroppedSegments, "bytes", info.DroppedBytes, "oldest_seq", info.OldestSeq)
	select {
	case j.pruned <- info:
	default:
		// Make room by discarding the oldest unread event; this goroutine is
		// the only sender (it holds wmu), so the second send cannot block.
		select {
		case <-j.pruned:
		default:
		}
		select {
		case j.pruned <- info:
		default:
		}
	}
}

// Prune drops the oldest segments whose before-images all have seq below
// keepFrom (retention by time: the caller maps a time to a seq), except
// those an open view still needs. The newest segment is never dropped.
// Only in-memory bookkeeping happens under the lock apply needs; files are
// removed after.
func (j *Journal) Prune(keepFrom uint64) (PruneInfo, error) {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return PruneInfo{}, ErrClosed
	}
	pin, pinned := j.minViewPointLocked()
	n := 0
	for n < len(j.segs)-1 {
		s := j.segs[n]
		if s.last >= keepFrom || (pinned && s.last > pin) {
			break
		}
		n++
	}
	if n == 0 {
		info := PruneInfo{OldestSeq: j.oldest}
		j.mu.Unlock()
		return info, nil
	}
	info, gone := j.dropLocked(n, "Prune")
	j.mu.Unlock()
	j.removeSegments(gone)
	return info, nil
}
