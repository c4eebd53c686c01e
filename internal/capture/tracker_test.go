package capture

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/bits"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// smallOpts: 4 KiB blocks, 64 KiB extents, a 64 KiB journal.
func smallOpts() TrackerOptions {
	return TrackerOptions{BlockSize: 4 << 10, ExtentSize: 64 << 10, IdleClean: time.Second,
		Logger: quietLogger(), journalSize: 64 << 10}
}

func openT(t testing.TB, path string, size int64, opts TrackerOptions) *Tracker {
	t.Helper()
	tr, err := OpenTracker(path, size, opts)
	if err != nil {
		t.Fatalf("OpenTracker: %v", err)
	}
	return tr
}

// memTempDir returns a directory on tmpfs when there is one. The model
// tests run thousands of fdatasyncs, whose latency on a busy disk would
// dominate them; a process crash (what they simulate) keeps the page
// cache anyway, so durability to the platter is not what they test.
func memTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "capture-test-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// crash abandons a tracker the way kill -9 would: nothing more is written.
func crash(tr *Tracker) {
	tr.ioMu.Lock()
	defer tr.ioMu.Unlock()
	tr.mu.Lock()
	tr.closed = true
	tr.mu.Unlock()
	tr.f.Close()
}

// dirtySet returns the dirty|in-flight blocks of a tracker.
func dirtySet(tr *Tracker) map[int64]bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	m := map[int64]bool{}
	for i := range tr.dirty {
		w := tr.dirty[i] | tr.inflight[i]
		for ; w != 0; w &= w - 1 {
			m[int64(i)*64+int64(bits.TrailingZeros64(w))] = true
		}
	}
	return m
}

// drain takes and completes everything, as a finished resync would.
func drain(t testing.TB, tr *Tracker) {
	t.Helper()
	for {
		off, n, ok := tr.TakeDirty(1 << 30)
		if !ok {
			break
		}
		tr.Complete(off, n)
	}
	if got := tr.DirtyBytes(); got != 0 {
		t.Fatalf("DirtyBytes after drain = %d", got)
	}
}

