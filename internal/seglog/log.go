package seglog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"standby/internal/directio"
)

// DefaultSegmentSize is used when Options.SegmentSize is zero.
const DefaultSegmentSize = 64 << 20

// Options configures a Log.
type Options struct {
	// SegmentSize rolls to a new segment file once the active one would grow
	// past this many bytes (default 64 MiB). An entry larger than a segment
	// gets a segment of its own. When MaxBytes is set, SegmentSize is lowered
	// to MaxBytes/4 if needed: trimming frees whole segments, and a bound
	// only a segment or two wide would leave appenders blocked until nearly
	// everything is trimmed.
	SegmentSize int64
	// MaxBytes bounds the bytes held in segment files (headers included);
	// Append blocks and TryAppend fails with ErrFull beyond it. 0 = unbounded.
	MaxBytes int64
	// Logger receives recovery warnings; nil means slog.Default().
	Logger *slog.Logger
	// TrustSealed makes Open walk only the record headers of sealed (not
	// last) segments instead of reading and checksumming every payload.
	// Readers still verify every record they return, so damage is found
	// when it is read instead of at start-up. For caches too large to read
	// through at every start. The last segment is always fully verified.
	TrustSealed bool
	// Direct writes and reads segments past the page cache
	// (internal/directio), where the file system allows it: for a log
	// whose entries are read back once, soon after the write, by a
	// reader that keeps up, and whose cache pages would be new ones
	// (the master target's intake; docs/architecture.md). The active
	// segment then ends in up to a block of zeros until it is sealed,
	// which Open takes for a torn append.
	Direct bool
}

// Entry is one appended payload covering sequence numbers First..Last.
type Entry struct {
	First, Last uint64
	Data        []byte
}

// Stats is a snapshot of a Log's state.
type Stats struct {
	Bytes      int64  // bytes held in segment files, headers included
	Entries    int64  // entries held (trimming is per segment, so trimmed entries may remain)
	Segments   int    // segment files held
	FirstSeq   uint64 // First of the oldest entry held; 0 when empty
	LastSeq    uint64 // Last of the newest entry appended; survives trimming while open
	DurableSeq uint64 // Last of the newest entry known to be on disk
}

var (
	// ErrFull is returned by TryAppend when the entry would take the log
	// past Options.MaxBytes.
	ErrFull = errors.New("seglog: log full")
	// ErrCorrupt is wrapped by every error about damaged segment data that
	// is not a torn tail; errors.As with *CorruptError gives file and offset.
	ErrCorrupt = errors.New("seglog: corrupt record")
	// ErrClosed is returned after Close (of the Log, or of a Reader).
	ErrClosed = errors.New("seglog: closed")
	// ErrTooLarge is returned for an entry that could never fit: larger
	// than MaxEntrySize or, with its header, than Options.MaxBytes.
	ErrTooLarge = errors.New("seglog: entry too large")
	// ErrOrder is returned for an entry whose First does not lie above the
	// log's last sequence number, or whose First is above its Last.
	ErrOrder = errors.New("seglog: sequence out of order")
)

// segment describes one segment file. Fields change under Log.mu, and size,
// first, last and entries only with Log.wmu held too.
type segment struct {
	base        uint64 // the file name: First of its first entry
	path        string
	size        int64 // bytes of whole records written; readers stop there
	first, last uint64
	entries     int64
	// stale is how far a recycled file holds an older segment's bytes
	// past size (0 for a new file): cut off when the segment is sealed or
	// the log closed. Written only with wmu held.
	stale int64
	// readers counts Readers positioned in this segment; guarded by
	// Log.mu. A spare is reused only when none is left in it, since
	// reusing overwrites the file under them.
	readers int
	// app appends to the active segment uncached (Options.Direct),
	// opened at its first write. Used only with wmu held.
	app *directio.Appender
}

// maxSpares is how many trimmed segment files a log keeps for reuse.
// Overwriting a file whose pages are cached and whose blocks are allocated
// costs a fraction of filling a new one (docs/formats.md, "Spare
// segments"); a log whose consumer keeps up needs one at a time.
const maxSpares = 2

