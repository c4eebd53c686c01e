package agent

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"standby/internal/bufpool"
	"standby/internal/wire"
)

// qrec is a record waiting for the process server's acknowledgment.
type qrec struct {
	wire.Record
	disk   *disk
	buf    *[]byte    // the pooled buffer Data lies in (captured writes), nil otherwise
	shared *sharedBuf // the copy read buffer Data lies in, nil otherwise
	batch  uint64     // the queue's batch (nextBatch) that took it last; 0: not taken
}

// sharedBuf is a copy read buffer that several queued copy records point
// into; it goes back to the pool when the last of them is released.
type sharedBuf struct {
	b    *[]byte
	refs int // guarded by queue.mu
}

// newShared wraps a buffer from q.bufs; the caller holds the first
// reference and drops it with unshare when it has queued its records.
func (q *queue) newShared(b *[]byte) *sharedBuf { return &sharedBuf{b: b, refs: 1} }

func (q *queue) unshare(s *sharedBuf) {
	q.mu.Lock()
	q.unshareLocked(s)
	q.mu.Unlock()
}

func (q *queue) unshareLocked(s *sharedBuf) {
	if s == nil {
		return
	}
	s.refs--
	if s.refs == 0 {
		q.bufs.Put(s.b)
	}
}

// releaseLocked gives back what a record's data lies in.
func (q *queue) releaseLocked(r *qrec) {
	q.bufs.Put(r.buf)
	q.unshareLocked(r.shared)
}

// dropLocked gives back the data of a record being dropped, unless it is
// in the batch the sender is sending right now: then the release waits for
// encoded, so the buffer is not lent to a new write mid-send. Only that
// batch: a send can block for as long as the process server does not read,
// and an overflow meanwhile drops the whole queue, whose buffers would
// otherwise all wait, while new writes took new ones.
func (q *queue) dropLocked(r *qrec) {
	if q.encoding && r.batch == q.batchSeq {
		q.afterEncode = append(q.afterEncode, qrec{buf: r.buf, shared: r.shared})
		return
	}
	q.releaseLocked(r)
}

// queue is the agent's in-memory change log: one sequence for the whole
// machine, records kept in sequence order until the process server has them
// durably. Its bound is what turns a long outage into bitmap mode rather
// than unbounded memory.
type queue struct {
	mu   sync.Mutex
	cond *sync.Cond

	boot   uint64 // high bits of every sequence number of this run
	next   uint64 // counter within this run
	recs   []qrec // seq order, all > cached
	head   int    // recs[:head] already dropped (compacted lazily)
	sent   int    // index into recs of the first record not yet sent on this connection
	bytes  int64  // data bytes held
	copies int64  // copy data bytes held
	limit  int64

	cached  uint64 // process server has everything <= cached
	durable uint64 // master target has everything <= durable
	lastSeq uint64 // newest seq handed out
	epochAt uint64 // seq of the newest epoch marker
	// epochBytes is the captured data queued since the newest epoch
	// marker (wire.MaxEpochBytes bounds it).
	epochBytes int64

	bitmapMode bool   // overflowed: captured writes only mark dirty until drained
	overflows  uint64 // times the queue overflowed

	// A full queue holds a write for at most holdMax, and for at most
	// holdBudget per second in all, before it overflows: long enough to
	// ride out a slow fsync downstream, never long enough to tie the
	// workload to the replication link.
	holdMax, holdBudget time.Duration
	holdWindow          time.Time
	heldInWindow        time.Duration
	holds               uint64 // writes that were held

	linger time.Duration // how long a small batch waits for more records

	// timeline samples (seq, time) so lag can be told without a timestamp per record.
	timeline []stamp

	inflight []copyRef // copies sent, waiting for durable
	disks    []*disk
	gen      uint64 // bumped whenever unconfirmed copies are forgotten
	closed   bool

	// bufs lends the NBD server its payload buffers (kept as captured
	// writes' data) and the copy readers theirs. A buffer goes back when
	// its record is acknowledged: the process server has it, so the sender
	// is done with it. encoding is set while the sender sends a batch of
	// records it took (large records' data goes to the connection from
	// their own buffers); records dropped meanwhile (acknowledged, an
	// overflow, a requeue) keep their buffers in afterEncode until it is
	// done, instead of lending them to a new write mid-send.
	bufs        bufpool.Pool
	encoding    bool
	batchSeq    uint64 // numbers the batches nextBatch hands out
	afterEncode []qrec
}