func TestTrackerFreshThenClean(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	const size = 10<<20 + 1000 // a partial last block
	tr := openT(t, path, size, smallOpts())
	if r := tr.Recovered(); !r.Fresh || r.Unclean || r.DirtyBytes != size {
		t.Fatalf("fresh Recovered = %+v, want Fresh with %d dirty", r, size)
	}
	if got := tr.DirtyBytes(); got != size {
		t.Fatalf("DirtyBytes = %d, want %d", got, size)
	}
	var sum int64
	for {
		off, n, ok := tr.TakeDirty(3 << 20)
		if !ok {
			break
		}
		if n > 3<<20 || off+n > size {
			t.Fatalf("TakeDirty returned [%d,+%d)", off, n)
		}
		sum += n
		tr.Complete(off, n)
	}
	if sum != size {
		t.Fatalf("taken %d bytes, want %d", sum, size)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	tr = openT(t, path, size, smallOpts())
	defer tr.Close()
	if r := tr.Recovered(); r.Fresh || r.Unclean || r.DirtyBytes != 0 {
		t.Fatalf("after clean close Recovered = %+v, want clean and empty", r)
	}
}

func TestTrackerCrashExpandsActiveExtents(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	const size = 8 << 20
	opts := smallOpts()
	tr := openT(t, path, size, opts)
	drain(t, tr)
	if err := tr.Persist(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// One write inside extent 3, one straddling extents 5 and 6.
	if err := tr.BeginWrite(ctx, 3*64<<10+100, 10); err != nil {
		t.Fatal(err)
	}
	if err := tr.BeginWrite(ctx, 6*64<<10-512, 1024); err != nil {
		t.Fatal(err)
	}
	crash(tr)

	tr = openT(t, path, size, opts)
	defer tr.Close()
	r := tr.Recovered()
	if !r.Unclean || r.Fresh {
		t.Fatalf("Recovered = %+v, want Unclean", r)
	}
	if r.DirtyBytes != 3*64<<10 {
		t.Fatalf("DirtyBytes = %d, want three extents (%d)", r.DirtyBytes, 3*64<<10)
	}
	got := dirtySet(tr)
	for _, e := range []int64{3, 5, 6} {
		for b := e * 16; b < (e+1)*16; b++ {
			if !got[b] {
				t.Fatalf("block %d of active extent %d not dirty after crash", b, e)
			}
		}
	}
}

func TestTrackerCloseKeepsPendingExtents(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	const size = 4 << 20
	tr := openT(t, path, size, smallOpts())
	drain(t, tr)
	ctx := context.Background()
	if err := tr.BeginWrite(ctx, 0, 4096); err != nil { // acked below
		t.Fatal(err)
	}
	if err := tr.BeginWrite(ctx, 1<<20, 4096); err != nil { // never acked
		t.Fatal(err)
	}
	tr.EndWrite(0, 4096)
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.BeginWrite(ctx, 0, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("BeginWrite after Close: %v, want ErrClosed", err)
	}
	tr = openT(t, path, size, smallOpts())
	defer tr.Close()
	r := tr.Recovered()
	if r.Unclean || r.DirtyBytes != 64<<10 {
		t.Fatalf("Recovered = %+v, want clean with only the pending extent (65536) dirty", r)
	}
	if !dirtySet(tr)[(1<<20)/4096] {
		t.Fatal("block of the unacknowledged write not dirty")
	}
}

func TestTrackerCleanRetiresIdleExtents(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	const size = 4 << 20
	opts := smallOpts()
	tr := openT(t, path, size, opts)
	drain(t, tr)
	ctx := context.Background()
	now := time.Now()
	for _, off := range []int64{0, 1 << 20, 2 << 20} {
		if err := tr.BeginWrite(ctx, off, 4096); err != nil {
			t.Fatal(err)
		}
	}
	tr.EndWrite(0, 4096)      // idle
	tr.MarkDirty(1<<20, 4096) // queue overflow: dirty, then released
	tr.EndWrite(1<<20, 4096)  //
	_ = tr.Clean(now)         // first look
	if err := tr.Clean(now.Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	tr.mu.Lock()
	_, a0 := tr.active[0]
	_, a1 := tr.active[16]
	_, a2 := tr.active[32]
	tr.mu.Unlock()
	if a0 || !a1 || !a2 {
		t.Fatalf("active after Clean: ext0=%v ext16=%v ext32=%v; want only the idle clean one retired", a0, a1, a2)
	}
	// Re-activation after retirement must persist again.
	if err := tr.BeginWrite(ctx, 100, 1); err != nil {
		t.Fatal(err)
	}
	crash(tr)
	tr = openT(t, path, size, opts)
	defer tr.Close()
	got := dirtySet(tr)
	if len(got) != 3*16 {
		t.Fatalf("%d blocks dirty after crash, want 48 (extents 0, 16, 32)", len(got))
	}
	for _, b := range []int64{0, 256, 512} {
		if !got[b] {
			t.Fatalf("block %d not dirty", b)
		}
	}
}

func TestTrackerBusyExtentNotRetired(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	tr := openT(t, path, 1<<20, smallOpts())
	defer tr.Close()
	drain(t, tr)
	ctx := context.Background()
	now := time.Now()
	if err := tr.BeginWrite(ctx, 0, 1); err != nil {
		t.Fatal(err)
	}
	tr.EndWrite(0, 1)
	_ = tr.Clean(now)
	// Activity between the two looks: not idle for IdleClean yet.
	_ = tr.BeginWrite(ctx, 0, 1)
	tr.EndWrite(0, 1)
	_ = tr.Clean(now.Add(2 * time.Second))
	tr.mu.Lock()
	_, active := tr.active[0]
	tr.mu.Unlock()
	if !active {
		t.Fatal("extent with activity between Clean calls was retired")
	}
	_ = tr.Clean(now.Add(4 * time.Second))
	tr.mu.Lock()
	_, active = tr.active[0]
	tr.mu.Unlock()
	if active {
		t.Fatal("extent idle for IdleClean was not retired")
	}
}

func TestTrackerJournalFullFallsBackToSlot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	const size = 64 << 20
	opts := smallOpts()
	opts.journalSize = 4096 // ~140 single-extent records
	tr := openT(t, path, size, opts)
	drain(t, tr)
	if err := tr.Persist(); err != nil {
		t.Fatal(err)
	}
	seq0 := tr.seq
	ctx := context.Background()
	const writes = 400
	for i := range int64(writes) {
		if err := tr.BeginWrite(ctx, i*64<<10+7, 1); err != nil {
			t.Fatal(err)
		}
	}
	if tr.seq == seq0 {
		t.Fatal("journal never overflowed into a slot write")
	}
	crash(tr)
	tr = openT(t, path, size, opts)
	defer tr.Close()
	if got, want := tr.Recovered().DirtyBytes, int64(writes*64<<10); got != want {
		t.Fatalf("DirtyBytes after crash = %d, want %d", got, want)
	}
}

func TestTrackerTakeDirty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	const size = 1<<20 + 512 // 257 blocks, the last one 512 bytes
	tr := openT(t, path, size, smallOpts())
	defer tr.Close()
	drain(t, tr)

	tr.MarkDirty(4096*10+1, 1)    // block 10 (rounded out)
	tr.MarkDirty(4096*20, 4096*5) // blocks 20..24
	tr.MarkDirty(4096*63, 4096*3) // blocks 63..65 (across a word)
	tr.MarkDirty(size-10, 10)     // block 256, partial
	if got, want := tr.DirtyBytes(), int64(4096*(1+5+3)+512); got != want {
		t.Fatalf("DirtyBytes = %d, want %d", got, want)
	}
	type rg struct{ off, n int64 }
	var got []rg
	for {
		off, n, ok := tr.TakeDirty(4096 * 2)
		if !ok {
			break
		}
		got = append(got, rg{off, n})
	}
	want := []rg{{40960, 4096}, {20 * 4096, 8192}, {22 * 4096, 8192}, {24 * 4096, 4096},
		{63 * 4096, 8192}, {65 * 4096, 4096}, {256 * 4096, 512}}
	if len(got) != len(want) {
		t.Fatalf("TakeDirty runs = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("TakeDirty runs = %v, want %v", got, want)
		}
	}
	if got := tr.InflightBytes(); got != int64(4096*9+512) {
		t.Fatalf("InflightBytes = %d", got)
	}
	// Block 21 is rewritten while in flight: completing the old send must
	// leave it dirty, and it must not be taken while the old send is out.
	tr.MarkDirty(21*4096, 1)
	if _, _, ok := tr.TakeDirty(1 << 20); ok {
		t.Fatal("took a block whose previous send is still in flight")
	}
	for _, r := range want {
		tr.Complete(r.off, r.n)
	}
	if got := tr.DirtyBytes(); got != 4096 {
		t.Fatalf("DirtyBytes after Complete = %d, want the rewritten block", got)
	}
	off, n, ok := tr.TakeDirty(1 << 20)
	if !ok || off != 21*4096 || n != 4096 {
		t.Fatalf("TakeDirty = %d,%d,%v; want the rewritten block 21", off, n, ok)
	}
	// Connection reset: in flight goes back to dirty.
	tr.Requeue()
	if tr.InflightBytes() != 0 || tr.DirtyBytes() != 4096 {
		t.Fatalf("after Requeue inflight=%d dirty=%d", tr.InflightBytes(), tr.DirtyBytes())
	}
	// Partial Complete does not clear a block that was not entirely sent.
	off, n, _ = tr.TakeDirty(1 << 20)
	tr.Complete(off, n-1)
	if tr.InflightBytes() != 4096 {
		t.Fatal("partial Complete cleared a block")
	}
	tr.Complete(off, n)
	tr.MarkAllDirty()
	if tr.DirtyBytes() != size {
		t.Fatalf("MarkAllDirty: DirtyBytes = %d, want %d", tr.DirtyBytes(), size)
	}
}

func TestTrackerTakeDirtyWraps(t *testing.T) {
	tr := openT(t, filepath.Join(t.TempDir(), "state"), 1<<20, smallOpts())
	defer tr.Close()
	drain(t, tr)
	tr.MarkDirty(100*4096, 4096)
	off, n, _ := tr.TakeDirty(1 << 20)
	tr.Complete(off, n)
	tr.MarkDirty(5*4096, 4096)   // behind the cursor
	tr.MarkDirty(200*4096, 4096) // ahead of it
	off1, _, _ := tr.TakeDirty(4096)
	off2, _, _ := tr.TakeDirty(4096)
	if off1 != 200*4096 || off2 != 5*4096 {
		t.Fatalf("took %d then %d; want the block ahead of the cursor first, then wrap", off1/4096, off2/4096)
	}
}

func TestTrackerRejectsBadRanges(t *testing.T) {
	tr := openT(t, filepath.Join(t.TempDir(), "state"), 1<<20, smallOpts())
	defer tr.Close()
	ctx := context.Background()
	for _, r := range [][2]int64{{-1, 10}, {1 << 20, 1}, {1<<20 - 1, 2}, {0, -5}} {
		if err := tr.BeginWrite(ctx, r[0], r[1]); err == nil {
			t.Errorf("BeginWrite(%d, %d) succeeded", r[0], r[1])
		}
	}
	if err := tr.BeginWrite(ctx, 5, 0); err != nil {
		t.Errorf("empty BeginWrite: %v", err)
	}
}

func TestTrackerSizeMismatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	tr := openT(t, path, 1<<20, smallOpts())
	tr.Close()
	_, err := OpenTracker(path, 2<<20, smallOpts())
	if !errors.Is(err, ErrSizeMismatch) {
		t.Fatalf("OpenTracker with another size: %v, want ErrSizeMismatch", err)
	}
	if err := ResetAllDirty(path, 2<<20, smallOpts()); err != nil {
		t.Fatal(err)
	}
	tr = openT(t, path, 2<<20, smallOpts())
	defer tr.Close()
	if r := tr.Recovered(); !r.Fresh || r.DirtyBytes != 2<<20 {
		t.Fatalf("after reset Recovered = %+v", r)
	}
}

