package journal

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"standby/internal/blockdev"
	"standby/internal/directio"
)

// Defaults and limits.
const (
	DefaultBlockSize   = 4096
	DefaultSegmentSize = 64 << 20
	// MaxPreserve bounds the range of one Preserve call. Data-plane records
	// are at most 32 MiB; the bound keeps every offset inside a segment
	// below 4 GiB, which is what lets the index store 32-bit offsets.
	MaxPreserve = 256 << 20

	maxSegmentSize = 1 << 30
	minSegmentSize = 64 << 10
	// flushThreshold is how much Preserve buffers before writing: enough
	// to turn many 4 KiB before-images into one write, small enough that a
	// write never holds anything up for long.
	flushThreshold = 1 << 20
	// prunedEvents is how many space-pressure events wait for a reader
	// before the oldest is replaced.
	prunedEvents = 16
)

var (
	// ErrCorrupt is wrapped by every error about damaged journal data that
	// is not a torn tail; errors.As with *CorruptError gives file and offset.
	ErrCorrupt = errors.New("journal: corrupt data")
	// ErrPointGone is returned by OpenView for a point older than OldestSeq.
	ErrPointGone = errors.New("journal: point no longer held")
	// ErrViewInvalidated is wrapped by every read of a view whose
	// before-images were dropped (space pressure) or that can no longer be
	// served exactly; the message says which point and why.
	ErrViewInvalidated = errors.New("journal: view invalidated")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("journal: closed")
	// ErrOrder is returned by Preserve for a seq that does not follow the
	// previous call's.
	ErrOrder = errors.New("journal: sequence out of order")
)

// ReadWriterAt is a replica disk: *blockdev.Disk satisfies it. The journal
// only reads it; the apply loop writes it.
type ReadWriterAt interface {
	io.ReaderAt
	io.WriterAt
}

// Disk describes one replica disk of the machine.
type Disk struct {
	Size    int64
	Replica ReadWriterAt
	// Extents optionally walks [off, off+n) of the replica, reporting runs
	// of data and holes (blockdev.Disk.Extents has this signature). Views
	// use it so that exporting a sparse replica skips its holes; without
	// it the whole replica counts as data.
	Extents func(off, n int64, fn func(off, n int64, data bool) error) error
}

// FileDisk describes a replica opened with blockdev, holes included.
func FileDisk(d *blockdev.Disk) Disk {
	return Disk{Size: d.Size(), Replica: d, Extents: d.Extents}
}

// Options configures a Journal.
type Options struct {
	// BlockSize is the granularity of before-images and of the index,
	// a power of two from 512 to 1 MiB; default 4096. Preserved ranges are
	// widened outward to whole blocks. 0 adopts the block size of an
	// existing journal.
	BlockSize int64
	// SegmentSize is the size at which a new segment file is started
	// (default 64 MiB, at most 1 GiB). Space is freed by whole segments.
	// With MaxBytes set it is lowered to MaxBytes/4 if needed, so that
	// dropping one segment frees a useful share of the bound.
	SegmentSize int64
	// MaxBytes bounds the bytes in segment files; 0 = unbounded. Past it
	// Preserve drops the oldest segments (never blocks), even ones open
	// views need: those views are invalidated. See Pruned.
	MaxBytes int64
	// Logger receives recovery warnings; nil means slog.Default().
	Logger *slog.Logger
}

// PruneInfo describes one round of dropped segments.
type PruneInfo struct {
	DroppedSegments int
	DroppedBytes    int64
	OldestSeq       uint64 // the journal's OldestSeq after the drop
}

// Stats is a snapshot of the journal.
type Stats struct {
	Bytes      int64  // bytes in segment files, buffered appends included
	Segments   int    // segment files held
	Records    int64  // records held
	OldestSeq  uint64 // see Journal.OldestSeq
	LastSeq    uint64 // see Journal.LastSeq
	Views      int    // open views
	Pinned     int64  // bytes of sealed segments Prune must keep for open views
	IndexBytes int64  // memory held by the in-memory index (approximate)
}

// segment is one segment file. Fields change under Journal.mu; size,
// written, first, last and records only with Journal.wmu held as well.
type segment struct {
	id          uint32 // dense, ascending: the index refers to segments by id
	hdr         segHeader
	path        string
	first, last uint64 // seqs of the first and last record (records > 0)
	records     int64
	size        int64    // bytes appended, buffered ones included
	written     int64    // bytes in the file; the rest of the active segment is in memory
	f           *os.File // nil until a read needs it (sealed); read-write for the active one
	// app appends to the active segment past the page cache
	// (internal/directio), opened at its first write; nil otherwise, or
	// when the file system refused it (Journal.cached).
	app *directio.Appender
}

