package agent

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"standby/internal/wire"
)

// Found by review. On a disk larger than 512 GiB the tracker's block is 8 KiB or more
// (capture.newGeometry keeps at most 2^27 blocks), but readCopy splits what
// it reads at 4 KiB granularity (holes from SEEK_DATA/SEEK_HOLE, zero runs
// inside what it reads). With one in-flight range per record, Complete
// (which clears only whole blocks) never cleared a tracker block holding
// 4 KiB of data and 4 KiB of zeros or hole: it stayed in flight for good,
// DirtyBytes never reached 0 and sync-done was never sent. Now the whole
// range read is one in-flight range (copiesQueued).
func TestMixedBlockCopyCompletesOnLargeDisk(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "big.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 1<<40); err != nil { // 1 TiB, sparse
		t.Fatalf("cannot make a 1 TiB sparse file: %v", err)
	}
	a, err := New(Config{
		Machine: "m", StateDir: filepath.Join(dir, "state"), ProcessServer: "unused:1",
		Disks:      []DiskConfig{{Name: "big", Path: img}},
		QueueBytes: 64 << 20, QueueHold: -1, SendLinger: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.closeDisks)
	d := a.disks[0]
	if bs := d.tracker.BlockSize(); bs <= 4096 {
		t.Fatalf("tracker block %d: not the large-disk geometry this test needs", bs)
	}
	// Tracker block 0 = 4 KiB of data followed by a hole.
	if _, err := d.dev.WriteAt(bytes.Repeat([]byte{7}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	b := takeInitialMarkers(t, a)
	a.q.ack(wire.Ack{Cached: b.Last, Durable: b.Last})

	off, n, ok := d.tracker.TakeDirty(1 << 20)
	if !ok || off != 0 {
		t.Fatalf("TakeDirty = %d,%d,%v", off, n, ok)
	}
	if err := d.readCopy(a.q.generation(), off, n); err != nil {
		t.Fatal(err)
	}
	b, err = a.q.nextBatch(context.Background(), 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	a.q.encoded()
	for _, r := range b.Records {
		t.Logf("queued %v [%d,+%d)", r.Op, r.Offset, r.Length)
	}
	// The master target has every copy durably.
	a.q.ack(wire.Ack{Cached: b.Last, Durable: b.Last})
	if got := d.tracker.InflightBytes(); got != 0 {
		t.Fatalf("tracker block %d B: %d bytes still in flight after every copy of [%d,+%d) is durable; they can never be completed or taken again, so the resync never ends",
			d.tracker.BlockSize(), got, off, n)
	}
}

// Copies acknowledged durable before the reader registers them (it was
// descheduled after its last push) are completed at registration: no later
// acknowledgment may come to do it.
func TestCopiesDurableBeforeRegistrationComplete(t *testing.T) {
	a, d := newTestAgent(t, 64<<20)
	b := takeInitialMarkers(t, a)
	a.q.ack(wire.Ack{Cached: b.Last, Durable: b.Last})
	gen := a.q.generation()
	off, n, ok := d.tracker.TakeDirty(1 << 20)
	if !ok {
		t.Fatal("nothing dirty on a fresh disk")
	}
	last := a.q.pushCopy(d, wire.Record{Op: wire.OpCopyZero, Disk: d.index, Offset: uint64(off), Length: uint32(n)}, nil)
	a.q.ack(wire.Ack{Cached: last, Durable: last})
	a.q.copiesQueued(gen, d, off, n, last)
	if got := d.tracker.InflightBytes(); got != 0 {
		t.Fatalf("%d bytes still in flight after their copies were durable", got)
	}
}