// Log is a segmented, checksummed, append-only log in one directory. All
// methods are safe for concurrent use.
type Log struct {
	dir  string
	opts Options
	log  *slog.Logger
	lock *os.File // holds the directory lock until Close

	// wmu serialises writers. It is held from the space and order checks
	// through the write, so records land in the order they were checked,
	// and it is never held while waiting for space, so waiting on it is
	// bounded by one write (plus an fdatasync when a segment is sealed).
	// Lock order: wmu before mu.
	wmu     sync.Mutex
	scratch []byte // header or small record being written; guarded by wmu
	cached  bool   // Options.Direct, but the file system refused O_DIRECT; guarded by wmu
	stage   []byte // the active segment's directio.Appender stages writes here; guarded by wmu

	mu       sync.Mutex
	segs     []*segment // oldest first; the last one is active
	spares   []*segment // trimmed files kept for reuse, named spareName(base)
	wf       *os.File   // write handle of the active segment, nil if none
	bytes    int64
	entries  int64
	lastSeq  uint64
	haveLast bool // false until the first entry, so seq 0 is usable
	trimSeq  uint64
	trimmed  bool
	// committed counts appends whose bytes are written; durable counts
	// those known to be on disk. Counters rather than sequence numbers,
	// because sequence 0 is a valid entry.
	committed, durable uint64
	durableSeq         uint64
	dirDirty           bool // a segment was created since the directory was last fsynced
	syncing            bool // one goroutine is in fdatasync on behalf of all
	syncDone           chan struct{}
	dataCh             chan struct{} // closed when an entry is committed
	spaceCh            chan struct{} // closed when trimming may have freed space
	closedCh           chan struct{}
	closed             bool
	err                error // sticky: after a failed fdatasync nothing is known about the page cache
}

// Open opens or creates the log in dir and recovers it after a crash: every
// segment is checked in order; an incomplete or damaged record at the very
// end of the last segment is what a crash mid-append leaves, so it is
// truncated away with a warning. Damage anywhere else fails Open with a
// *CorruptError (wrapping ErrCorrupt) naming file and offset.
func Open(dir string, opts Options) (*Log, error) {
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = DefaultSegmentSize
	}
	if opts.MaxBytes < 0 {
		return nil, fmt.Errorf("seglog: open %s: negative MaxBytes %d", dir, opts.MaxBytes)
	}
	if opts.MaxBytes > 0 && opts.SegmentSize > opts.MaxBytes/4 {
		opts.SegmentSize = max(opts.MaxBytes/4, 1)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("seglog: open %s: %w", dir, err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("seglog: open %s: lock file: %w", dir, err)
	}
	if err := lockFile(lock); err != nil {
		lock.Close()
		return nil, fmt.Errorf("seglog: open %s: lock: %w", dir, err)
	}
	l := &Log{
		dir:      dir,
		opts:     opts,
		log:      opts.Logger.With("seglog", dir),
		lock:     lock,
		closedCh: make(chan struct{}),
	}
	if err := l.load(); err != nil {
		if l.wf != nil {
			l.wf.Close()
		}
		lock.Close()
		return nil, fmt.Errorf("seglog: open %s: %w", dir, err)
	}
	return l, nil
}

// Append adds e at the end of the log. It blocks while the entry would take
// the log past MaxBytes, until TrimThrough frees space, ctx is done or the
// log is closed. With sync it returns only once e is on disk. e.Data is not
// retained.
func (l *Log) Append(ctx context.Context, e Entry, sync bool) error {
	return l.append(ctx, e, sync, true)
}

// TryAppend is Append that fails with ErrFull instead of waiting for space.
func (l *Log) TryAppend(e Entry, sync bool) error {
	return l.append(context.Background(), e, sync, false)
}