type stamp struct {
	seq uint64
	at  time.Time
}

type copyRef struct {
	seq  uint64
	disk *disk
	off  int64
	n    int64
}

func newQueue(boot uint64, limit int64, holdMax, linger time.Duration) *queue {
	q := &queue{boot: boot, limit: limit, holdMax: holdMax, holdBudget: holdMax, linger: linger}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// Sequence numbers carry the boot count in their high bits so they rise
// across restarts without persisting a counter on every write.
const seqBootShift = 40

func (q *queue) nextSeqLocked() uint64 {
	q.next++
	s := q.boot<<seqBootShift | q.next
	q.lastSeq = s
	now := time.Now()
	if n := len(q.timeline); n == 0 || now.Sub(q.timeline[n-1].at) > 20*time.Millisecond {
		q.timeline = append(q.timeline, stamp{seq: s, at: now})
	}
	return s
}

// captureBuf returns a buffer from the queue's pool holding a copy of p.
func (q *queue) captureBuf(p []byte) *[]byte {
	b := q.bufs.Get(len(p))
	copy(*b, p)
	return b
}

// pushCaptured queues a captured write or zero; buf, when not nil, is the
// buffer of q.bufs r.Data lies in, owned by the queue from here on. It returns false when the queue is in bitmap mode: the caller's
// range has then been marked dirty. The caller holds the region lock, which
// is what makes seq order match the order of overlapping writes on the disk.
func (q *queue) pushCaptured(d *disk, r wire.Record, buf *[]byte) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	need := int64(len(r.Data)) + 64
	if !q.bitmapMode && q.bytes+need > q.limit {
		q.holdLocked(need)
	}
	if !q.bitmapMode && q.bytes+need > q.limit {
		q.overflowLocked()
	}
	if q.bitmapMode {
		d.tracker.MarkDirty(int64(r.Offset), int64(r.Length))
		d.tracker.EndWrite(int64(r.Offset), int64(r.Length))
		// The sync-start goes before anything queued after this write (a
		// FLUSH's epoch marker): left to the resync loop, it could come
		// after a marker that the master target would take for a
		// consistent point lacking this acknowledged write. Only when
		// not resyncing already: beginResyncLocked also resets the
		// resync's progress total, which every write would then undo.
		if !d.resyncing {
			d.beginResyncLocked(q)
		}
		d.kick()
		q.bufs.Put(buf)
		return false
	}
	r.Seq = q.nextSeqLocked()
	q.recs = append(q.recs, qrec{Record: r, disk: d, buf: buf})
	q.bytes += int64(len(r.Data)) + 64
	q.epochBytes += int64(len(r.Data)) + 64
	if q.epochBytes >= wire.MaxEpochBytes {
		// Any prefix of the write sequence is crash-consistent, so a
		// marker here is as good as the timer's.
		q.pushMarkerLocked(nil, wire.Record{Op: wire.OpEpoch, Flags: wire.EpochSize, Offset: uint64(time.Now().UnixNano())})
	}
	q.cond.Broadcast()
	return true
}

// holdLocked waits, within the hold bounds, for room for need bytes.
// Caller holds q.mu (cond.Wait releases it meanwhile).
func (q *queue) holdLocked(need int64) {
	if q.holdMax <= 0 || q.closed {
		return
	}
	now := time.Now()
	if now.Sub(q.holdWindow) >= time.Second {
		q.holdWindow, q.heldInWindow = now, 0
	}
	left := min(q.holdMax, q.holdBudget-q.heldInWindow)
	if left <= 0 {
		return
	}
	q.holds++
	deadline := now.Add(left)
	t := time.AfterFunc(left, func() {
		q.mu.Lock()
		q.cond.Broadcast()
		q.mu.Unlock()
	})
	defer t.Stop()
	for !q.closed && !q.bitmapMode && q.bytes+need > q.limit && time.Now().Before(deadline) {
		q.cond.Wait()
	}
	q.heldInWindow += time.Since(now)
}