func TestTrackerCorruptStateFiles(t *testing.T) {
	const size = 1 << 20
	mk := func(t *testing.T) (string, geometry) {
		path := filepath.Join(t.TempDir(), "state")
		tr := openT(t, path, size, smallOpts())
		drain(t, tr)
		if err := tr.Persist(); err != nil {
			t.Fatal(err)
		}
		if err := tr.BeginWrite(context.Background(), 0, 1); err != nil { // a journal record
			t.Fatal(err)
		}
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
		return path, tr.geo
	}
	flip := func(t *testing.T, path string, off int64) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0x40
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	wantCorrupt := func(t *testing.T, path, what string) {
		t.Helper()
		_, err := OpenTracker(path, size, smallOpts())
		if !errors.Is(err, ErrCorruptState) {
			t.Fatalf("%s: OpenTracker err = %v, want ErrCorruptState", what, err)
		}
		t.Logf("%s: %v", what, err)
		// The way out: start over with everything dirty.
		if err := ResetAllDirty(path, size, smallOpts()); err != nil {
			t.Fatal(err)
		}
		tr := openT(t, path, size, smallOpts())
		defer tr.Close()
		if r := tr.Recovered(); !r.Fresh || r.DirtyBytes != size {
			t.Fatalf("after ResetAllDirty Recovered = %+v", r)
		}
	}

	t.Run("both slots", func(t *testing.T) {
		path, g := mk(t)
		flip(t, path, g.slotOff(0)+slotHeaderSize+3)
		flip(t, path, g.slotOff(1)+10)
		wantCorrupt(t, path, "both slots damaged")
	})
	t.Run("one slot", func(t *testing.T) {
		path, g := mk(t)
		// The newest slot is the Close one: damage it, the older one
		// (with the write's extent only in the journal) must be used.
		st := decodeOrFail(t, path)
		flip(t, path, g.slotOff(st.slot)+slotHeaderSize+1)
		tr := openT(t, path, size, smallOpts())
		defer tr.Close()
		if !tr.Recovered().Unclean {
			t.Fatal("fallback to the older (running) slot should look unclean")
		}
		if got := dirtySet(tr); !got[0] || len(got) != 16 {
			t.Fatalf("%d blocks dirty; want exactly extent 0, known only from the older slot's journal", len(got))
		}
	})
	t.Run("superblock", func(t *testing.T) {
		path, _ := mk(t)
		flip(t, path, 30)
		wantCorrupt(t, path, "superblock damaged")
	})
	t.Run("truncated", func(t *testing.T) {
		path, g := mk(t)
		if err := os.Truncate(path, g.fileSize()-1); err != nil {
			t.Fatal(err)
		}
		wantCorrupt(t, path, "truncated")
	})
	t.Run("empty", func(t *testing.T) {
		path, _ := mk(t)
		if err := os.Truncate(path, 0); err != nil {
			t.Fatal(err)
		}
		wantCorrupt(t, path, "empty file")
	})
	t.Run("not a state file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "state")
		if err := os.WriteFile(path, []byte("hello, I am a text file\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		wantCorrupt(t, path, "foreign file")
	})
}

func TestTrackerTornJournalRecordIgnored(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	const size = 1 << 20
	tr := openT(t, path, size, smallOpts())
	drain(t, tr)
	if err := tr.Persist(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_ = tr.BeginWrite(ctx, 0, 1)       // record 0: extent 0
	_ = tr.BeginWrite(ctx, 512<<10, 1) // record 1: extent 8
	g, jpos := tr.geo, tr.jpos
	crash(tr)
	// Tear the last record, as a crash during its (unacknowledged) append
	// would; the record before it must still count.
	f, _ := os.OpenFile(path, os.O_RDWR, 0)
	if _, err := f.WriteAt([]byte{0xff}, g.journalOff()+jpos-2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	tr = openT(t, path, size, smallOpts())
	defer tr.Close()
	got := dirtySet(tr)
	if !got[0] || got[128] || len(got) != 16 {
		t.Fatalf("dirty blocks %d (block0=%v block128=%v); want exactly extent 0", len(got), got[0], got[128])
	}
}

func TestGeometryScales(t *testing.T) {
	for _, c := range []struct {
		size          int64
		block, extent int64
	}{
		{1 << 30, 4 << 10, 4 << 20},
		{512 << 30, 4 << 10, 4 << 20},
		{16 << 40, 128 << 10, 4 << 20},
		{1 << 50, 8 << 20, 256 << 20},
	} {
		g, err := newGeometry(c.size, 4<<10, 4<<20, defaultJournalSize)
		if err != nil {
			t.Fatalf("size %d: %v", c.size, err)
		}
		if g.blockSize() != c.block || g.extentSize() != c.extent {
			t.Errorf("size %d: block %d extent %d, want %d %d", c.size, g.blockSize(), g.extentSize(), c.block, c.extent)
		}
		if g.nBlocks() > maxBlocks || g.nExtents() > maxExtents {
			t.Errorf("size %d: %d blocks %d extents over limits", c.size, g.nBlocks(), g.nExtents())
		}
	}
}

func decodeOrFail(t *testing.T, path string) *decodedState {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	st, err := decodeState(b)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestTrackerUnmatchedEndWritePanics(t *testing.T) {
	tr := openT(t, filepath.Join(t.TempDir(), "state"), 1<<20, smallOpts())
	defer tr.Close()
	defer func() {
		if recover() == nil {
			t.Fatal("EndWrite without BeginWrite did not panic")
		}
	}()
	tr.EndWrite(0, 10)
}

func TestTrackerRangeEdges(t *testing.T) {
	tr := openT(t, filepath.Join(t.TempDir(), "state"), 1<<20, smallOpts())
	defer tr.Close()
	drain(t, tr)
	tr.MarkDirty(1<<20-1, 1<<62) // huge length: clamped, no overflow
	tr.MarkDirty(-5000, 5001)    // starts before the disk: block 0 only
	tr.MarkDirty(-5, 5)          // entirely before the disk: nothing
	tr.MarkDirty(1<<20, 10)      // entirely after: nothing
	if got := tr.DirtyBytes(); got != 2*4096 {
		t.Fatalf("DirtyBytes = %d, want blocks 0 and 255", got)
	}
	for {
		off, _, ok := tr.TakeDirty(1 << 20)
		if !ok {
			break
		}
		tr.Complete(off, 1<<62)
	}
	if tr.DirtyBytes() != 0 {
		t.Fatal("Complete with a huge length did not clear")
	}
}

func TestNewGeometryRejectsBadOptions(t *testing.T) {
	for _, c := range [][3]int64{
		{0, 4096, 1 << 22},       // empty disk
		{-1, 4096, 1 << 22},      // negative
		{1 << 30, 3000, 1 << 22}, // block not a power of two
		{1 << 30, 256, 1 << 22},  // block too small
		{1 << 30, 8192, 4096},    // extent smaller than block
		{1 << 30, 4096, 5 << 20}, // extent not a power of two
	} {
		if _, err := newGeometry(c[0], c[1], c[2], defaultJournalSize); err == nil {
			t.Errorf("newGeometry(%d, %d, %d) accepted", c[0], c[1], c[2])
		}
		if _, err := OpenTracker(filepath.Join(t.TempDir(), "s"), c[0], TrackerOptions{BlockSize: c[1], ExtentSize: c[2]}); err == nil {
			t.Errorf("OpenTracker(%d, %d, %d) accepted", c[0], c[1], c[2])
		}
	}
}

// A Persist after a small change writes a few pages, not the whole
// bitmap, and the result still reads back exactly.
func TestTrackerPersistIsIncremental(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	const size = 8 << 30 // 2M blocks: a 256 KiB bitmap
	opts := TrackerOptions{Logger: quietLogger()}
	tr := openT(t, path, size, opts)
	drain(t, tr)
	for range 2 { // once per slot: both now match memory
		if err := tr.Persist(); err != nil {
			t.Fatal(err)
		}
	}
	before := tr.slotBytes
	tr.MarkDirty(3<<30, 4096)
	tr.MarkDirty(7<<30, 1<<20)
	if err := tr.Persist(); err != nil {
		t.Fatal(err)
	}
	// Header+AL page, plus one page for each change.
	if got := tr.slotBytes - before; got != 3*4096 {
		t.Fatalf("Persist wrote %d slot bytes, want 3 pages", got)
	}
	if err := tr.Persist(); err != nil { // the other slot catches up
		t.Fatal(err)
	}
	if got := tr.slotBytes - before; got != 6*4096 {
		t.Fatalf("second Persist: %d slot bytes in total, want 6 pages", got)
	}
	crash(tr)
	tr = openT(t, path, size, opts)
	defer tr.Close()
	if got, want := tr.Recovered().DirtyBytes, int64(4096+1<<20); got != want {
		t.Fatalf("recovered %d dirty bytes, want %d", got, want)
	}
	st := decodeOrFail(t, path)
	if st.slotErr != nil {
		t.Fatalf("a slot is invalid after incremental writes: %v", st.slotErr)
	}
}

func TestTrackerExclusive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	tr := openT(t, path, 1<<20, smallOpts())
	if _, err := OpenTracker(path, 1<<20, smallOpts()); err == nil {
		t.Fatal("a second tracker opened the same state file")
	}
	if err := ResetAllDirty(path, 1<<20, smallOpts()); err == nil {
		t.Fatal("ResetAllDirty replaced the state file of an open tracker")
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	tr = openT(t, path, 1<<20, smallOpts())
	tr.Close()
}