func (l *Log) append(ctx context.Context, e Entry, sync, wait bool) error {
	if e.First > e.Last {
		return fmt.Errorf("seglog: append [%d,%d]: %w: first above last", e.First, e.Last, ErrOrder)
	}
	recLen := int64(headerSize) + int64(len(e.Data))
	if len(e.Data) > MaxEntrySize || (l.opts.MaxBytes > 0 && recLen > l.opts.MaxBytes) {
		return fmt.Errorf("seglog: append [%d,%d]: %w: %d bytes (max entry %d, max log %d)",
			e.First, e.Last, ErrTooLarge, recLen, MaxEntrySize, l.opts.MaxBytes)
	}
	for {
		l.wmu.Lock()
		l.mu.Lock()
		err := l.writableLocked()
		if err == nil && l.haveLast && e.First <= l.lastSeq {
			err = fmt.Errorf("%w: last seq is %d", ErrOrder, l.lastSeq)
		}
		if err != nil {
			l.mu.Unlock()
			l.wmu.Unlock()
			return fmt.Errorf("seglog: append [%d,%d]: %w", e.First, e.Last, err)
		}
		if l.roomLocked(recLen) {
			l.mu.Unlock()
			break // still holding wmu
		}
		if !wait {
			held := l.bytes
			l.mu.Unlock()
			l.wmu.Unlock()
			return fmt.Errorf("seglog: append [%d,%d]: %w: %d bytes held, %d more would pass %d",
				e.First, e.Last, ErrFull, held, recLen, l.opts.MaxBytes)
		}
		space := l.spaceChLocked()
		l.mu.Unlock()
		l.wmu.Unlock()
		select {
		case <-space:
		case <-l.closedCh:
		case <-ctx.Done():
			return fmt.Errorf("seglog: append [%d,%d]: waiting for space: %w", e.First, e.Last, ctx.Err())
		}
	}
	n, err := l.write(e, recLen)
	l.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("seglog: append [%d,%d]: %w", e.First, e.Last, err)
	}
	if sync {
		if err := l.syncThrough(n); err != nil {
			return fmt.Errorf("seglog: append [%d,%d]: %w", e.First, e.Last, err)
		}
	}
	return nil
}

// writableLocked reports why nothing may be written, if anything. l.mu held.
func (l *Log) writableLocked() error {
	if l.closed {
		return ErrClosed
	}
	return l.err
}

// roomLocked reports whether recLen more bytes fit under MaxBytes. When they
// don't and every entry held is trimmed, the active segment is dropped to
// make room. l.wmu and l.mu held.
func (l *Log) roomLocked(recLen int64) bool {
	if l.opts.MaxBytes == 0 || l.bytes+recLen <= l.opts.MaxBytes {
		return true
	}
	// TrimThrough keeps the active segment even when all of it is trimmed:
	// dropping it on every trim would cost a file creation and a directory
	// fsync per batch whenever the consumer keeps up. It goes only when its
	// bytes are in the way.
	if n := len(l.segs); n == 1 && l.trimmed && l.segs[0].last <= l.trimSeq {
		l.resetActiveLocked()
		return l.bytes+recLen <= l.opts.MaxBytes
	}
	return false
}

// resetActiveLocked drops the active segment, all of whose entries are
// trimmed. l.wmu and l.mu held; l.mu is released while a sync finishes.
func (l *Log) resetActiveLocked() {
	l.waitSyncIdleLocked()
	s := l.segs[len(l.segs)-1]
	closeApp(s)
	wf := l.wf
	l.wf = nil
	l.segs = l.segs[:len(l.segs)-1]
	l.bytes -= s.size
	l.entries -= s.entries
	// Nothing trimmed needs to become durable any more.
	l.durable = l.committed
	l.durableSeq = l.lastSeq
	if wf != nil {
		if err := wf.Close(); err != nil {
			l.log.Warn("closing reset segment", "segment", s.path, "err", err)
		}
	}
	if err := os.Remove(s.path); err != nil {
		// The bytes are accounted as freed either way; a leftover file is
		// only trimmed data that reappears at the next Open.
		l.log.Warn("removing trimmed active segment", "segment", s.path, "err", err)
	}
	l.log.Debug("reset fully trimmed active segment", "segment", s.path, "bytes", s.size)
}

// waitSyncIdleLocked waits until no fdatasync is running, so the active
// segment's handle may be closed. l.mu held (released while waiting).
func (l *Log) waitSyncIdleLocked() {
	for l.syncing {
		ch := l.syncDoneLocked()
		l.mu.Unlock()
		<-ch
		l.mu.Lock()
	}
}