// waitCopyRoom waits while the queue is over half full, so copies never
// crowd out captured writes. It is called before a region is locked.
func (q *queue) waitCopyRoom(ctx context.Context, n int64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.closed && ctx.Err() == nil && q.bytes+n > q.limit/2 && q.bytes > 0 {
		q.cond.Wait()
	}
	if q.closed {
		return context.Canceled
	}
	return ctx.Err()
}

// pushCopy queues a copy (initial sync, resync or scan). shared, when not
// nil, is the read buffer r.Data lies in; the record takes a reference.
func (q *queue) pushCopy(d *disk, r wire.Record, shared *sharedBuf) uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	r.Seq = q.nextSeqLocked()
	if shared != nil {
		shared.refs++
	}
	q.recs = append(q.recs, qrec{Record: r, disk: d, shared: shared})
	sz := int64(len(r.Data)) + 64
	q.bytes += sz
	q.copies += sz
	q.cond.Broadcast()
	return r.Seq
}

// copiesQueued registers the range [off, off+n), taken from the tracker
// and queued as copies numbered up to last, as in flight until the master
// target has last durably: then the tracker completes it. One range for
// the whole read, not one per record: a record covers part of a tracker
// block where a read splits at holes and zero runs (4 KiB) inside a larger
// block (8 KiB and up on disks over 512 GiB), and Complete clears only
// whole blocks, so per-record ranges left such a block in flight for good
// and the resync never ended (found by review). Nothing is registered if
// the copies were forgotten meanwhile (gen moved on): the tracker's
// Requeue has sent the range back to dirty.
func (q *queue) copiesQueued(gen uint64, d *disk, off, n int64, last uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.gen != gen || d.tracker == nil {
		return
	}
	if q.durable >= last {
		// Durable already (the reader was descheduled after its last
		// push): no later acknowledgment may come to complete it.
		d.tracker.Complete(off, n)
		d.kick()
		return
	}
	// In seq order (ack walks the front): several readers finish out of
	// order.
	i := len(q.inflight)
	for i > 0 && q.inflight[i-1].seq > last {
		i--
	}
	q.inflight = slices.Insert(q.inflight, i, copyRef{seq: last, disk: d, off: off, n: n})
}

// requeueCopies sends every unconfirmed copy back to dirty.
func (q *queue) requeueCopies() {
	q.mu.Lock()
	q.requeueCopiesLocked()
	q.cond.Broadcast()
	q.mu.Unlock()
}

// pushMarker queues an epoch or sync marker.
func (q *queue) pushMarker(d *disk, r wire.Record) uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pushMarkerLocked(d, r)
}

func (q *queue) pushMarkerLocked(d *disk, r wire.Record) uint64 {
	r.Seq = q.nextSeqLocked()
	if r.Op == wire.OpEpoch {
		q.epochAt = r.Seq
	}
	if r.Op.ClosesEpoch() {
		q.epochBytes = 0
	}
	q.recs = append(q.recs, qrec{Record: r, disk: d})
	q.bytes += int64(len(r.Data)) + 64
	q.cond.Broadcast()
	return r.Seq
}

// epochIfDirty closes an epoch if anything was queued since the last one.
func (q *queue) epochIfDirty(flags uint8) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.lastSeq > q.epochAt {
		// The marker carries its wall-clock time: it becomes a recovery
		// point's time at the master target.
		q.pushMarkerLocked(nil, wire.Record{Op: wire.OpEpoch, Flags: flags, Offset: uint64(time.Now().UnixNano())})
	}
}

