package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"standby/internal/wire"
)

// newTestAgent opens an agent on one 16 MiB disk file without running it:
// the queue and the NBD backend of the disk are driven directly.
func newTestAgent(t *testing.T, queueBytes int64) (*Agent, *disk) {
	t.Helper()
	a := newTestAgentDisks(t, queueBytes, 1)
	return a, a.disks[0]
}

// newTestAgentDisks is newTestAgent with n disks.
func newTestAgentDisks(t *testing.T, queueBytes int64, n int) *Agent {
	t.Helper()
	dir := t.TempDir()
	var disks []DiskConfig
	for i := range n {
		img := filepath.Join(dir, fmt.Sprintf("disk%d.img", i))
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, 16<<20); err != nil {
			t.Fatal(err)
		}
		disks = append(disks, DiskConfig{Name: fmt.Sprintf("disk%d", i), Path: img})
	}
	a, err := New(Config{
		Machine: "m", StateDir: filepath.Join(dir, "state"), ProcessServer: "unused:1",
		Disks:      disks,
		QueueBytes: queueBytes, QueueHold: -1, SendLinger: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.closeDisks)
	return a
}

// capturedOnly drops the markers and copies a fresh agent queues for its
// initial sync, so tests see only what they wrote.
func capturedOnly(recs []wire.Record) []wire.Record {
	var out []wire.Record
	for _, r := range recs {
		if r.Op == wire.OpWrite || r.Op == wire.OpZero {
			out = append(out, r)
		}
	}
	return out
}

