package capture

import "math/bits"

// Dirty-bitmap operations. A block is dirty when the replica may lack its
// current content and nobody is sending it; in flight when a resync has
// taken it and the far end has not confirmed it. A block can be both: it
// was rewritten while being sent, so the send in progress is stale and the
// block must go again after it (TakeDirty skips such blocks until the send
// in progress is completed or requeued, so two sends of one block are
// never outstanding and cannot land out of order).

// setBlocks marks blocks [from, to) dirty without maintaining the counters;
// for recovery, which calls recount afterwards.
func (t *Tracker) setBlocks(from, to int64) {
	forEachWord(from, min(to, t.geo.nBlocks()), func(i int, m uint64) { t.dirty[i] |= m })
}

func (t *Tracker) recount() {
	t.nDirty, t.nInflight, t.nUnion, t.nTakeable = 0, 0, 0, 0
	for i := range t.dirty {
		d, f := t.dirty[i], t.inflight[i]
		t.nDirty += popcount(d)
		t.nInflight += popcount(f)
		t.nUnion += popcount(d | f)
		t.nTakeable += popcount(d &^ f)
	}
}

// setWord stores new dirty and in-flight words and updates the counters.
func (t *Tracker) setWord(i int, d, f uint64) {
	od, of := t.dirty[i], t.inflight[i]
	t.nDirty += popcount(d) - popcount(od)
	t.nInflight += popcount(f) - popcount(of)
	t.nUnion += popcount(d|f) - popcount(od|of)
	t.nTakeable += popcount(d&^f) - popcount(od&^of)
	t.dirty[i], t.inflight[i] = d, f
	if d|f != od|of {
		t.pageMarks[(t.bmOff+8*int64(i))>>12] = 3
	}
}

// rangeEnd returns min(off+n, disk size) without overflowing.
func (t *Tracker) rangeEnd(off, n int64) int64 {
	if n > t.geo.diskSize-off {
		return t.geo.diskSize
	}
	return off + n
}

// blocksOut returns the blocks touching [off, off+n), clamped to the disk.
func (t *Tracker) blocksOut(off, n int64) (from, to int64) {
	if n <= 0 || off >= t.geo.diskSize || off < 0 && n <= -off {
		return 0, 0
	}
	if off < 0 {
		n, off = n+off, 0
	}
	end := t.rangeEnd(off, n)
	return off >> t.geo.blockShift, (end + t.geo.blockSize() - 1) >> t.geo.blockShift
}

// blocksIn returns the blocks entirely inside [off, off+n); the partial
// last block of the disk counts as entire when the range reaches the end.
func (t *Tracker) blocksIn(off, n int64) (from, to int64) {
	if n <= 0 || off < 0 || off >= t.geo.diskSize {
		return 0, 0
	}
	from = (off + t.geo.blockSize() - 1) >> t.geo.blockShift
	if end := t.rangeEnd(off, n); end == t.geo.diskSize {
		to = t.geo.nBlocks()
	} else {
		to = end >> t.geo.blockShift
	}
	if to < from {
		return 0, 0
	}
	return from, to
}

// MarkDirty records that the replica may lack [off, off+n), rounded out to
// whole blocks. It is in memory only: for a workload write, call it between
// BeginWrite and EndWrite, so the write's extent stays in the persisted
// activity log until a Persist has put the blocks in the bitmap.
func (t *Tracker) MarkDirty(off, n int64) {
	from, to := t.blocksOut(off, n)
	if from == to {
		return
	}
	t.mu.Lock()
	forEachWord(from, to, func(i int, m uint64) { t.setWord(i, t.dirty[i]|m, t.inflight[i]) })
	t.mu.Unlock()
}

// MarkAllDirty marks the whole disk dirty (for example after the replica
// was lost). In memory only: call Persist to make it durable.
func (t *Tracker) MarkAllDirty() {
	t.mu.Lock()
	last := len(t.dirty) - 1
	for i := range t.dirty {
		m := ^uint64(0)
		if i == last {
			m = tailMask(t.geo.nBlocks())
		}
		t.setWord(i, m, t.inflight[i])
	}
	t.mu.Unlock()
}

