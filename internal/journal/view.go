package journal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"sync"
)

// maxReadBlocks bounds the blocks one internal read resolves and reads at
// once, so a large request never holds the range lock or a big buffer for
// long.
const maxReadBlocks = 256

// groupBlocks is the span of one group of the scratch bitmap, equal to an
// index page so that Extents can merge the two word by word.
const (
	groupBlocks = pageChunks * chunkBlocks
	groupWords  = groupBlocks / 64
)

// View is a disk as it was at a point: the replica overlaid with the
// earliest before-image after the point of each block, and overlaid again
// with the view's own writes, which go to a sparse scratch file. It keeps
// working while apply goes on, and is safe for concurrent use.
type View struct {
	j       *Journal
	disk    int
	point   uint64
	size    int64
	path    string
	scratch *os.File // nil for a read-only view

	// mu is shared by reads and exclusive for writes: a partial-block write
	// reads, merges and writes back the block, which must not interleave
	// with another write of that block.
	mu      sync.RWMutex
	written map[int64]*[groupWords]uint64 // scratch blocks, by group
	closed  bool

	invalid error // guarded by j.mu
}

// OpenView opens disk as it was at point. The cost does not depend on the
// disk's size: nothing is copied or scanned. Writes go to a sparse scratch
// file created at scratchPath (replaced if it exists, removed by Close);
// an empty scratchPath makes a read-only view. A point below OldestSeq
// fails with an error wrapping ErrPointGone. The point must not be ahead
// of what apply has written: if apply later preserves a seq at or below
// it, the view is invalidated.
func (j *Journal) OpenView(disk int, point uint64, scratchPath string) (*View, error) {
	if disk < 0 || disk >= len(j.disks) {
		return nil, fmt.Errorf("journal: opening view: disk %d of %d", disk, len(j.disks))
	}
	v := &View{j: j, disk: disk, point: point, size: j.disks[disk].Size, path: scratchPath, written: make(map[int64]*[groupWords]uint64)}
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil, fmt.Errorf("journal: opening view of disk %d at %d: %w", disk, point, ErrClosed)
	}
	if point < j.oldest {
		oldest := j.oldest
		j.mu.Unlock()
		return nil, fmt.Errorf("journal: opening view of disk %d at point %d: the oldest point held is %d: %w", disk, point, oldest, ErrPointGone)
	}
	// Registered before the scratch file exists, so that from here on
	// Prune keeps what the view needs.
	j.views[v] = struct{}{}
	j.mu.Unlock()
	if scratchPath != "" {
		f, err := os.OpenFile(scratchPath, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
		if err == nil {
			if err = f.Truncate(v.size); err != nil {
				f.Close()
				os.Remove(scratchPath)
			}
		}
		if err != nil {
			j.mu.Lock()
			delete(j.views, v)
			j.mu.Unlock()
			return nil, fmt.Errorf("journal: creating scratch file of view of disk %d at %d: %w", disk, point, err)
		}
		v.scratch = f
	}
	return v, nil
}

// Size is the disk's size in bytes.
func (v *View) Size() int64 { return v.size }

// Point is the sequence number the view shows the disk at.
func (v *View) Point() uint64 { return v.point }

// Err is nil while the view is exact, else why it is not (wrapping
// ErrViewInvalidated).
func (v *View) Err() error {
	v.j.mu.Lock()
	defer v.j.mu.Unlock()
	return v.invalid
}

func (v *View) invalidateLocked(why string) {
	v.invalid = fmt.Errorf("%w: view of disk %d at point %d: %s", ErrViewInvalidated, v.disk, v.point, why)
	v.j.log.Warn("journal view invalidated", "disk", v.disk, "point", v.point, "reason", why)
}

func (v *View) isWritten(b int64) bool {
	g := v.written[b/groupBlocks]
	if g == nil {
		return false
	}
	i := b % groupBlocks
	return g[i>>6]&(1<<(i&63)) != 0
}

func (v *View) markWritten(b0, b1 int64) {
	for b := b0; b < b1; b++ {
		g := v.written[b/groupBlocks]
		if g == nil {
			g = new([groupWords]uint64)
			v.written[b/groupBlocks] = g
		}
		i := b % groupBlocks
		g[i>>6] |= 1 << (i & 63)
	}
}

func (v *View) usable() error {
	if v.closed {
		return fmt.Errorf("journal: view of disk %d at %d: %w", v.disk, v.point, os.ErrClosed)
	}
	v.j.mu.Lock()
	err := v.invalid
	v.j.mu.Unlock()
	return err
}

