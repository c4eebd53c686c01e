package capture

import (
	"context"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Found by review. A slot write that fails after its header page reached
// the file (here: a
// later page run fails; an fdatasync EIO after all pages were written has
// the same effect) leaves a valid slot seq+1 in the file while t.seq stays
// at seq (tracker.go:555-562). The next cold BeginWrite appends a journal
// record with base seq (tracker.go:449) and returns: the write may be
// acknowledged. After kill -9, decodeState picks slot seq+1 (higher seq)
// and stops the journal replay at the first record whose base is not seq+1
// (format.go:283): the extent of the acknowledged write is not covered.
//
// The fault is injected for real: RLIMIT_FSIZE makes pwrite past the slot's
// header page fail with EFBIG (SIGXFSZ is ignored by the Go runtime), as a
// CoW file system's ENOSPC or a media error would.
func TestFailedSlotWriteDoesNotLoseALaterWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	const size = 512 << 20 // 4 KiB blocks: a 16 KiB bitmap, 5 slot pages
	opts := TrackerOptions{BlockSize: 4 << 10, ExtentSize: 4 << 20, IdleClean: time.Hour, Logger: quietLogger()}
	tr := openT(t, path, size, opts)
	drain(t, tr)
	// Both slots now hold an all-clean bitmap.
	for range 2 {
		if err := tr.Persist(); err != nil {
			t.Fatal(err)
		}
	}
	// A block far into the bitmap is dirtied and synced again: its page is
	// marked for both slots but its content equals what both hold on disk.
	const blk = 100000
	tr.MarkDirty(blk<<12, 4096)
	off, n, ok := tr.TakeDirty(4096)
	if !ok || off != blk<<12 {
		t.Fatalf("TakeDirty = %d,%d,%v", off, n, ok)
	}
	tr.Complete(off, n)

	tr.ioMu.Lock()
	k := int((tr.seq + 1) % 2)
	oldSeq := tr.seq
	limit := uint64(tr.geo.slotOff(k) + 4096) // the header page fits, the bitmap page does not
	tr.ioMu.Unlock()

	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = limit
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatalf("cannot lower RLIMIT_FSIZE to inject the fault: %v", err)
	}
	perr := tr.Persist()
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	if perr == nil {
		t.Fatal("Persist succeeded: fault not injected")
	}
	t.Logf("Persist failed as injected: %v", perr)
	if st := decodeOrFail(t, path); st.seq != oldSeq+1 {
		t.Fatalf("file's current slot has seq %d, want the failed write's %d (setup did not leave a valid slot)", st.seq, oldSeq+1)
	}

	// A workload write to a cold extent: activity-log record durable,
	// BeginWrite returns, the write is acknowledged; not yet at the process
	// server (no EndWrite, no MarkDirty).
	const wOff = 50 << 22
	if err := tr.BeginWrite(context.Background(), wOff, 4096); err != nil {
		t.Fatal(err)
	}

	crash(tr) // kill -9
	tr2 := openT(t, path, size, opts)
	defer tr2.Close()
	if !dirtySet(tr2)[wOff>>12] {
		t.Fatalf("acknowledged write at %d (extent %d) is neither in the activity log nor dirty after kill -9: the replica silently lacks it",
			wOff, wOff>>22)
	}
}