// write appends one record to the active segment, rolling to a new one first
// if needed, and returns the append's commit number. l.wmu held.
func (l *Log) write(e Entry, recLen int64) (uint64, error) {
	l.mu.Lock()
	var act *segment
	if len(l.segs) > 0 {
		act = l.segs[len(l.segs)-1]
	}
	roll := act == nil || (act.size > 0 && act.size+recLen > l.opts.SegmentSize)
	l.mu.Unlock()
	if roll {
		var err error
		if act, err = l.roll(e.First); err != nil {
			return 0, err
		}
	}
	off := act.size // changes only under wmu, which we hold
	var err error
	written := false
	if l.opts.Direct && !l.cached {
		written, err = l.writeDirect(act, e, off)
	}
	if !written && err == nil {
		err = l.writeCached(e, off)
	}
	if err != nil {
		err = fmt.Errorf("writing %s at offset %d: %w", act.path, off, err)
		// Take back a partial record so the next append does not land after
		// garbage; if that fails too, the segment's tail is unknown.
		if terr := l.wf.Truncate(off); terr != nil {
			l.mu.Lock()
			l.err = fmt.Errorf("%w; then truncating back: %w", err, terr)
			l.mu.Unlock()
			return 0, err
		}
		if off == 0 {
			// A segment is named after its first entry, and this one has
			// none: the next append may carry another First.
			l.dropEmptyActive(act)
		}
		return 0, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if act.entries == 0 {
		act.first = e.First
	}
	act.last = e.Last
	act.entries++
	act.size += recLen
	l.bytes += recLen
	l.entries++
	l.lastSeq, l.haveLast = e.Last, true
	l.committed++
	if l.dataCh != nil {
		close(l.dataCh)
		l.dataCh = nil
	}
	return l.committed, nil
}

// writeDirect appends e's record to act at off past the page cache. When
// the file system refuses, it writes nothing, reports written false, and
// turns Options.Direct off for good. l.wmu held.
func (l *Log) writeDirect(act *segment, e Entry, off int64) (written bool, err error) {
	refused := func(why error) (bool, error) {
		l.cached = true
		l.log.Info("the file system refuses O_DIRECT: segments are written through the page cache", "dir", l.dir, "why", why)
		return false, nil
	}
	if act.app == nil {
		a, err := directio.OpenAppender(act.path, off, &l.stage)
		if err != nil {
			return false, err
		}
		if a == nil {
			return refused(errors.New("O_DIRECT refused at open"))
		}
		act.app = a
	}
	if act.app.Size() != off {
		return false, fmt.Errorf("appending at %d of %s, whose data ends at %d", off, act.path, act.app.Size())
	}
	var hdr [headerSize]byte
	putHeader(hdr[:], e)
	err = act.app.Append(hdr[:], e.Data)
	if errors.Is(err, directio.ErrRefused) {
		closeApp(act)
		return refused(err)
	}
	return err == nil, err
}

// writeCached writes e's record at off through the page cache. l.wmu held.
func (l *Log) writeCached(e Entry, off int64) error {
	if len(e.Data) <= smallRecord {
		// One write call instead of two for small entries.
		l.scratch = appendRecord(l.scratch[:0], e)
		_, err := l.wf.WriteAt(l.scratch, off)
		return err
	}
	l.scratch = append(l.scratch[:0], make([]byte, headerSize)...)
	putHeader(l.scratch, e)
	_, err := l.wf.WriteAt(l.scratch, off)
	if err == nil {
		_, err = l.wf.WriteAt(e.Data, off+headerSize)
	}
	return err
}

// closeApp stops uncached appends to s, leaving its padding for the
// caller to cut (cutStale) or for Open to find. l.wmu held.
func closeApp(s *segment) {
	if s != nil && s.app != nil {
		s.app.Close()
		s.app = nil
	}
}

// dropEmptyActive removes the active segment act, which holds no record.
// l.wmu held.
func (l *Log) dropEmptyActive(act *segment) {
	l.mu.Lock()
	l.waitSyncIdleLocked()
	wf := l.wf
	l.wf = nil
	l.segs = l.segs[:len(l.segs)-1]
	l.mu.Unlock()
	closeApp(act)
	wf.Close()
	if err := os.Remove(act.path); err != nil {
		// Open removes an empty last segment anyway.
		l.log.Warn("removing empty segment after failed write", "segment", act.path, "err", err)
	}
}

// smallRecord is the payload size up to which header and payload are copied
// into one buffer and written with one call.
const smallRecord = 64 << 10

// roll seals the active segment, if any, and starts a new one named base.
// The sealed segment is made durable before the new file exists, so after
// any crash only the last segment can end in a torn record. l.wmu held.
func (l *Log) roll(base uint64) (*segment, error) {
	l.mu.Lock()
	n := l.committed
	var act *segment
	if len(l.segs) > 0 {
		act = l.segs[len(l.segs)-1]
	}
	l.mu.Unlock()
	if err := l.cutStale(act); err != nil {
		return nil, fmt.Errorf("sealing segment: %w", err)
	}
	if err := l.syncThrough(n); err != nil {
		return nil, fmt.Errorf("sealing segment: %w", err)
	}
	l.mu.Lock()
	l.waitSyncIdleLocked()
	old := l.wf
	l.wf = nil
	l.mu.Unlock()
	if old != nil {
		if err := old.Close(); err != nil {
			// Its data is already on disk; only the handle is in question.
			l.log.Warn("closing sealed segment", "segment", old.Name(), "err", err)
		}
	}
	path := filepath.Join(l.dir, segmentName(base))
	s := &segment{base: base, path: path}
	f := l.reuseSpare(s)
	if f == nil {
		var err error
		if f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
			return nil, fmt.Errorf("creating segment: %w", err)
		}
	}
	l.mu.Lock()
	l.segs = append(l.segs, s)
	l.wf = f
	l.dirDirty = true
	l.mu.Unlock()
	return s, nil
}