// overflowLocked drops every queued record and falls back to the dirty
// bitmap: what was dropped is marked dirty, in-flight copies go back to
// dirty, and each disk's replica is declared inconsistent until resynced.
func (q *queue) overflowLocked() {
	q.overflows++
	if len(q.disks) > 0 {
		q.disks[0].a.log.Warn("change queue full: falling back to the dirty bitmap until the process server catches up", "queued_bytes", q.bytes, "limit", q.limit, "cached_seq", q.cached)
	}
	disks := map[*disk]bool{}
	for _, r := range q.recs[q.head:] {
		q.dropLocked(&r)
		if r.disk == nil {
			continue
		}
		switch r.Op {
		case wire.OpWrite, wire.OpZero:
			r.disk.tracker.MarkDirty(int64(r.Offset), int64(r.Length))
			r.disk.tracker.EndWrite(int64(r.Offset), int64(r.Length))
			disks[r.disk] = true
		case wire.OpSyncStart, wire.OpSyncDone:
			// The master target may never have seen this marker: a
			// dropped sync-start (an earlier overflow's, still unsent)
			// would leave it applying epochs over the resync's holes as
			// if the replica were consistent, and a dropped sync-done
			// would leave the disk inconsistent there for good. Either
			// way the disk starts its resync again with a new sync-start,
			// and its resync loop sends sync-done when nothing is dirty (a
			// scan-mode disk's pass, repeated since gen changes, does).
			r.disk.resyncing = false
			disks[r.disk] = true
		}
	}
	// Emptied first: every record was released above, so requeueing must
	// not find the copies among them again.
	q.recs, q.head, q.sent, q.bytes, q.copies, q.epochBytes = nil, 0, 0, 0, 0, 0
	q.requeueCopiesLocked()
	q.bitmapMode = true
	for d := range disks {
		d.beginResyncLocked(q)
		d.kick()
	}
}

// requeueCopiesLocked forgets every copy not yet durable at the master
// target: its range goes back to dirty and will be read again.
func (q *queue) requeueCopiesLocked() {
	q.inflight = nil
	q.gen++
	for _, d := range q.disks {
		if d.tracker != nil {
			d.tracker.Requeue()
		}
		d.kick()
	}
	// Drop copy records still queued: they will be re-taken from dirty.
	if q.copies > 0 {
		kept := q.recs[:0]
		for i, r := range q.recs {
			if i < q.head {
				continue
			}
			if r.Op == wire.OpCopy || r.Op == wire.OpCopyZero {
				q.bytes -= int64(len(r.Data)) + 64
				q.dropLocked(&r)
				continue
			}
			kept = append(kept, r)
		}
		// clear references so dropped data can be collected
		for i := len(kept); i < len(q.recs); i++ {
			q.recs[i] = qrec{}
		}
		q.recs, q.head, q.copies = kept, 0, 0
	}
	q.sent = 0
}

// disconnected is called when the session with the process server ends:
// nothing unacknowledged is assumed delivered.
func (q *queue) disconnected() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.requeueCopiesLocked()
	q.sent = 0
	q.cond.Broadcast()
}

// ack applies the process server's acknowledgment.
func (q *queue) ack(a wire.Ack) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if a.Cached > q.cached {
		q.cached = a.Cached
	}
	i := q.head
	for i < len(q.recs) && q.recs[i].Seq <= q.cached {
		r := &q.recs[i]
		switch r.Op {
		case wire.OpWrite, wire.OpZero:
			r.disk.tracker.EndWrite(int64(r.Offset), int64(r.Length))
		}
		sz := int64(len(r.Data)) + 64
		q.bytes -= sz
		if r.Op == wire.OpCopy || r.Op == wire.OpCopyZero {
			q.copies -= sz
		}
		// The process server may acknowledge records this session has
		// not sent yet (it cached them from an earlier session whose ack
		// was lost): the sender may be copying them now.
		q.dropLocked(r)
		q.recs[i] = qrec{}
		i++
	}
	// q.sent is an index into q.recs like q.head: records dropped from the
	// front do not move it (only compaction below does). It once moved back
	// by the number dropped, so every acknowledgment that found the sender
	// ahead made it send that many records again.
	q.head = i
	if q.sent < q.head {
		q.sent = q.head
	}
	if q.head > 4096 && q.head > len(q.recs)/2 {
		n := copy(q.recs, q.recs[q.head:])
		for j := n; j < len(q.recs); j++ {
			q.recs[j] = qrec{}
		}
		q.recs = q.recs[:n]
		q.sent -= q.head
		q.head = 0
	}
	if a.Durable > q.durable {
		q.durable = a.Durable
		k := 0
		for k < len(q.inflight) && q.inflight[k].seq <= q.durable {
			c := q.inflight[k]
			c.disk.tracker.Complete(c.off, c.n)
			c.disk.kick()
			k++
		}
		q.inflight = q.inflight[k:]
		t := 0
		for t < len(q.timeline) && q.timeline[t].seq <= q.durable {
			t++
		}
		q.timeline = q.timeline[t:]
	}
	if q.bitmapMode && q.bytes < q.limit/4 {
		q.bitmapMode = false
	}
	q.cond.Broadcast()
}