// ReadAt reads the disk at the view's point, overlaid with the view's own
// writes. Like any io.ReaderAt it returns io.EOF for bytes past the end.
// Once the view is invalidated every read fails with an error wrapping
// ErrViewInvalidated: it never returns data it cannot vouch for.
func (v *View) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("journal: view read at negative offset %d", off)
	}
	if off >= v.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := len(p)
	eof := int64(n) > v.size-off
	if eof {
		n = int(v.size - off)
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	if err := v.usable(); err != nil {
		return 0, err
	}
	if err := v.read(p[:n], off); err != nil {
		return 0, err
	}
	if eof {
		return n, io.EOF
	}
	return n, nil
}

// read splits p into runs of scratch blocks and point-in-time blocks.
// Caller holds mu (either way).
func (v *View) read(p []byte, off int64) error {
	bs, shift := v.j.bs, v.j.shift
	end := off + int64(len(p))
	for off < end {
		w := v.isWritten(off >> shift)
		stop := min(end, (off>>shift+1)<<shift)
		for stop < end && v.isWritten(stop>>shift) == w {
			stop = min(end, stop+bs)
		}
		q := p[:stop-off]
		if w {
			if _, err := v.scratch.ReadAt(q, off); err != nil {
				return fmt.Errorf("journal: reading scratch file %s at %d: %w", v.path, off, err)
			}
		} else if err := v.readPoint(q, off); err != nil {
			return err
		}
		p = p[len(q):]
		off = stop
	}
	return nil
}

// readPoint reads any byte range of the point-in-time content.
func (v *View) readPoint(p []byte, off int64) error {
	j := v.j
	bs := j.bs
	var tmp []byte
	for len(p) > 0 {
		b0 := off >> j.shift
		nb := min((off+int64(len(p))+bs-1)>>j.shift-b0, maxReadBlocks)
		span := nb * bs
		start := off - b0*bs
		take := min(int64(len(p)), span-start)
		direct := start == 0 && take == span
		var dst []byte
		if direct {
			dst = p[:span]
		} else {
			if int64(cap(tmp)) < span {
				tmp = make([]byte, span)
			}
			dst = tmp[:span]
		}
		if err := j.readBlocks(v, dst, b0, int(nb)); err != nil {
			return err
		}
		if !direct {
			copy(p[:take], dst[start:start+take])
		}
		p = p[take:]
		off += take
	}
	return nil
}

// piece is a run of blocks read from one place.
type piece struct {
	journal bool
	at      int   // first block, relative to the read
	n       int   // blocks
	block   int64 // first block number on the disk
	seg     *segment
	f       *os.File
	loc     int64 // offset in the segment of the first block's checksum
	seq     uint64
}