// Journal is the undo journal of one machine: the before-images of every
// range the apply loop overwrites, and point-in-time views built from them.
// Preserve, Sync and Lock belong to the single apply goroutine; everything
// else is safe for concurrent use.
type Journal struct {
	dir     string
	bs      int64
	shift   uint8
	segSize int64
	max     int64
	log     *slog.Logger
	disks   []Disk
	lockf   *os.File
	locks   rangeLocks
	pruned  chan PruneInfo
	compact chan struct{}
	done    chan struct{}
	wg      sync.WaitGroup

	// wmu serialises the writer side (Preserve, Sync, Close), so that a
	// segment is rolled, flushed and synced by one goroutine at a time.
	// Lock order: wmu before mu.
	wmu      sync.Mutex
	active   *segment // the segment appended to, nil before the first record; set under mu too, for views
	rbuf     []byte   // replica read buffer
	rec      []byte   // record being encoded
	spare    []byte   // the other write buffer
	zeros    []bool
	unsynced bool   // records appended since the last fdatasync
	cached   bool   // the file system refused O_DIRECT: segments are written through the page cache
	stage    []byte // the active segment's directio.Appender stages writes here

	// mu guards the index, the segment list and the in-memory tail of the
	// active segment. It is held only for memory work, never for I/O on
	// a segment or replica, so views and apply never wait on each other's
	// disks through it.
	mu        sync.Mutex
	segs      []*segment // oldest first; the last is the active one
	nextID    uint32
	idx       []diskIndex
	wbuf      []byte // appended, not yet written: bytes at active.written+len(flushing)
	flushing  []byte // being written by flush: bytes at active.written
	bytes     int64
	records   int64
	runs      int64
	pages     int64
	lastAny   uint64 // seq of the newest record
	lastFinal bool   // whether that record completed its Preserve call
	lastDone  uint64 // seq of the newest completed Preserve call
	haveAny   bool
	synced    uint64 // LastSeq
	oldest    uint64 // OldestSeq
	views     map[*View]struct{}
	err       error // sticky: after a failed write or fdatasync nothing is known about the file
	closed    bool
}

// Open opens or creates the journal in dir for a machine with the given
// replica disks. It rebuilds the index from the segment headers and record
// headers (sealed segments' block data is not read); the last segment is
// verified completely, and a torn tail there is cut off with a warning.
// Damage anywhere else fails with an error wrapping ErrCorrupt.
func Open(dir string, disks []Disk, opts Options) (*Journal, error) {
	lg := opts.Logger
	if lg == nil {
		lg = slog.Default()
	}
	if len(disks) == 0 || len(disks) > 1<<16 {
		return nil, fmt.Errorf("journal: opening %s: %d disks, want 1..65536", dir, len(disks))
	}
	for i, d := range disks {
		if d.Size <= 0 || d.Replica == nil {
			return nil, fmt.Errorf("journal: opening %s: disk %d has size %d and replica %v", dir, i, d.Size, d.Replica)
		}
	}
	if opts.BlockSize != 0 {
		if _, err := blockShift(opts.BlockSize); err != nil {
			return nil, fmt.Errorf("journal: opening %s: %w", dir, err)
		}
	}
	if opts.MaxBytes < 0 || opts.SegmentSize < 0 {
		return nil, fmt.Errorf("journal: opening %s: negative MaxBytes %d or SegmentSize %d", dir, opts.MaxBytes, opts.SegmentSize)
	}
	segSize := opts.SegmentSize
	if segSize == 0 {
		segSize = DefaultSegmentSize
	}
	if opts.MaxBytes > 0 && segSize > opts.MaxBytes/4 {
		segSize = opts.MaxBytes / 4
	}
	segSize = min(max(segSize, minSegmentSize), maxSegmentSize)

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal: creating %s: %w", dir, err)
	}
	lockf, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("journal: opening lock file in %s: %w", dir, err)
	}
	if err := lockFile(lockf); err != nil {
		lockf.Close()
		return nil, fmt.Errorf("journal: locking %s: %w", dir, err)
	}
	j := &Journal{
		dir: dir, segSize: segSize, max: opts.MaxBytes, log: lg, disks: disks, lockf: lockf,
		pruned:  make(chan PruneInfo, prunedEvents),
		compact: make(chan struct{}, 1),
		done:    make(chan struct{}),
		views:   make(map[*View]struct{}),
	}
	j.locks.init()
	if err := j.recover(opts.BlockSize); err != nil {
		j.closeFiles()
		lockf.Close()
		return nil, err
	}
	j.idxInit()
	if err := j.rebuild(); err != nil {
		j.closeFiles()
		lockf.Close()
		return nil, err
	}
	j.wg.Add(1)
	go j.compactor()
	return j, nil
}

func blockShift(bs int64) (uint8, error) {
	for s := uint8(minBlockShift); s <= maxBlockShift; s++ {
		if int64(1)<<s == bs {
			return s, nil
		}
	}
	return 0, fmt.Errorf("block size %d is not a power of two from %d to %d", bs, 1<<minBlockShift, 1<<maxBlockShift)
}

func (j *Journal) idxInit() {
	j.idx = make([]diskIndex, len(j.disks))
	for i, d := range j.disks {
		j.idx[i] = newDiskIndex((d.Size + j.bs - 1) / j.bs)
	}
}

// LastSeq is the newest seq whose before-images are durable (after Sync, or
// found intact by Open). After a crash the apply loop must not preserve a
// record with seq <= LastSeq again: its replica range may already hold the
// new data, and the before-image it needs is already here.
func (j *Journal) LastSeq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.synced
}

