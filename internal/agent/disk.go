package agent

import (
	"context"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"standby/internal/blockdev"
	"standby/internal/capture"
	"standby/internal/wire"
)

// Disk modes.
const (
	ModeIntercept = "intercept"
	ModeScan      = "scan"
)

// Replication states a disk reports.
const (
	StateInitialSync = "initial-sync"
	StateResync      = "resync"
	StateReplicating = "replicating"
)

// disk is one protected disk of the machine.
type disk struct {
	a       *Agent
	index   uint16
	cfg     DiskConfig
	dev     *blockdev.Disk
	tracker *capture.Tracker
	scanner *capture.Scanner
	locks   regionLocks

	wakeCh chan struct{}

	// guarded by a.q.mu: whether the replica is between SyncStart and SyncDone.
	resyncing bool
	initial   bool // the current resync is the first full copy

	syncTotal  atomic.Int64 // bytes to copy in this resync
	syncStart  time.Time
	rate       atomic.Int64 // bytes/s, smoothed
	copiedData atomic.Int64 // bytes of data sent by copies (holes and zeros excluded)
	lastErr    atomic.Value // string
	scanning   atomic.Bool
}

func (d *disk) kick() {
	select {
	case d.wakeCh <- struct{}{}:
	default:
	}
}

// beginResyncLocked marks the replica inconsistent from the next sequence
// number on. Caller holds q.mu.
func (d *disk) beginResyncLocked(q *queue) {
	var dirty int64
	if d.tracker != nil { // a scan-mode disk has none: its pass is repeated
		dirty = d.tracker.DirtyBytes()
	}
	if !d.resyncing {
		d.resyncing = true
		d.syncStart = time.Now()
		d.a.log.Info("replica of disk is inconsistent until resynced", "disk", d.cfg.Name, "dirty_bytes", dirty)
		q.pushMarkerLocked(d, wire.Record{Op: wire.OpSyncStart, Disk: d.index})
	}
	d.syncTotal.Store(dirty)
}

// regionLocks serialise overlapping writes with the assignment of their
// sequence numbers, so the replica applies overlapping writes in the order
// the disk saw them; writes to other regions proceed in parallel.
type regionLocks struct {
	mu [64]sync.Mutex
}

const regionShift = 20 // 1 MiB regions

func (r *regionLocks) lock(off, n int64) func() {
	if n <= 0 {
		n = 1
	}
	first, last := off>>regionShift, (off+n-1)>>regionShift
	var mask uint64
	if last-first >= 63 {
		mask = ^uint64(0)
	} else {
		for c := first; c <= last; c++ {
			mask |= 1 << uint(c&63)
		}
	}
	for m := mask; m != 0; m &= m - 1 {
		r.mu[bits.TrailingZeros64(m)].Lock()
	}
	return func() {
		for m := mask; m != 0; m &= m - 1 {
			r.mu[bits.TrailingZeros64(m)].Unlock()
		}
	}
}

// The nbd.Backend of an intercepted disk: every write goes to the real disk
// and into the change queue under its region lock; it is acknowledged only
// after the activity log covers its region.

func (d *disk) Size() int64 { return d.dev.Size() }

func (d *disk) ReadAt(_ context.Context, p []byte, off int64) error {
	if _, err := d.dev.ReadAt(p, off); err != nil {
		return fmt.Errorf("reading %s at %d: %w", d.cfg.Name, off, err)
	}
	return nil
}

func (d *disk) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	return d.WriteAtKeep(ctx, d.a.q.captureBuf(p), len(p), off, fua)
}

// WriteAtKeep is WriteAt for a payload in a buffer of the queue's pool
// (the NBD server reads payloads into that pool): the queue keeps the
// buffer itself instead of a copy (nbd.BufferKeeper).
func (d *disk) WriteAtKeep(ctx context.Context, buf *[]byte, size int, off int64, fua bool) error {
	d.a.gate.enter()
	defer d.a.gate.leave()
	p, n := (*buf)[:size], int64(size)
	if err := d.tracker.BeginWrite(ctx, off, n); err != nil {
		d.a.q.bufs.Put(buf)
		return fmt.Errorf("recording write to %s in the activity log: %w", d.cfg.Name, err)
	}
	unlock := d.locks.lock(off, n)
	if _, err := d.dev.WriteAt(p, off); err != nil {
		unlock()
		d.a.q.bufs.Put(buf)
		d.failed(off, n)
		return fmt.Errorf("writing %s at %d: %w", d.cfg.Name, off, err)
	}
	d.a.q.pushCaptured(d, wire.Record{Op: wire.OpWrite, Disk: d.index, Offset: uint64(off), Length: uint32(n), Data: p}, buf)
	unlock()
	if fua {
		return d.flush()
	}
	return nil
}

// failed handles a write whose effect on the disk is unknown: replicate
// whatever the disk now holds there.
func (d *disk) failed(off, n int64) {
	d.tracker.MarkDirty(off, n)
	d.tracker.EndWrite(off, n)
	d.a.q.mu.Lock()
	d.beginResyncLocked(d.a.q)
	d.a.q.mu.Unlock()
	d.kick()
}