// resetSend rewinds to the first unacknowledged record for a new session.
func (q *queue) resetSend() {
	q.mu.Lock()
	q.sent = q.head
	q.mu.Unlock()
}

// nextBatch waits for unsent records and returns up to maxBytes of them.
func (q *queue) nextBatch(ctx context.Context, maxBytes int) (wire.Batch, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.sent < q.head {
		q.sent = q.head
	}
	for q.sent >= len(q.recs) {
		if q.closed {
			return wire.Batch{}, context.Canceled
		}
		if err := ctx.Err(); err != nil {
			return wire.Batch{}, err
		}
		q.cond.Wait()
		if q.sent < q.head {
			q.sent = q.head
		}
	}
	q.lingerLocked(maxBytes / 4)
	if q.sent < q.head {
		q.sent = q.head
	}
	if q.sent >= len(q.recs) {
		return wire.Batch{}, errRetry
	}
	var b wire.Batch
	size := 0
	// A batch holds either copies only or no copies: the process server and
	// master target pass copy batches by their durable logs (internal/relay),
	// which only works for whole batches.
	copies := !q.recs[q.sent].Op.Captured()
	q.batchSeq++
	for q.sent < len(q.recs) && (size == 0 || size+len(q.recs[q.sent].Data) <= maxBytes) && len(b.Records) < 65536 {
		r := q.recs[q.sent].Record
		if !r.Op.Captured() != copies {
			break
		}
		q.recs[q.sent].batch = q.batchSeq
		b.Records = append(b.Records, r)
		size += len(r.Data) + 24
		q.sent++
	}
	b.First, b.Last = b.Records[0].Seq, b.Records[len(b.Records)-1].Seq
	q.encoding = true
	return b, nil
}

// encoded tells the queue the sender is done with the records of the
// batch from nextBatch: the frame is sent, or the send failed.
func (q *queue) encoded() {
	q.mu.Lock()
	q.encoding = false
	for i := range q.afterEncode {
		q.releaseLocked(&q.afterEncode[i])
		q.afterEncode[i] = qrec{}
	}
	q.afterEncode = q.afterEncode[:0]
	q.mu.Unlock()
}

// errRetry: nothing left to send after lingering (an overflow dropped it).
var errRetry = errors.New("agent: nothing to send")

// lingerLocked lets a small batch wait up to q.linger for company: every
// frame costs the process server an fdatasync and the master target an
// intake fsync, so a workload of small synchronous writes would otherwise
// make each of them pay for one. The replica falls behind by at most the
// linger, far inside any recovery point objective. Caller holds q.mu.
func (q *queue) lingerLocked(enough int) {
	if q.linger <= 0 {
		return
	}
	unsent := func() int {
		n := 0
		for i := max(q.sent, q.head); i < len(q.recs) && n < enough; i++ {
			n += len(q.recs[i].Data) + 24
		}
		return n
	}
	if unsent() >= enough {
		return
	}
	// Sleep rather than wait on the condition: every captured write
	// broadcasts it, and thousands of wake-ups a second would cost the
	// workload more CPU than the linger saves.
	q.mu.Unlock()
	time.Sleep(q.linger)
	q.mu.Lock()
}

// close wakes every waiter for shutdown.
func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Broadcast()
	q.mu.Unlock()
}

// wake is used by context watchers so cond waits notice cancellation.
func (q *queue) wake() {
	q.mu.Lock()
	q.cond.Broadcast()
	q.mu.Unlock()
}

type queueStats struct {
	Bytes, Copies            int64
	Records                  int
	LastSeq, Cached, Durable uint64
	Lag                      time.Duration
	BitmapMode               bool
	Overflows, Holds         uint64
	InflightCopies           int
}

func (q *queue) stats() queueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := queueStats{Bytes: q.bytes, Copies: q.copies, Records: len(q.recs) - q.head, LastSeq: q.lastSeq, Cached: q.cached, Durable: q.durable, BitmapMode: q.bitmapMode, Overflows: q.overflows, Holds: q.holds, InflightCopies: len(q.inflight)}
	if q.durable < q.lastSeq && len(q.timeline) > 0 {
		s.Lag = time.Since(q.timeline[0].at)
	}
	return s
}

func (q *queue) generation() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.gen
}
