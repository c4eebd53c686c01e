package capture

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/bits"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by operations on a closed Tracker.
var ErrClosed = errors.New("capture tracker closed")

// TrackerOptions configure a Tracker. Zero values pick the defaults.
type TrackerOptions struct {
	// ExtentSize is the activity-log granule (default 4 MiB): the unit
	// that is persisted before a write and expanded to dirty after a crash.
	ExtentSize int64
	// BlockSize is the dirty-bitmap granule (default 4 KiB). Both sizes
	// are powers of two; both are doubled as needed so that a disk has at
	// most 2^27 blocks and 2^22 extents (16 TiB keeps 128 KiB blocks).
	BlockSize int64
	// IdleClean is how long an extent must stay idle before Clean drops
	// it from the activity log (default 10s).
	IdleClean time.Duration
	Logger    *slog.Logger

	// journalSize overrides the activity-log journal size, so tests can
	// exercise the journal-full path cheaply.
	journalSize int64
}

func (o TrackerOptions) withDefaults() TrackerOptions {
	if o.ExtentSize == 0 {
		o.ExtentSize = 4 << 20
	}
	if o.BlockSize == 0 {
		o.BlockSize = 4 << 10
	}
	if o.IdleClean == 0 {
		o.IdleClean = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.journalSize == 0 {
		o.journalSize = defaultJournalSize
	}
	return o
}

// RecoveryInfo describes the state found by OpenTracker.
type RecoveryInfo struct {
	// Fresh: no usable history (new state file or ResetAllDirty); the
	// whole disk is dirty and an initial sync is needed.
	Fresh bool
	// Unclean: the previous run did not Close; its active extents were
	// expanded into dirty blocks.
	Unclean bool
	// DirtyBytes is the amount to resync after recovery.
	DirtyBytes int64
}

// Extent word layout. Packing the pending count and the persisted-active
// flag into one word makes the hot path of BeginWrite a single atomic add
// whose result says whether the extent is already safe, and lets Clean
// retire an extent with one compare-and-swap that fails if any write
// slipped in. The high half counts begin/end events so Clean can tell an
// extent that stayed idle from one that was busy between two looks.
const (
	pendingMask = 1<<31 - 1
	activeBit   = 1 << 31
	beginDelta  = 1<<32 + 1 // activity +1, pending +1
	endDelta    = 1<<32 - 1 // activity +1, pending -1
)

type idleState struct {
	word  uint64
	since time.Time
}

// Tracker records, for one protected disk, which regions the replica may
// lack. See docs/capture.md for the algorithm and why it is crash-safe.
//
// All methods are safe for concurrent use.
type Tracker struct {
	path      string
	log       *slog.Logger
	geo       geometry
	idleClean time.Duration
	recovered RecoveryInfo

	// ext holds one word per extent (see the layout above). Updated
	// atomically without mu; activeBit is only set or cleared with mu held.
	ext []atomic.Uint64

	// ioMu serializes all writes to the state file and guards the fields
	// below it. Lock order: ioMu, then mu.
	ioMu   sync.Mutex
	f      *os.File
	seq    uint64 // sequence number of the newest durable slot
	jpos   int64  // journal append offset (relative to the journal)
	jindex uint32 // index of the next journal record
	recBuf []byte
	// slotBuf is the image of the state as last encoded (see writeSlot).
	slotBuf    []byte
	writePages []int
	slotBytes  int64 // bytes of slot pages written, for tests

	mu       sync.Mutex
	closed   bool
	dirty    []uint64
	inflight []uint64
	// Population counts kept incrementally so the accessors and
	// TakeDirty's "nothing to do" case are O(1).
	nDirty, nInflight, nUnion, nTakeable int64
	cursor                               int64 // TakeDirty resumes here
	// pageMarks has one entry per 4 KiB page of a slot image: bit k set
	// means the page may differ from what slot k holds on disk. Bitmap
	// changes set both bits; writing slot k clears bit k.
	pageMarks  []uint8
	bmOff      int64 // offset of the dirty bitmap inside a slot
	want       map[uint32]struct{}
	committing chan struct{} // closed when the running AL commit ends
	active     map[uint32]*idleState
}

// OpenTracker opens or creates the state file at path for a disk of
// diskSize bytes. A new file starts with everything dirty (Recovered().Fresh).
// After an unclean stop the persisted active extents are added to the dirty
// set. A corrupt file yields an error wrapping ErrCorruptState; a file for
// another disk size one wrapping ErrSizeMismatch. In both cases the caller
// can decide to call ResetAllDirty.
func OpenTracker(path string, diskSize int64, opts TrackerOptions) (*Tracker, error) {
	opts = opts.withDefaults()
	want, err := newGeometry(diskSize, opts.BlockSize, opts.ExtentSize, opts.journalSize)
	if err != nil {
		return nil, fmt.Errorf("open tracker %s: %w", path, err)
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		if err := writeFileAtomic(path, encodeFreshState(want, flagFresh|flagClean)); err != nil {
			return nil, fmt.Errorf("create tracker state %s: %w", path, err)
		}
	}
	f, err := openLocked(path)
	if err != nil {
		return nil, fmt.Errorf("open tracker state: %w", err)
	}
	t, err := recoverTracker(f, path, diskSize, want, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	return t, nil
}

// openLocked opens the state file for writing and locks it, so that the
// content read next is not being changed by another agent.
func openLocked(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	if err := lockFile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

func recoverTracker(f *os.File, path string, diskSize int64, want geometry, opts TrackerOptions) (*Tracker, error) {
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read tracker state %s: %w", path, err)
	}
	st, err := decodeState(b)
	if err != nil {
		return nil, fmt.Errorf("open tracker state %s: %w", path, err)
	}
	if st.geo.diskSize != diskSize {
		return nil, fmt.Errorf("open tracker state %s: %w: file has %d bytes, disk has %d",
			path, ErrSizeMismatch, st.geo.diskSize, diskSize)
	}
	log := opts.Logger.With("state", path)
	if st.geo != want {
		// The file's granularity defines what its bits mean; keep it.
		log.Info("capture: state file geometry differs from options; using the file's",
			"block_size", st.geo.blockSize(), "extent_size", st.geo.extentSize())
	}
	if st.slotErr != nil {
		log.Warn("capture: one state slot unusable, recovered from the other", "slot", 1-st.slot, "reason", st.slotErr)
	}
	t := &Tracker{
		path:      path,
		log:       log,
		geo:       st.geo,
		idleClean: opts.IdleClean,
		ext:       make([]atomic.Uint64, st.geo.nExtents()),
		f:         f,
		seq:       st.seq,
		jpos:      st.journalEnd,
		jindex:    st.journalRecords,
		slotBuf:   make([]byte, st.geo.slotSize()),
		dirty:     st.dirty,
		inflight:  make([]uint64, len(st.dirty)),
		want:      make(map[uint32]struct{}),
		active:    make(map[uint32]*idleState),
		pageMarks: make([]uint8, st.geo.slotSize()>>12),
		bmOff:     slotHeaderSize + 8*st.geo.alWords(),
	}
	// Neither slot on disk is known to match anything in memory yet.
	for p := range t.pageMarks {
		t.pageMarks[p] = 3
	}
	// Every extent that may have had a write in flight when the previous
	// run stopped may differ from the replica in any block.
	expanded := 0
	for i, w := range st.al {
		for ; w != 0; w &= w - 1 {
			e := int64(i)<<6 + int64(bits.TrailingZeros64(w))
			t.setBlocks(e<<t.geo.blocksPerExtentShift(), (e+1)<<t.geo.blocksPerExtentShift())
			expanded++
		}
	}
	t.recount()
	t.recovered = RecoveryInfo{
		Fresh:      st.flags&flagFresh != 0,
		Unclean:    st.flags&flagClean == 0,
		DirtyBytes: t.DirtyBytes(),
	}
	// Persist now: the expanded dirty set must not depend on the old
	// activity log any more, and the slot must lose its clean flag so a
	// crash of this run is recognised as unclean.
	if err := t.persist(0, false); err != nil {
		return nil, fmt.Errorf("open tracker: %w", err)
	}
	log.Info("capture: tracker opened", "disk_size", st.geo.diskSize, "block_size", t.geo.blockSize(),
		"extent_size", t.geo.extentSize(), "fresh", t.recovered.Fresh, "unclean", t.recovered.Unclean,
		"expanded_extents", expanded, "dirty_bytes", t.recovered.DirtyBytes)
	return t, nil
}

// ResetAllDirty replaces the state file at path with one in which every
// block of a diskSize-byte disk is dirty: the way out after ErrCorruptState
// or ErrSizeMismatch. The next OpenTracker reports Fresh.
func ResetAllDirty(path string, diskSize int64, opts TrackerOptions) error {
	opts = opts.withDefaults()
	g, err := newGeometry(diskSize, opts.BlockSize, opts.ExtentSize, opts.journalSize)
	if err != nil {
		return fmt.Errorf("reset tracker state %s: %w", path, err)
	}
	// Holding the old file's lock through the rename keeps a running
	// agent's tracker from being replaced under it.
	if old, err := openLocked(path); err == nil {
		defer old.Close()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("reset tracker state: %w", err)
	}
	if err := writeFileAtomic(path, encodeFreshState(g, flagFresh|flagClean)); err != nil {
		return fmt.Errorf("reset tracker state %s: %w", path, err)
	}
	return nil
}

// Recovered reports what OpenTracker found.
func (t *Tracker) Recovered() RecoveryInfo { return t.recovered }

// BlockSize is the dirty-bitmap granularity actually in use.
func (t *Tracker) BlockSize() int64 { return t.geo.blockSize() }

// ExtentSize is the activity-log granularity actually in use.
func (t *Tracker) ExtentSize() int64 { return t.geo.extentSize() }

func (t *Tracker) extentRange(off, n int64) (first, last int64, ok bool) {
	if n <= 0 || off < 0 || off > t.geo.diskSize-n {
		return 0, 0, false
	}
	return off >> t.geo.extentShift, (off + n - 1) >> t.geo.extentShift, true
}

// BeginWrite must return before the workload's write [off, off+n) reaches
// the disk. It counts the write as pending in each extent it touches and,
// if any of them is not yet persisted as active, persists the activity log
// first. Concurrent callers share one commit.
func (t *Tracker) BeginWrite(ctx context.Context, off, n int64) error {
	if n == 0 {
		return nil
	}
	first, last, ok := t.extentRange(off, n)
	if !ok {
		return fmt.Errorf("begin write [%d,+%d): outside disk of %d bytes", off, n, t.geo.diskSize)
	}
	cold := false
	for e := first; e <= last; e++ {
		if t.ext[e].Add(beginDelta)&activeBit == 0 {
			cold = true
		}
	}
	if !cold {
		return nil
	}
	if err := t.activate(ctx, first, last); err != nil {
		for e := first; e <= last; e++ {
			t.ext[e].Add(endDelta)
		}
		return fmt.Errorf("begin write [%d,+%d): %w", off, n, err)
	}
	return nil
}

// EndWrite releases a write begun with BeginWrite, once the write is
// durable downstream or its blocks were marked dirty (MarkDirty must come
// before EndWrite, so that the extent stays protected until the bitmap
// holds the blocks).
func (t *Tracker) EndWrite(off, n int64) {
	first, last, ok := t.extentRange(off, n)
	if !ok {
		return
	}
	for e := first; e <= last; e++ {
		// An unmatched EndWrite would borrow into the active flag and
		// silently unprotect the extent; like a negative WaitGroup, that
		// is a bug to stop at.
		if t.ext[e].Add(endDelta)&pendingMask == pendingMask {
			panic("capture: EndWrite without a matching BeginWrite")
		}
	}
}

// activate waits until extents [first, last] are persisted active, doing
// the commit itself if no other caller is.
func (t *Tracker) activate(ctx context.Context, first, last int64) error {
	t.mu.Lock()
	for {
		if t.closed {
			t.mu.Unlock()
			return ErrClosed
		}
		missing := false
		for e := first; e <= last; e++ {
			if t.ext[e].Load()&activeBit == 0 {
				missing = true
				t.want[uint32(e)] = struct{}{}
			}
		}
		if !missing {
			t.mu.Unlock()
			return nil
		}
		if done := t.committing; done != nil {
			// Someone is committing; our extents ride on the next commit
			// (or this one, if they were added before its snapshot).
			t.mu.Unlock()
			select {
			case <-done:
			case <-ctx.Done():
				return fmt.Errorf("wait for activity log commit: %w", ctx.Err())
			}
			t.mu.Lock()
			continue
		}
		done := make(chan struct{})
		t.committing = done
		t.mu.Unlock()
		err := t.commitWanted()
		t.mu.Lock()
		t.committing = nil
		close(done)
		if err != nil {
			t.mu.Unlock()
			return err
		}
	}
}

// commitWanted makes every extent in t.want durable in the activity log and
// then marks it active.
func (t *Tracker) commitWanted() error {
	t.ioMu.Lock()
	defer t.ioMu.Unlock()
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return ErrClosed
	}
	batch := make([]uint32, 0, len(t.want))
	for e := range t.want {
		if t.ext[e].Load()&activeBit == 0 {
			batch = append(batch, e)
		}
	}
	clear(t.want)
	t.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	slices.Sort(batch)

	var err error
	if t.journalRoom(len(batch)) {
		err = t.appendJournal(batch)
	} else {
		// Journal full: a slot rewrite carries the whole activity log and
		// starts a new, empty journal.
		t.log.Debug("capture: activity-log journal full, writing a full state slot")
		err = t.writeSlot(0, batch, false)
	}
	if err != nil {
		return err
	}
	// Still holding ioMu: a Persist cannot snapshot the activity log
	// between this commit and the flags being set, which would let it
	// write a slot without these extents and reset the journal under them.
	t.mu.Lock()
	for _, e := range batch {
		t.ext[e].Or(activeBit)
		t.active[e] = &idleState{}
	}
	t.mu.Unlock()
	return nil
}

func (t *Tracker) journalRoom(n int) bool {
	var need int64
	for n > 0 {
		k := min(n, maxRecordExtents)
		need += recordLen(k)
		n -= k
	}
	return t.jpos+need <= t.geo.journalSize
}

// appendJournal writes records for batch after the last valid record and
// waits for them to be durable. On failure the append point is not
// advanced: the next append overwrites whatever partial record was left.
func (t *Tracker) appendJournal(batch []uint32) error {
	buf := t.recBuf[:0]
	idx := t.jindex
	for rest := batch; len(rest) > 0; {
		k := min(len(rest), maxRecordExtents)
		buf = appendRecord(buf, t.seq, idx, rest[:k])
		idx++
		rest = rest[k:]
	}
	t.recBuf = buf
	if _, err := t.f.WriteAt(buf, t.geo.journalOff()+t.jpos); err != nil {
		return fmt.Errorf("append activity-log record: %w", err)
	}
	if err := datasync(t.f); err != nil {
		return fmt.Errorf("sync activity-log record: %w", err)
	}
	t.jpos += int64(len(buf))
	t.jindex = idx
	return nil
}

// Persist durably writes the activity log and the dirty|in-flight bitmap.
func (t *Tracker) Persist() error {
	t.ioMu.Lock()
	defer t.ioMu.Unlock()
	return t.writeSlot(0, nil, false)
}

func (t *Tracker) persist(flags uint32, closing bool) error {
	t.ioMu.Lock()
	defer t.ioMu.Unlock()
	return t.writeSlot(flags, nil, closing)
}

// writeSlot snapshots the state into the older slot and syncs it. The
// activity log written is the active extents plus extra; when closing, it
// is instead the extents with writes still pending, since nothing else can
// change once the tracker is closed. Callers hold ioMu.
//
// Only pages that may differ from what that slot holds on disk are written
// (see pageMarks), so a periodic Persist of a mostly unchanged bitmap costs
// a few pages, not the whole bitmap. slotBuf always holds, for every page
// not marked for slot k, exactly the bytes slot k has on disk, which is why
// the checksum over slotBuf is the checksum of the slot after the write.
func (t *Tracker) writeSlot(flags uint32, extra []uint32, closing bool) error {
	g := t.geo
	buf := t.slotBuf
	seq := t.seq + 1
	k := int(seq % 2)
	bit := uint8(1) << k
	alEnd := slotHeaderSize + 8*g.alWords()
	// The header and activity-log pages are rewritten every time: the
	// header changes anyway and the AL is rebuilt from t.active.
	fixedPages := int((alEnd + 4095) >> 12)
	clear(buf[slotHeaderSize:alEnd])
	setAL := func(e uint32) {
		p := buf[slotHeaderSize+8*int64(e>>6):]
		binary.LittleEndian.PutUint64(p, binary.LittleEndian.Uint64(p)|1<<(e&63))
	}
	write := t.writePages[:0]

	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return ErrClosed
	}
	if closing {
		t.closed = true
		for e := range t.ext {
			// Late BeginWrites now take the slow path and see closed.
			// Those that got in before this still count as pending below.
			t.ext[e].And(^uint64(activeBit))
		}
		for e := range t.ext {
			if t.ext[e].Load()&pendingMask != 0 {
				setAL(uint32(e))
			}
		}
	} else {
		for e := range t.active {
			setAL(e)
		}
		for _, e := range extra {
			setAL(e)
		}
	}
	for p := range t.pageMarks {
		if p >= fixedPages && t.pageMarks[p]&bit == 0 {
			continue
		}
		t.pageMarks[p] &^= bit
		write = append(write, p)
		// Encode the bitmap words that live in this page.
		lo := max(int64(p)<<12, alEnd)
		hi := min(int64(p+1)<<12, alEnd+8*g.bmWords())
		for o := lo; o < hi; o += 8 {
			i := (o - alEnd) >> 3
			binary.LittleEndian.PutUint64(buf[o:], t.dirty[i]|t.inflight[i])
		}
	}
	t.mu.Unlock()
	t.writePages = write

	encodeSlotHeader(buf, seq, flags)
	sealSlot(buf, g)
	err := t.writePageRuns(g.slotOff(k), write)
	if err == nil {
		if err = datasync(t.f); err != nil {
			err = fmt.Errorf("sync state slot %d: %w", k, err)
		}
	}
	if err != nil {
		// The slot's content on disk is now unknown: rewrite all of it.
		t.mu.Lock()
		for p := range t.pageMarks {
			t.pageMarks[p] |= bit
		}
		t.mu.Unlock()
		// It may even be whole (its header written, a later page failing
		// on a page that was unchanged anyway, or a failed fdatasync):
		// recovery would then take it, seq+1, and ignore journal records
		// based on seq. So no record may be appended until a slot write
		// succeeds: with the journal "full", every activation writes a
		// slot first (found by review: a write acknowledged after a
		// failed slot write was lost at the next kill -9).
		t.jpos = t.geo.journalSize
		return err
	}
	t.seq = seq
	t.jpos = 0
	t.jindex = 0
	return nil
}