func (d *disk) zero(ctx context.Context, off, n int64, fua, unmap bool) error {
	d.a.gate.enter()
	defer d.a.gate.leave()
	if err := d.tracker.BeginWrite(ctx, off, n); err != nil {
		return fmt.Errorf("recording zeroing of %s in the activity log: %w", d.cfg.Name, err)
	}
	unlock := d.locks.lock(off, n)
	var err error
	if unmap {
		err = d.dev.PunchHole(off, n)
	} else {
		err = d.dev.ZeroRange(off, n, false)
	}
	if err != nil {
		unlock()
		d.failed(off, n)
		return fmt.Errorf("zeroing %s at %d+%d: %w", d.cfg.Name, off, n, err)
	}
	// A zero record is at most MaxRecordLength long; split larger ranges.
	// Each record holds its own pending count on the extents (the outer
	// BeginWrite already made them active, so these do not wait), which
	// its acknowledgment releases.
	var rerr error
	for o := off; o < off+n; o += wire.MaxRecordLength {
		l := min(off+n-o, wire.MaxRecordLength)
		if err := d.tracker.BeginWrite(ctx, o, l); err != nil {
			// Only when the tracker is closing: no record may be queued
			// without its count (the acknowledgment would release one
			// never taken), so the rest is left dirty instead.
			d.tracker.MarkDirty(o, off+n-o)
			rerr = fmt.Errorf("recording zeroing of %s at %d in the activity log: %w", d.cfg.Name, o, err)
			break
		}
		d.a.q.pushCaptured(d, wire.Record{Op: wire.OpZero, Disk: d.index, Offset: uint64(o), Length: uint32(l)}, nil)
	}
	d.tracker.EndWrite(off, n)
	unlock()
	if rerr != nil {
		return rerr
	}
	if fua {
		return d.flush()
	}
	return nil
}

func (d *disk) Trim(ctx context.Context, off, n int64, fua bool) error {
	return d.zero(ctx, off, n, fua, true)
}

func (d *disk) WriteZeroes(ctx context.Context, off, n int64, fua, noHole bool) error {
	return d.zero(ctx, off, n, fua, !noHole)
}

func (d *disk) Flush(context.Context) error { return d.flush() }

// flush makes the disk durable and closes an epoch: everything acknowledged
// before the flush is one crash-consistent state.
func (d *disk) flush() error {
	if err := d.dev.Sync(); err != nil {
		return fmt.Errorf("flushing %s: %w", d.cfg.Name, err)
	}
	d.a.q.epochIfDirty(wire.EpochFlush)
	return nil
}

// readCopy reads a range under its region lock and queues it as copies.
// Holes of the source are not read, and zero runs inside what is read
// travel as ranges, not data, so the replica is as sparse as the source.
// Reads bypass the page cache (blockdev.ReadDirect) and the records keep
// slices of the read buffer rather than copies of it.
//
// gen is the queue's generation from before the range was taken from the
// tracker: if the copies are forgotten after that (requeueCopies), the
// range is not registered as in flight (see copiesQueued).
func (d *disk) readCopy(gen uint64, off, n int64) error {
	unlock := d.locks.lock(off, n)
	defer unlock()
	var last uint64
	err := d.dev.Extents(off, n, func(eo, en int64, data bool) error {
		if !data {
			last = d.a.q.pushCopy(d, wire.Record{Op: wire.OpCopyZero, Disk: d.index, Offset: uint64(eo), Length: uint32(en)}, nil)
			return nil
		}
		// A recycled buffer: a fresh one costs a fault per page on its
		// first touch here (see internal/bufpool).
		sb := d.a.q.newShared(d.a.q.bufs.Get(int(en)))
		defer d.a.q.unshare(sb)
		buf := (*sb.b)[:en]
		if _, err := d.dev.ReadDirect(buf, eo); err != nil {
			return err
		}
		const blk = 4096
		for start := int64(0); start < en; {
			zero := blockdev.IsZero(buf[start:min(start+blk, en)])
			end := start + blk
			for end < en && blockdev.IsZero(buf[end:min(end+blk, en)]) == zero {
				end += blk
			}
			end = min(end, en)
			r := wire.Record{Op: wire.OpCopyZero, Disk: d.index, Offset: uint64(eo + start), Length: uint32(end - start)}
			var shared *sharedBuf
			if !zero {
				r.Op = wire.OpCopy
				r.Data = buf[start:end]
				shared = sb
				if 4*(end-start) < en {
					// A small run would pin the whole buffer while queued.
					r.Data = append([]byte(nil), r.Data...)
					shared = nil
				}
				d.copiedData.Add(end - start)
			}
			last = d.a.q.pushCopy(d, r, shared)
			start = end
		}
		return nil
	})
	if err != nil {
		d.a.q.requeueCopies()
		return fmt.Errorf("reading %s at %d for resync: %w", d.cfg.Name, off, err)
	}
	if last != 0 {
		d.a.q.copiesQueued(gen, d, off, n, last)
	}
	return nil
}