func segmentName(base uint64) string { return fmt.Sprintf("%020d.seg", base) }

func spareName(base uint64) string { return fmt.Sprintf("%020d.spare", base) }

// reuseSpare renames a spare no reader is in to s.path and returns it open
// for writing, or nil when there is none (or reusing it failed: then a new
// file is made instead). The rename is made durable with the directory
// at the next sync, like a creation. l.wmu held.
func (l *Log) reuseSpare(s *segment) *os.File {
	l.mu.Lock()
	var sp *segment
	for i, c := range l.spares {
		if c.readers == 0 {
			sp = c
			l.spares = slices.Delete(l.spares, i, i+1)
			break
		}
	}
	l.mu.Unlock()
	if sp == nil {
		return nil
	}
	fail := func(err error) *os.File {
		l.log.Warn("reusing a spare segment failed; creating a new one", "spare", sp.path, "err", err)
		_ = os.Remove(sp.path)
		return nil
	}
	if err := os.Rename(sp.path, s.path); err != nil {
		return fail(err)
	}
	sp.path = s.path
	f, err := os.OpenFile(s.path, os.O_RDWR, 0)
	if err != nil {
		return fail(err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fail(err)
	}
	s.stale = fi.Size()
	return f
}

// cutStale truncates a recycled segment to the records written into it,
// and an uncached one to its data (Options.Direct pads to a block), so
// that a sealed segment ends where its data does. It syncs the cut.
// l.wmu held.
func (l *Log) cutStale(s *segment) error {
	padded := s != nil && s.app != nil
	closeApp(s)
	if s == nil || (s.stale <= s.size && !padded) || l.wf == nil {
		return nil
	}
	err := l.wf.Truncate(s.size)
	if err == nil {
		// Synced here, not left to the caller's sync, which has nothing
		// to do when every record is durable already.
		err = fdatasync(l.wf)
	}
	if err != nil {
		err = fmt.Errorf("cutting the old bytes of reused segment %s at %d: %w", s.path, s.size, err)
		l.mu.Lock()
		if l.err == nil {
			l.err = err
		}
		l.mu.Unlock()
		return err
	}
	s.stale = 0
	return nil
}

// retire keeps trimmed segment files as spares, up to maxSpares, and
// removes the rest. Called without locks.
func (l *Log) retire(drop []*segment) []error {
	var errs []error
	for _, s := range drop {
		l.mu.Lock()
		keep := len(l.spares) < maxSpares && !l.closed
		l.mu.Unlock()
		if keep {
			sp := filepath.Join(l.dir, spareName(s.base))
			if err := os.Rename(s.path, sp); err == nil {
				l.mu.Lock()
				s.path = sp
				l.spares = append(l.spares, s)
				l.mu.Unlock()
				continue
			}
		}
		if err := os.Remove(s.path); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// Sync makes everything appended so far durable.
func (l *Log) Sync() error {
	l.mu.Lock()
	n := l.committed
	l.mu.Unlock()
	if err := l.syncThrough(n); err != nil {
		return fmt.Errorf("seglog: sync: %w", err)
	}
	return nil
}

// syncThrough returns once append number n is durable. Callers arriving
// while an fdatasync runs wait for it and then share the next one, so
// concurrent appenders commit as a group.
func (l *Log) syncThrough(n uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if l.durable >= n {
			return nil
		}
		if l.err != nil {
			return l.err
		}
		if l.closed {
			return ErrClosed
		}
		if l.syncing {
			ch := l.syncDoneLocked()
			l.mu.Unlock()
			<-ch
			l.mu.Lock()
			continue
		}
		// Older segments were made durable when they were sealed, so the
		// active one is all that can hold unsynced records.
		l.syncing = true
		target, targetSeq := l.committed, l.lastSeq
		f, dir := l.wf, l.dirDirty
		l.dirDirty = false
		l.mu.Unlock()
		var err error
		if f != nil {
			err = fdatasync(f)
		}
		if err == nil && dir {
			err = syncDir(l.dir)
		}
		l.mu.Lock()
		l.syncing = false
		if err != nil {
			// After a failed fdatasync the kernel may have dropped the dirty
			// pages; a retry that succeeds would prove nothing. Only a
			// reopen, which re-reads the files, can say what is on disk.
			l.err = fmt.Errorf("sync failed, reopen the log: %w", err)
			l.log.Error("sync failed", "err", err)
		} else {
			l.durable = max(l.durable, target)
			l.durableSeq = max(l.durableSeq, targetSeq)
		}
		if l.syncDone != nil {
			close(l.syncDone)
			l.syncDone = nil
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// TrimThrough drops every segment, oldest first, whose entries all have
// Last <= seq, except the active segment (see roomLocked). Blocked appenders
// are woken. Trimming is per segment: entries in a segment that is kept stay
// readable, also after a reopen, since trimming is not recorded on disk.
func (l *Log) TrimThrough(seq uint64) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return fmt.Errorf("seglog: trim through %d: %w", seq, ErrClosed)
	}
	if !l.trimmed || seq > l.trimSeq {
		l.trimSeq, l.trimmed = seq, true
	}
	k := 0
	for k < len(l.segs)-1 && l.segs[k].last <= seq {
		l.bytes -= l.segs[k].size
		l.entries -= l.segs[k].entries
		k++
	}
	drop := slices.Clone(l.segs[:k])
	l.segs = slices.Delete(l.segs, 0, k)
	if l.spaceCh != nil {
		close(l.spaceCh)
		l.spaceCh = nil
	}
	l.mu.Unlock()

	// Retired outside the lock: unlinking a large file can take a while.
	// A reader still inside one of these keeps its handle and moves on; a
	// spare it is in is not reused until it has (segment.readers).
	errs := l.retire(drop)
	if len(drop) > 0 {
		l.log.Debug("trimmed", "through", seq, "segments", len(drop))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("seglog: trim through %d: %w", seq, err)
	}
	return nil
}

// Stats returns a snapshot of the log's state.
func (l *Log) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := Stats{
		Bytes:      l.bytes,
		Entries:    l.entries,
		Segments:   len(l.segs),
		LastSeq:    l.lastSeq,
		DurableSeq: l.durableSeq,
	}
	if len(l.segs) > 0 && l.segs[0].entries > 0 {
		st.FirstSeq = l.segs[0].first
	}
	return st
}

// Close makes everything appended durable, then closes the log. Blocked
// appenders and readers return ErrClosed.
func (l *Log) Close() error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	n := l.committed
	var act *segment
	if len(l.segs) > 0 {
		act = l.segs[len(l.segs)-1]
	}
	l.mu.Unlock()
	var errs []error
	// A clean stop leaves no old bytes behind the records: Open then has
	// nothing to cut.
	if err := l.cutStale(act); err != nil {
		errs = append(errs, err)
	}
	if err := l.syncThrough(n); err != nil {
		errs = append(errs, err)
	}
	l.mu.Lock()
	l.waitSyncIdleLocked()
	l.closed = true
	close(l.closedCh)
	wf := l.wf
	l.wf = nil
	l.mu.Unlock()
	if wf != nil {
		errs = append(errs, wf.Close())
	}
	errs = append(errs, l.lock.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("seglog: close %s: %w", l.dir, err)
	}
	return nil
}

func (l *Log) syncDoneLocked() chan struct{} {
	if l.syncDone == nil {
		l.syncDone = make(chan struct{})
	}
	return l.syncDone
}

func (l *Log) dataChLocked() chan struct{} {
	if l.dataCh == nil {
		l.dataCh = make(chan struct{})
	}
	return l.dataCh
}

func (l *Log) spaceChLocked() chan struct{} {
	if l.spaceCh == nil {
		l.spaceCh = make(chan struct{})
	}
	return l.spaceCh
}