// OldestSeq is the smallest point a view can still be opened at: a view at
// P is exact when P >= the newest seq among dropped before-images. 0 when
// nothing was ever dropped. After a reopen it is derived from the oldest
// segment kept (its first seq - 1), which may be a little above the value
// before the reopen, never below.
func (j *Journal) OldestSeq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.oldest
}

// Pruned delivers an event each time space pressure (MaxBytes) dropped
// segments. Events are not queued without bound: when 16 wait unread, the
// oldest is replaced (each carries the absolute OldestSeq, so losing one
// loses only its counts).
func (j *Journal) Pruned() <-chan PruneInfo { return j.pruned }

// Lock takes the range for the apply loop: view reads of it wait until the
// returned func is called. It must cover the replica write of the range;
// it may, but need not, cover Preserve too: Preserve indexes the image
// before it returns, so a view that looked the block up before that reads
// the replica under its own hold of the range, which the write then waits
// for, and a view that looked it up after finds the image. Lock calls
// never exclude each other (there is one apply goroutine, which may hold
// many ranges while it batches records for one Sync).
func (j *Journal) Lock(disk int, off, n int64) func() {
	b0, b1 := j.blockRange(off, n)
	return j.locks.lockWrite(stripes(disk, b0, b1))
}

func (j *Journal) blockRange(off, n int64) (int64, int64) {
	return off >> j.shift, (off + n + j.bs - 1) >> j.shift
}

// Stats returns a snapshot of the journal's size and state.
func (j *Journal) Stats() Stats {
	j.mu.Lock()
	defer j.mu.Unlock()
	st := Stats{Bytes: j.bytes, Segments: len(j.segs), Records: j.records, OldestSeq: j.oldest, LastSeq: j.synced, Views: len(j.views)}
	if p, ok := j.minViewPointLocked(); ok {
		for _, s := range j.segs[:max(len(j.segs)-1, 0)] {
			if s.last > p {
				st.Pinned += s.size
			}
		}
	}
	st.IndexBytes = j.runs*runSize + j.pages*pageSize
	for _, d := range j.idx {
		st.IndexBytes += int64(len(d.pages)) * 8
	}
	return st
}

func (j *Journal) minViewPointLocked() (uint64, bool) {
	var p uint64
	ok := false
	for v := range j.views {
		if v.invalid == nil && (!ok || v.point < p) {
			p, ok = v.point, true
		}
	}
	return p, ok
}

// usableLocked reports why the writer side cannot go on.
func (j *Journal) usableLocked() error {
	if j.closed {
		return ErrClosed
	}
	return j.err
}

// Close syncs what was appended, invalidates open views and releases the
// directory. The apply loop must have stopped.
func (j *Journal) Close() error {
	j.wmu.Lock()
	defer j.wmu.Unlock()
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil
	}
	serr := j.err
	j.mu.Unlock()
	if serr == nil {
		serr = j.syncLocked()
	}
	if serr == nil && j.active != nil && j.active.app != nil {
		// Cut the padding of uncached appends, so a clean stop leaves no
		// torn-looking tail for the next Open to warn about.
		if serr = j.seal(j.active); serr == nil {
			serr = fdatasync(j.active.f)
		}
	}
	j.mu.Lock()
	j.closed = true
	for v := range j.views {
		v.invalidateLocked("the journal was closed")
	}
	j.mu.Unlock()
	close(j.done)
	j.wg.Wait()
	cerr := j.closeFiles()
	lerr := j.lockf.Close()
	if err := errors.Join(serr, cerr, lerr); err != nil {
		return fmt.Errorf("journal: closing %s: %w", j.dir, err)
	}
	return nil
}

func (j *Journal) closeFiles() error {
	var errs []error
	for _, s := range j.segs {
		if s.app != nil {
			errs = append(errs, s.app.Close())
			s.app = nil
		}
		if s.f != nil {
			errs = append(errs, s.f.Close())
			s.f = nil
		}
	}
	return errors.Join(errs...)
}

// compactor removes dropped segments' runs from the index in the
// background, a few pages per hold of mu, so that a drop never stalls
// apply or views for a walk over the whole index. Until it has passed,
// stale runs are harmless: they are all at or below OldestSeq, so no valid
// view selects them.
func (j *Journal) compactor() {
	defer j.wg.Done()
	const pagesPerHold = 16
	for {
		select {
		case <-j.done:
			return
		case <-j.compact:
		}
		for d := range j.idx {
			for p := 0; ; p += pagesPerHold {
				select {
				case <-j.done:
					return
				default:
				}
				j.mu.Lock()
				pages := j.idx[d].pages
				if p >= len(pages) || len(j.segs) == 0 {
					j.mu.Unlock()
					break
				}
				live := j.segs[0].id
				for i := p; i < min(p+pagesPerHold, len(pages)); i++ {
					if pages[i] == nil {
						continue
					}
					removed, empty := compactPage(pages[i], live)
					j.runs -= removed
					if empty {
						pages[i] = nil
						j.pages--
					}
				}
				j.mu.Unlock()
			}
		}
	}
}