// readBlocks fills dst with blocks b0..b0+nb-1 as they were at v.point.
// The range is read-locked throughout, so apply cannot preserve and
// overwrite any of these blocks between the index lookup and the reads.
func (j *Journal) readBlocks(v *View, dst []byte, b0 int64, nb int) error {
	unlock := j.locks.lockRead(stripes(v.disk, b0, b0+int64(nb)))
	defer unlock()
	bs := j.bs
	var pieces []piece
	add := func(p piece) {
		if n := len(pieces); n > 0 {
			q := &pieces[n-1]
			if q.journal == p.journal && q.at+q.n == p.at &&
				(!p.journal || (q.seg == p.seg && q.seq == p.seq && q.loc+int64(q.n)*(bs+blockCRCSize) == p.loc)) {
				q.n++
				return
			}
		}
		pieces = append(pieces, p)
	}
	var res [chunkBlocks]int32
	j.mu.Lock()
	if v.invalid != nil {
		err := v.invalid
		j.mu.Unlock()
		return err
	}
	idx := &j.idx[v.disk]
	for b := b0; b < b0+int64(nb); {
		c := b >> chunkShift
		lo := uint(b & (chunkBlocks - 1))
		hi := min(uint(chunkBlocks), lo+uint(b0+int64(nb)-b))
		runs := idx.runs(c)
		if len(runs) > 0 {
			resolve(runs, v.point, uint32((uint64(1)<<(hi-lo)-1)<<lo), &res)
		}
		for i := lo; i < hi; i++ {
			blk := c<<chunkShift | int64(i)
			at := int(blk - b0)
			if len(runs) == 0 || res[i] < 0 {
				add(piece{at: at, n: 1, block: blk})
				continue
			}
			r := &runs[res[i]]
			if r.zero&(1<<i) != 0 {
				clear(dst[int64(at)*bs : int64(at+1)*bs])
				continue
			}
			s := j.segByIDLocked(r.seg)
			if s == nil {
				// Cannot happen for a valid view (segments it needs are
				// pinned, or it is invalidated when they go); refuse rather
				// than serve the replica's newer content.
				v.invalidateLocked(fmt.Sprintf("before-image of block %d (seq %d) is gone", blk, r.seq))
				err := v.invalid
				j.mu.Unlock()
				return err
			}
			loc := r.loc(i, bs)
			if s == j.active && loc >= s.written {
				// Still in the write buffer: check it here, under mu.
				rec := j.tailLocked(s, loc, int(bs+blockCRCSize))
				if err := checkBlock(s, loc, r.seq, v.disk, blk, rec, dst[int64(at)*bs:int64(at+1)*bs]); err != nil {
					j.mu.Unlock()
					return err
				}
				continue
			}
			if s.f == nil {
				f, err := os.Open(s.path)
				if err != nil {
					j.mu.Unlock()
					return fmt.Errorf("journal: opening segment %s: %w", s.path, err)
				}
				s.f = f
			}
			add(piece{journal: true, at: at, n: 1, block: blk, seg: s, f: s.f, loc: loc, seq: r.seq})
		}
		b += int64(hi - lo)
	}
	j.mu.Unlock()

	var jbuf []byte
	for _, p := range pieces {
		d := dst[int64(p.at)*bs : int64(p.at+p.n)*bs]
		if !p.journal {
			if err := j.readReplica(v.disk, d, p.block); err != nil {
				return fmt.Errorf("journal: view of disk %d at %d: %w", v.disk, v.point, err)
			}
			continue
		}
		want := p.n * int(bs+blockCRCSize)
		if cap(jbuf) < want {
			jbuf = make([]byte, want)
		}
		jbuf = jbuf[:want]
		if _, err := p.f.ReadAt(jbuf, p.loc); err != nil {
			// A drop may have closed the file under us; if so the view
			// says why, which is the error that matters.
			if verr := v.Err(); verr != nil {
				return verr
			}
			return fmt.Errorf("journal: reading before-image at %d of %s: %w", p.loc, p.seg.path, err)
		}
		for k := range p.n {
			rec := jbuf[k*int(bs+blockCRCSize) : (k+1)*int(bs+blockCRCSize)]
			if err := checkBlock(p.seg, p.loc+int64(k)*(bs+blockCRCSize), p.seq, v.disk, p.block+int64(k), rec, d[int64(k)*bs:int64(k+1)*bs]); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkBlock verifies a stored block (checksum then data) and copies it out.
func checkBlock(s *segment, loc int64, seq uint64, disk int, blk int64, rec, dst []byte) error {
	data := rec[blockCRCSize:]
	if got, want := blockCRC(seq, uint16(disk), uint64(blk), data), binary.LittleEndian.Uint32(rec); got != want {
		return &CorruptError{Segment: s.path, Offset: loc, Err: fmt.Errorf("%w: before-image of block %d of disk %d (seq %d) has checksum %#08x, stored %#08x", ErrCorrupt, blk, disk, seq, got, want)}
	}
	copy(dst, data)
	return nil
}

func (j *Journal) segByIDLocked(id uint32) *segment {
	if len(j.segs) == 0 || id < j.segs[0].id {
		return nil
	}
	i := int(id - j.segs[0].id)
	if i >= len(j.segs) {
		return nil
	}
	return j.segs[i]
}

// tailLocked returns n bytes at loc of the active segment's unwritten tail.
func (j *Journal) tailLocked(s *segment, loc int64, n int) []byte {
	rel := loc - s.written
	if rel < int64(len(j.flushing)) {
		return j.flushing[rel : rel+int64(n)]
	}
	rel -= int64(len(j.flushing))
	return j.wbuf[rel : rel+int64(n)]
}

// WriteAt writes to the view (copy-on-write into the scratch file; the
// replica and the journal are never written). A write that covers part of
// a block not written before reads the block's point-in-time content first.
// Writes past the end of the disk are refused.
func (v *View) WriteAt(p []byte, off int64) (int, error) {
	if v.scratch == nil {
		return 0, fmt.Errorf("journal: view of disk %d at %d is read-only", v.disk, v.point)
	}
	if off < 0 || int64(len(p)) > v.size-off {
		return 0, fmt.Errorf("journal: view write of %d bytes at %d outside disk of %d bytes", len(p), off, v.size)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.usable(); err != nil {
		return 0, err
	}
	bs, shift := v.j.bs, v.j.shift
	end := off + int64(len(p))
	pos := off
	for pos < end {
		b := pos >> shift
		bstart := b << shift
		bend := min(bstart+bs, v.size)
		if pos == bstart && bend <= end {
			// Whole blocks: straight from p, as many as follow.
			e := bend
			for e < end && min(e+bs, v.size) <= end {
				e = min(e+bs, v.size)
			}
			if _, err := v.scratch.WriteAt(p[pos-off:e-off], pos); err != nil {
				return int(pos - off), fmt.Errorf("journal: writing scratch file %s at %d: %w", v.path, pos, err)
			}
			v.markWritten(b, (e+bs-1)>>shift)
			pos = e
			continue
		}
		stop := min(end, bend)
		if v.isWritten(b) {
			if _, err := v.scratch.WriteAt(p[pos-off:stop-off], pos); err != nil {
				return int(pos - off), fmt.Errorf("journal: writing scratch file %s at %d: %w", v.path, pos, err)
			}
		} else {
			blk := make([]byte, bend-bstart)
			if err := v.readPoint(blk, bstart); err != nil {
				return int(pos - off), err
			}
			copy(blk[pos-bstart:], p[pos-off:stop-off])
			if _, err := v.scratch.WriteAt(blk, bstart); err != nil {
				return int(pos - off), fmt.Errorf("journal: writing scratch file %s at %d: %w", v.path, bstart, err)
			}
			v.markWritten(b, b+1)
		}
		pos = stop
	}
	return len(p), nil
}

// Extents calls fn, in order and without overlap, for the ranges of the
// view that may hold data: the union of the replica's data extents (all of
// it without Disk.Extents), blocks with a non-zero before-image after the
// point, and blocks the view wrote. Everything else reads as zero, so an
// export may skip it. Each window of the disk reads the replica's extents
// before the index: a block apply changes in between then still shows up
// through its before-image.
func (v *View) Extents(ctx context.Context, fn func(off, n int64) error) error {
	j := v.j
	bs, shift := j.bs, j.shift
	nblocks := (v.size + bs - 1) >> shift
	d := j.disks[v.disk]
	var bm [groupWords]uint64
	setRange := func(b0, b1 int64, base int64) {
		for b := max(b0, base); b < min(b1, base+groupBlocks); b++ {
			i := b - base
			bm[i>>6] |= 1 << (i & 63)
		}
	}
	var runOff, runEnd int64 = -1, -1
	flushRun := func() error {
		if runOff < 0 {
			return nil
		}
		err := fn(runOff, runEnd-runOff)
		runOff, runEnd = -1, -1
		return err
	}
	for base := int64(0); base < nblocks; base += groupBlocks {
		if err := ctx.Err(); err != nil {
			return err
		}
		v.mu.RLock()
		err := v.usable()
		v.mu.RUnlock()
		if err != nil {
			return err
		}
		bm = [groupWords]uint64{}
		wend := min(base+groupBlocks, nblocks)
		if d.Extents == nil {
			setRange(base, wend, base)
		} else {
			off := base << shift
			err := d.Extents(off, min(wend<<shift, v.size)-off, func(o, n int64, data bool) error {
				if data {
					setRange(o>>shift, (o+n+bs-1)>>shift, base)
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("journal: extents of replica disk %d: %w", v.disk, err)
			}
		}
		j.mu.Lock()
		if v.invalid != nil {
			err := v.invalid
			j.mu.Unlock()
			return err
		}
		if page := j.idx[v.disk].pages[base/groupBlocks]; page != nil {
			for ci, runs := range page {
				if len(runs) > 0 {
					bm[ci>>1] |= uint64(storedAfter(runs, v.point)) << (32 * (ci & 1))
				}
			}
		}
		j.mu.Unlock()
		v.mu.RLock()
		if g := v.written[base/groupBlocks]; g != nil {
			for i := range bm {
				bm[i] |= g[i]
			}
		}
		v.mu.RUnlock()
		for i := int64(0); i < wend-base; {
			w := bm[i>>6] >> (i & 63)
			if w == 0 {
				i = (i | 63) + 1
				continue
			}
			i += int64(bits.TrailingZeros64(w))
			if i >= wend-base {
				break
			}
			k := i
			for k < wend-base && bm[k>>6]&(1<<(k&63)) != 0 {
				k++
			}
			o, e := (base+i)<<shift, min((base+k)<<shift, v.size)
			if runEnd == o {
				runEnd = e
			} else {
				if err := flushRun(); err != nil {
					return err
				}
				runOff, runEnd = o, e
			}
			i = k
		}
	}
	return flushRun()
}

// Close removes the scratch file and releases what the view pinned.
func (v *View) Close() error {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return nil
	}
	v.closed = true
	v.mu.Unlock()
	v.j.mu.Lock()
	delete(v.j.views, v)
	v.j.mu.Unlock()
	if v.scratch == nil {
		return nil
	}
	err := errors.Join(v.scratch.Close(), os.Remove(v.path))
	if err != nil {
		return fmt.Errorf("journal: closing view of disk %d at %d: %w", v.disk, v.point, err)
	}
	return nil
}