// writePageRuns writes the given ascending pages of slotBuf at base,
// coalescing adjacent pages into one write.
func (t *Tracker) writePageRuns(base int64, pages []int) error {
	size := int64(len(t.slotBuf))
	for i := 0; i < len(pages); {
		j := i + 1
		for j < len(pages) && pages[j] == pages[j-1]+1 {
			j++
		}
		lo := int64(pages[i]) << 12
		hi := min(int64(pages[j-1]+1)<<12, size)
		if _, err := t.f.WriteAt(t.slotBuf[lo:hi], base+lo); err != nil {
			return fmt.Errorf("write state slot at %d: %w", base+lo, err)
		}
		t.slotBytes += hi - lo
		i = j
	}
	return nil
}

// Clean drops from the activity log the extents that have had no pending
// write, no write activity and no dirty or in-flight block for IdleClean,
// and persists if it dropped any. Idleness is measured between calls, so
// call it periodically (a fraction of IdleClean apart).
func (t *Tracker) Clean(now time.Time) error {
	changed := 0
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return ErrClosed
	}
	bps := t.geo.blocksPerExtentShift()
	for e, st := range t.active {
		w := t.ext[e].Load()
		if w&pendingMask != 0 || w != st.word || st.since.IsZero() {
			st.word, st.since = w, now
			continue
		}
		if now.Sub(st.since) < t.idleClean {
			continue
		}
		// Blocks still to be synced keep their extent: until a slot with
		// them in the bitmap is durable, the extent is their only record.
		from := int64(e) << bps
		if anyInRange(t.dirty, t.inflight, from, min(from+1<<bps, t.geo.nBlocks())) {
			continue
		}
		// Fails if a BeginWrite incremented the word since the Load.
		if t.ext[e].CompareAndSwap(w, w&^activeBit) {
			delete(t.active, e)
			changed++
		}
	}
	t.mu.Unlock()
	if changed == 0 {
		return nil
	}
	t.log.Debug("capture: retiring idle extents from the activity log", "extents", changed)
	return t.Persist()
}

// Close persists the state with the clean-shutdown flag and closes the file.
// Writes still pending keep their extents in the activity log.
func (t *Tracker) Close() error {
	t.ioMu.Lock()
	defer t.ioMu.Unlock()
	err := t.writeSlot(flagClean, nil, true)
	if errors.Is(err, ErrClosed) {
		return ErrClosed
	}
	t.mu.Lock()
	t.closed = true // also when the final write failed
	t.mu.Unlock()
	if cerr := t.f.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close tracker state: %w", cerr)
	}
	if err != nil {
		return fmt.Errorf("close tracker: %w", err)
	}
	return nil
}