// TakeDirty returns the next run of dirty blocks at or after an internal
// cursor (wrapping to the start), at most maxLen bytes rounded down to
// whole blocks but at least one block, and moves it to in flight. The run
// ends at the end of the disk. ok is false when nothing can be taken.
func (t *Tracker) TakeDirty(maxLen int64) (off, n int64, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nTakeable == 0 {
		return 0, 0, false
	}
	b := t.findTakeable(t.cursor)
	if b < 0 {
		b = t.findTakeable(0)
	}
	if b < 0 {
		return 0, 0, false // unreachable while nTakeable is accurate
	}
	limit := min(t.geo.nBlocks(), b+max(1, maxLen>>t.geo.blockShift))
	end := b
	for end < limit {
		s := uint(end & 63)
		i := end >> 6
		run := int64(bits.TrailingZeros64(^((t.dirty[i] &^ t.inflight[i]) >> s)))
		end += run
		if run < int64(64-s) {
			break
		}
	}
	end = min(end, limit)
	forEachWord(b, end, func(i int, m uint64) { t.setWord(i, t.dirty[i]&^m, t.inflight[i]|m) })
	t.cursor = end
	if t.cursor >= t.geo.nBlocks() {
		t.cursor = 0
	}
	off = b << t.geo.blockShift
	n = min(end<<t.geo.blockShift, t.geo.diskSize) - off
	return off, n, true
}

// findTakeable returns the first block >= from that is dirty and not in
// flight, or -1.
func (t *Tracker) findTakeable(from int64) int64 {
	nb := t.geo.nBlocks()
	if from >= nb {
		return -1
	}
	i := int(from >> 6)
	w := (t.dirty[i] &^ t.inflight[i]) & (^uint64(0) << uint(from&63))
	for w == 0 {
		i++
		if i >= len(t.dirty) {
			return -1
		}
		w = t.dirty[i] &^ t.inflight[i]
	}
	return int64(i)<<6 + int64(bits.TrailingZeros64(w))
}

// Complete records that the far end durably has [off, off+n): blocks
// entirely inside leave the in-flight set. A block rewritten meanwhile
// stays dirty and will be sent again.
func (t *Tracker) Complete(off, n int64) {
	from, to := t.blocksIn(off, n)
	if from == to {
		return
	}
	t.mu.Lock()
	forEachWord(from, to, func(i int, m uint64) { t.setWord(i, t.dirty[i], t.inflight[i]&^m) })
	t.mu.Unlock()
}

// Requeue returns every in-flight block to dirty: the connection that was
// sending them is gone and the far end's state for them is unknown.
func (t *Tracker) Requeue() {
	t.mu.Lock()
	for i, f := range t.inflight {
		if f != 0 {
			t.setWord(i, t.dirty[i]|f, 0)
		}
	}
	t.mu.Unlock()
}

// bytesOf converts a block count into bytes, the partial last block of the
// disk counting only its real size when lastSet.
func (t *Tracker) bytesOf(blocks int64, lastSet bool) int64 {
	b := blocks << t.geo.blockShift
	if lastSet {
		b -= t.geo.nBlocks()<<t.geo.blockShift - t.geo.diskSize
	}
	return b
}

func (t *Tracker) lastBlockIn(w []uint64) bool {
	last := t.geo.nBlocks() - 1
	return w[last>>6]&(1<<uint(last&63)) != 0
}

// DirtyBytes is the amount the replica may lack: dirty plus in flight.
func (t *Tracker) DirtyBytes() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	last := t.geo.nBlocks() - 1
	lastSet := (t.dirty[last>>6]|t.inflight[last>>6])&(1<<uint(last&63)) != 0
	return t.bytesOf(t.nUnion, lastSet)
}

// InflightBytes is the amount taken by TakeDirty and not yet completed.
func (t *Tracker) InflightBytes() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.bytesOf(t.nInflight, t.lastBlockIn(t.inflight))
}