func TestCapturedWritesKeepTheirBytesUntilAcknowledged(t *testing.T) {
	a, d := newTestAgent(t, 64<<20)
	ctx := context.Background()
	want := map[uint64][]byte{}
	for i := range 64 {
		p := bytes.Repeat([]byte{byte(i + 1)}, 4096*(1+i%3))
		off := uint64(i) * 64 << 10
		if err := d.WriteAt(ctx, p, int64(off), false); err != nil {
			t.Fatal(err)
		}
		want[off] = p
	}
	b, err := a.q.nextBatch(ctx, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	// Acknowledge everything before the first captured write: the
	// buffers handed back must not be those of the batch.
	recs := capturedOnly(b.Records)
	a.q.encoded()
	if len(recs) != 64 {
		t.Fatalf("batch holds %d captured writes, want 64", len(recs))
	}
	a.q.ack(wire.Ack{Cached: recs[0].Seq - 1})
	// New writes take buffers from the pool; none may be one still queued.
	for i := range 64 {
		p := bytes.Repeat([]byte{0xEE}, 4096)
		if err := d.WriteAt(ctx, p, int64(8<<20+i*4096), false); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range recs {
		if !bytes.Equal(r.Data, want[r.Offset]) {
			t.Fatalf("record at %d changed while queued", r.Offset)
		}
	}
	// Once acknowledged the records leave the queue.
	a.q.ack(wire.Ack{Cached: recs[len(recs)-1].Seq})
	if st := a.q.stats(); st.Records != 64 {
		t.Fatalf("%d records left after the acknowledgment, want the 64 written after it", st.Records)
	}
}

// takeEightWrites writes 8 distinct 64 KiB blocks and has the sender take
// them as one batch, which it is then "encoding" (encoded not called).
func takeEightWrites(t *testing.T, a *Agent, d *disk) (wire.Batch, []wire.Record) {
	t.Helper()
	ctx := context.Background()
	b, err := a.q.nextBatch(ctx, 64<<20) // the initial-sync markers
	if err != nil {
		t.Fatal(err)
	}
	a.q.encoded()
	a.q.ack(wire.Ack{Cached: b.Last})
	for i := range 8 {
		if err := d.WriteAt(ctx, bytes.Repeat([]byte{byte(0x10 + i)}, 64<<10), int64(i)<<16, false); err != nil {
			t.Fatal(err)
		}
	}
	if b, err = a.q.nextBatch(ctx, 64<<20); err != nil {
		t.Fatal(err)
	}
	recs := capturedOnly(b.Records)
	if len(recs) != 8 {
		t.Fatalf("batch holds %d writes, want 8", len(recs))
	}
	return b, recs
}

// An overflow while the sender copies a batch out of its records must not
// lend those records' buffers to new writes.
func TestOverflowDuringEncodingKeepsBatchBytes(t *testing.T) {
	a, d := newTestAgent(t, 1<<20)
	ctx := context.Background()
	_, recs := takeEightWrites(t, a, d)
	// Still "encoding": overflow the queue with more writes than it holds.
	for i := range 32 {
		if err := d.WriteAt(ctx, bytes.Repeat([]byte{0xAA}, 64<<10), int64(2<<20+i<<16), false); err != nil {
			t.Fatal(err)
		}
	}
	st := a.q.stats()
	if !st.BitmapMode || st.Overflows == 0 {
		t.Fatalf("queue did not overflow: %+v", st)
	}
	// Leave bitmap mode (the process server caught up) and write again:
	// these writes take buffers from the pool.
	a.q.ack(wire.Ack{Cached: a.q.stats().LastSeq})
	if a.q.stats().BitmapMode {
		t.Fatal("still in bitmap mode after everything was acknowledged")
	}
	for i := range 32 {
		if err := d.WriteAt(ctx, bytes.Repeat([]byte{0xBB}, 64<<10), int64(4<<20+i<<16), false); err != nil {
			t.Fatal(err)
		}
	}
	for i, r := range recs {
		if !bytes.Equal(r.Data, bytes.Repeat([]byte{byte(0x10 + i)}, 64<<10)) {
			t.Fatalf("record %d of the batch being encoded was overwritten after the overflow", i)
		}
	}
	a.q.encoded()
	// The overflowed ranges are dirty: nothing written is lost.
	if got := d.tracker.DirtyBytes(); got < 32<<16 {
		t.Fatalf("dirty bytes after overflow %d, want at least %d", got, 32<<16)
	}
}

// A send may block for as long as the process server does not read (its
// cache full), and the queue may overflow meanwhile: only the buffers of
// the batch being sent may wait for the send, not those of batches sent
// before, or the agent would hold a second queue's worth of buffers while
// new writes took new ones.
func TestOverflowDuringSendHoldsOnlyThatBatch(t *testing.T) {
	a, d := newTestAgent(t, 1<<20)
	ctx := context.Background()
	_, first := takeEightWrites(t, a, d)
	a.q.encoded() // sent, not yet acknowledged
	for i := range 4 {
		if err := d.WriteAt(ctx, bytes.Repeat([]byte{byte(0x30 + i)}, 64<<10), int64(1<<20+i<<16), false); err != nil {
			t.Fatal(err)
		}
	}
	b, err := a.q.nextBatch(ctx, 64<<20) // being sent: encoded not called
	if err != nil {
		t.Fatal(err)
	}
	second := capturedOnly(b.Records)
	if len(second) != 4 {
		t.Fatalf("second batch holds %d writes, want 4", len(second))
	}
	for i := range 32 { // more than the queue holds: it overflows
		if err := d.WriteAt(ctx, bytes.Repeat([]byte{0xAA}, 64<<10), int64(2<<20+i<<16), false); err != nil {
			t.Fatal(err)
		}
	}
	if st := a.q.stats(); !st.BitmapMode || st.Overflows == 0 {
		t.Fatalf("queue did not overflow: %+v", st)
	}
	a.q.mu.Lock()
	held := len(a.q.afterEncode)
	a.q.mu.Unlock()
	if held != len(b.Records) {
		t.Fatalf("%d records' buffers wait for the send, want the %d of the batch being sent (the %d sent before were released)", held, len(b.Records), len(first))
	}
	for i, r := range second {
		if !bytes.Equal(r.Data, bytes.Repeat([]byte{byte(0x30 + i)}, 64<<10)) {
			t.Fatalf("record %d of the batch being sent was overwritten after the overflow", i)
		}
	}
	a.q.encoded()
}

// The process server may acknowledge records the sender has taken but not
// sent (it cached them in an earlier session whose ack was lost): their
// buffers must not go to new writes while the sender copies them. Seen as
// a data race in TestRestartsUnderWrites (internal/processserver).
func TestAckDuringEncodingKeepsBatchBytes(t *testing.T) {
	a, d := newTestAgent(t, 64<<20)
	ctx := context.Background()
	b, recs := takeEightWrites(t, a, d)
	// Still "encoding": the whole batch is acknowledged, then new writes
	// take buffers from the pool.
	a.q.ack(wire.Ack{Cached: b.Last})
	for i := range 64 {
		if err := d.WriteAt(ctx, bytes.Repeat([]byte{0xBB}, 64<<10), int64(4<<20+i<<16), false); err != nil {
			t.Fatal(err)
		}
	}
	for i, r := range recs {
		if !bytes.Equal(r.Data, bytes.Repeat([]byte{byte(0x10 + i)}, 64<<10)) {
			t.Fatalf("record %d of the batch being encoded was overwritten after its acknowledgment", i)
		}
	}
	a.q.encoded()
	// Released now: the next writes reuse them.
	if n := len(a.q.afterEncode); n != 0 {
		t.Fatalf("%d records' buffers still held after encoding", n)
	}
}

func TestNextBatchReturnsOnCancel(t *testing.T) {
	// session() cancels and wakes a sender blocked in nextBatch, then
	// waits for it: the wait must end.
	a, _ := newTestAgent(t, 1<<20)
	b, err := a.q.nextBatch(context.Background(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	a.q.encoded()
	a.q.ack(wire.Ack{Cached: b.Last})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := a.q.nextBatch(ctx, 1<<20)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	a.q.wake()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("nextBatch returned a batch from an empty queue")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nextBatch did not return after cancel and wake")
	}
}

// The NBD server hands write payloads over in buffers of the queue's pool;
// the queue keeps them and gives them back when acknowledged.
func TestWriteAtKeepQueuesTheBufferItself(t *testing.T) {
	a, d := newTestAgent(t, 64<<20)
	ctx := context.Background()
	b, err := a.q.nextBatch(ctx, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	a.q.encoded()
	a.q.ack(wire.Ack{Cached: b.Last})
	buf := a.q.bufs.Get(8192)
	for i := range *buf {
		(*buf)[i] = byte(i)
	}
	if err := d.WriteAtKeep(ctx, buf, 6000, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	b, err = a.q.nextBatch(ctx, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	a.q.encoded()
	if len(b.Records) != 1 || len(b.Records[0].Data) != 6000 || &b.Records[0].Data[0] != &(*buf)[0] {
		t.Fatalf("queued record does not hold the handed-over buffer: %+v", b.Records)
	}
	got := make([]byte, 6000)
	if _, err := d.dev.ReadAt(got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, (*buf)[:6000]) {
		t.Fatal("disk does not hold the written bytes")
	}
}

// Copy records point into a shared read buffer, which goes back to the
// pool only when the last of them is acknowledged: a later copy read must
// not overwrite records still queued.
func TestCopyBuffersSharedUntilLastAcknowledged(t *testing.T) {
	a, d := newTestAgent(t, 64<<20)
	ctx := context.Background()
	fill := func(off int64, n int, seed byte) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = seed + byte(i/4096)
		}
		if _, err := d.dev.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		return p
	}
	first := fill(0, 1<<20, 1)
	// A zero block in the middle splits the read into two data records.
	if _, err := d.dev.WriteAt(make([]byte, 4096), 512<<10); err != nil {
		t.Fatal(err)
	}
	copy(first[512<<10:], make([]byte, 4096))
	fill(4<<20, 1<<20, 100)
	// The initial sync's markers go first.
	b, err := a.q.nextBatch(ctx, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	a.q.encoded()
	a.q.ack(wire.Ack{Cached: b.Last})
	if err := d.readCopy(a.q.generation(), 0, 1<<20); err != nil {
		t.Fatal(err)
	}
	b, err = a.q.nextBatch(ctx, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	a.q.encoded()
	var data []wire.Record
	for _, r := range b.Records {
		if r.Op == wire.OpCopy {
			data = append(data, r)
		}
	}
	if len(data) != 2 {
		t.Fatalf("%d copy records with data, want 2 (split by the zero block)", len(data))
	}
	// Acknowledge through the first data record only.
	a.q.ack(wire.Ack{Cached: data[0].Seq})
	for range 8 {
		if err := d.readCopy(a.q.generation(), 4<<20, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	r := data[1]
	if !bytes.Equal(r.Data, first[r.Offset:r.Offset+uint64(r.Length)]) {
		t.Fatal("queued copy record overwritten by a later copy read")
	}
}

// An acknowledgment of part of what was sent must not make the sender send
// the rest again (the process server would discard the duplicates, but
// only after receiving, decrypting and decoding them).
func TestPartialAckDoesNotResend(t *testing.T) {
	a, d := newTestAgent(t, 64<<20)
	ctx := context.Background()
	b, err := a.q.nextBatch(ctx, 64<<20) // the initial-sync markers
	if err != nil {
		t.Fatal(err)
	}
	a.q.encoded()
	a.q.ack(wire.Ack{Cached: b.Last})
	for i := range 10 {
		if err := d.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), int64(i)<<12, false); err != nil {
			t.Fatal(err)
		}
	}
	if b, err = a.q.nextBatch(ctx, 64<<20); err != nil {
		t.Fatal(err)
	}
	a.q.encoded()
	if len(b.Records) != 10 {
		t.Fatalf("batch of %d records, want 10", len(b.Records))
	}
	a.q.ack(wire.Ack{Cached: b.Records[4].Seq})
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	stop := context.AfterFunc(cctx, a.q.wake) // as the session does
	defer stop()
	if b2, err := a.q.nextBatch(cctx, 64<<20); err == nil {
		t.Fatalf("sent records %d..%d again after an acknowledgment of the first 5", b2.First, b2.Last)
	}
	// A write after it is the next thing sent, alone.
	if err := d.WriteAt(ctx, bytes.Repeat([]byte{2}, 4096), 20<<12, false); err != nil {
		t.Fatal(err)
	}
	b3, err := a.q.nextBatch(ctx, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(b3.Records) != 1 || b3.First != b.Last+1 {
		t.Fatalf("next batch %d..%d (%d records), want only seq %d", b3.First, b3.Last, len(b3.Records), b.Last+1)
	}
}

// overflow writes 32 distinct 64 KiB blocks from off: more than a 1 MiB
// queue holds.
func overflow(t *testing.T, a *Agent, d *disk, off int64) {
	t.Helper()
	before := a.q.stats().Overflows
	for i := range 32 {
		if err := d.WriteAt(context.Background(), bytes.Repeat([]byte{0xAA}, 64<<10), off+int64(i)<<16, false); err != nil {
			t.Fatal(err)
		}
	}
	if a.q.stats().Overflows == before {
		t.Fatal("the writes did not overflow the queue")
	}
}

// queuedSyncStarts counts the sync-starts of disk d waiting to be sent.
func queuedSyncStarts(t *testing.T, a *Agent, d *disk) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	defer context.AfterFunc(ctx, a.q.wake)() // the sender is woken so, too
	b, err := a.q.nextBatch(ctx, 64<<20)
	if err != nil {
		return 0 // nothing queued
	}
	a.q.encoded()
	n := 0
	for _, r := range b.Records {
		if r.Op == wire.OpSyncStart && r.Disk == d.index {
			n++
		}
	}
	return n
}

// takeInitialMarkers has the sender take the markers a fresh agent queues
// for its initial sync (unacknowledged).
func takeInitialMarkers(t *testing.T, a *Agent) wire.Batch {
	t.Helper()
	b, err := a.q.nextBatch(context.Background(), 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	a.q.encoded()
	return b
}

// finishResync does what the resync loop does once nothing is dirty.
func finishResync(a *Agent, d *disk) {
	a.q.mu.Lock()
	d.resyncing = false
	a.q.pushMarkerLocked(d, wire.Record{Op: wire.OpSyncDone, Disk: d.index})
	a.q.mu.Unlock()
}

// A second overflow that drops the first one's sync-start before it was
// sent must queue a new one: the master target would otherwise apply
// epochs over the resync's holes as if the replica were consistent.
func TestSecondOverflowKeepsTheSyncStart(t *testing.T) {
	a, d := newTestAgent(t, 1<<20)
	b := takeInitialMarkers(t, a)
	finishResync(a, d)
	a.q.ack(wire.Ack{Cached: a.q.stats().LastSeq, Durable: b.Last})
	overflow(t, a, d, 0)
	// The process server acknowledges what it had; the queue is nearly
	// empty (the unsent sync-start), so captured writes are queued again.
	a.q.ack(wire.Ack{Cached: b.Last})
	if a.q.stats().BitmapMode {
		t.Fatal("still in bitmap mode with an empty queue")
	}
	overflow(t, a, d, 4<<20)
	if n := queuedSyncStarts(t, a, d); n != 1 {
		t.Fatalf("%d sync-starts queued after the second overflow, want 1", n)
	}
}

// An overflow that drops a queued sync-done of a disk whose writes it did
// not drop must start that disk's resync again (and so send sync-done
// again): its replica would stay inconsistent at the master target for
// good.
func TestOverflowKeepsAnotherDisksSyncDone(t *testing.T) {
	a := newTestAgentDisks(t, 1<<20, 2)
	d0, d1 := a.disks[0], a.disks[1]
	b := takeInitialMarkers(t, a)
	a.q.ack(wire.Ack{Cached: b.Last, Durable: b.Last})
	finishResync(a, d0)
	finishResync(a, d1) // queued, not sent
	overflow(t, a, d0, 0)
	a.q.mu.Lock()
	resyncing := d1.resyncing
	a.q.mu.Unlock()
	if !resyncing {
		t.Fatal("disk1 is not resyncing after its sync-done was dropped")
	}
	if n := queuedSyncStarts(t, a, d1); n != 1 {
		t.Fatalf("%d sync-starts of disk1 queued after the overflow, want 1", n)
	}
}

// Writes without a flush get an epoch marker at least every
// wire.MaxEpochBytes, not only every EpochInterval: the master target holds
// a whole epoch while it waits for its marker.
func TestEpochsAreBoundedInSize(t *testing.T) {
	a, d := newTestAgent(t, 256<<20)
	ctx := context.Background()
	b, err := a.q.nextBatch(ctx, 64<<20) // the initial sync's markers
	if err != nil {
		t.Fatal(err)
	}
	a.q.encoded()
	a.q.ack(wire.Ack{Cached: b.Last})
	p := bytes.Repeat([]byte{7}, 64<<10)
	for i := range 640 { // 40 MiB
		if err := d.WriteAt(ctx, p, int64(i%256)<<16, false); err != nil {
			t.Fatal(err)
		}
	}
	var since int64
	markers := 0
	for a.q.stats().Records > 0 {
		b, err := a.q.nextBatch(ctx, 64<<20)
		if err != nil {
			t.Fatal(err)
		}
		a.q.encoded()
		for _, r := range b.Records {
			switch {
			case r.Op == wire.OpEpoch:
				if r.Flags&wire.EpochSize == 0 {
					t.Fatalf("epoch marker flags %#x, want EpochSize", r.Flags)
				}
				markers++
				since = 0
			case r.Op == wire.OpWrite:
				since += int64(len(r.Data))
				if since > wire.MaxEpochBytes {
					t.Fatalf("%d bytes of writes without an epoch marker", since)
				}
			}
		}
		a.q.ack(wire.Ack{Cached: b.Last})
	}
	if markers < 2 {
		t.Fatalf("%d epoch markers in 40 MiB of writes, want at least 2", markers)
	}
}

// A write in bitmap mode to a disk that is not resyncing queues its
// sync-start at once, before anything queued after the write (a FLUSH's
// epoch marker), not whenever that disk's resync loop runs next.
func TestBitmapWriteQueuesItsDisksSyncStart(t *testing.T) {
	a := newTestAgentDisks(t, 1<<20, 2)
	d0, d1 := a.disks[0], a.disks[1]
	b := takeInitialMarkers(t, a)
	finishResync(a, d0)
	finishResync(a, d1)
	a.q.ack(wire.Ack{Cached: a.q.stats().LastSeq, Durable: b.Last})
	overflow(t, a, d0, 0) // bitmap mode now
	if err := d1.WriteAt(context.Background(), bytes.Repeat([]byte{1}, 4096), 0, true); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	defer context.AfterFunc(ctx, a.q.wake)()
	b, err := a.q.nextBatch(ctx, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	started := false
	for _, r := range b.Records {
		switch {
		case r.Op == wire.OpSyncStart && r.Disk == d1.index:
			started = true
		case r.Op == wire.OpEpoch && !started:
			t.Fatalf("epoch marker (seq %d) before disk1's sync-start: the master target would make a consistent point without disk1's FUA write", r.Seq)
		}
	}
	if !started {
		t.Fatal("no sync-start for disk1 after its write in bitmap mode")
	}
}

// An agent started on a clean tracker still opens with a sync-start (and
// its resync loop then sends sync-done at once): a sync-done queued but
// unsent when the last run ended was lost with its queue.
func TestCleanStartResendsSyncDone(t *testing.T) {
	a, d := newTestAgent(t, 1<<20)
	for {
		off, n, ok := d.tracker.TakeDirty(4 << 20)
		if !ok {
			break
		}
		d.tracker.Complete(off, n)
	}
	if err := d.tracker.Persist(); err != nil {
		t.Fatal(err)
	}
	a.closeDisks()
	a2, err := New(a.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a2.closeDisks()
	d2 := a2.disks[0]
	if got := d2.tracker.DirtyBytes(); got != 0 {
		t.Fatalf("reopened tracker has %d dirty bytes, want 0", got)
	}
	if n := queuedSyncStarts(t, a2, d2); n != 1 {
		t.Fatalf("%d sync-starts queued at a clean start, want 1", n)
	}
}

// The record that ends a batch because it is of the other kind (a marker
// after copies) is not in the batch: dropped during the send, its buffer
// need not wait for it (found by review: it was tagged with the batch).
func TestRecordAfterTheBatchIsNotHeldForItsSend(t *testing.T) {
	q := newQueue(1, 1<<30, 0, 0)
	buf := q.bufs.Get(4096)
	q.pushCopy(nil, wire.Record{Op: wire.OpCopy, Length: 4096, Data: (*buf)[:4096]}, nil)
	seq := q.pushMarker(nil, wire.Record{Op: wire.OpEpoch})
	b, err := q.nextBatch(context.Background(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Records) != 1 {
		t.Fatalf("batch has %d records, want the copy alone", len(b.Records))
	}
	q.ack(wire.Ack{Cached: seq})
	q.mu.Lock()
	held := len(q.afterEncode)
	q.mu.Unlock()
	q.encoded()
	if held != 1 {
		t.Fatalf("%d records wait for the send, want 1 (the batch's own)", held)
	}
}

// A zeroing whose per-record BeginWrite fails (the tracker closed after
// the zeroing's own BeginWrite, as at shutdown) must queue no record
// without its pending count (its acknowledgment would release a count
// never taken), leave the range dirty, and fail the request. The zeroing
// is held at its region lock between the two, and the tracker closed
// there; an attempt where the goroutine was not yet past its first
// BeginWrite (it then fails there instead) is repeated.
func TestZeroingWhenTheTrackerClosesQueuesNothingUncounted(t *testing.T) {
	ctx := context.Background()
	for attempt := range 5 {
		a, d := newTestAgent(t, 64<<20)
		before := len(capturedOnly(queuedRecords(a)))
		unlock := d.locks.lock(0, 64<<10)
		errc := make(chan error, 1)
		go func() { errc <- d.zero(ctx, 0, 64<<10, false, true) }()
		time.Sleep(time.Duration(50<<attempt) * time.Millisecond)
		if err := d.tracker.Close(); err != nil {
			t.Fatal(err)
		}
		unlock()
		err := <-errc
		if err == nil {
			t.Fatal("zeroing succeeded with the tracker closed")
		}
		if !strings.Contains(err.Error(), "at 0 in the activity log") {
			t.Logf("attempt %d: failed at the first BeginWrite (%v); again with a longer wait", attempt, err)
			continue
		}
		if got := len(capturedOnly(queuedRecords(a))); got != before {
			t.Fatalf("%d records queued by a zeroing whose per-record BeginWrite failed, want none", got-before)
		}
		if d.tracker.DirtyBytes() < 64<<10 {
			t.Fatalf("dirty bytes %d after the failed zeroing, want its 64 KiB", d.tracker.DirtyBytes())
		}
		return
	}
	t.Fatal("the zeroing never got past its first BeginWrite")
}

// queuedRecords is every record in the queue now.
func queuedRecords(a *Agent) []wire.Record {
	a.q.mu.Lock()
	defer a.q.mu.Unlock()
	var out []wire.Record
	for _, r := range a.q.recs[a.q.head:] {
		out = append(out, r.Record)
	}
	return out
}
