package agent

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"standby/internal/capture"
	"standby/internal/wire"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// runResync copies dirty ranges (the whole disk at first, then whatever a
// gap or a crash left) while the workload goes on writing. A range stays
// in flight until the master target confirms it durable; when nothing is
// dirty or in flight any more, SyncDone tells the master target the replica
// is consistent again. Several readers work at once: a catch-up after an
// outage reads scattered blocks, and one read at a time leaves the disk
// idle between them.
func (d *disk) runResync(ctx context.Context) error {
	work := make(chan struct{}, d.a.cfg.ResyncReaders)
	var wg sync.WaitGroup
	for range d.a.cfg.ResyncReaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.resyncReader(ctx, work)
		}()
	}
	defer wg.Wait()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var lastDone int64
	lastAt := time.Now()
	for ctx.Err() == nil {
		now := time.Now()
		if dt := now.Sub(lastAt); dt >= time.Second {
			done := d.copiedTotal()
			r := float64(done-lastDone) / dt.Seconds()
			old := float64(d.rate.Load())
			d.rate.Store(int64(0.5*old + 0.5*r))
			lastDone, lastAt = done, now
		}
		if d.tracker.DirtyBytes()-d.tracker.InflightBytes() > 0 && d.a.isConnected() {
			for range cap(work) {
				select {
				case work <- struct{}{}:
				default:
				}
			}
		}
		d.a.q.mu.Lock()
		if d.resyncing && d.tracker.DirtyBytes() == 0 {
			d.resyncing = false
			d.initial = false
			d.a.q.pushMarkerLocked(d, wire.Record{Op: wire.OpSyncDone, Disk: d.index})
			d.a.log.Info("resync complete", "disk", d.cfg.Name, "took", time.Since(d.syncStart).Round(time.Millisecond))
		}
		if !d.resyncing && d.tracker.DirtyBytes() > 0 {
			d.beginResyncLocked(d.a.q)
		}
		d.a.q.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-d.wakeCh:
		case <-tick.C:
		}
	}
	return nil
}

// resyncReader takes dirty runs and queues them as copies for as long as
// there are any, then waits to be told there is work again.
func (d *disk) resyncReader(ctx context.Context, work <-chan struct{}) {
	for ctx.Err() == nil {
		if d.a.isConnected() {
			if err := d.a.q.waitCopyRoom(ctx, d.a.cfg.ResyncChunk); err != nil {
				return
			}
			gen := d.a.q.generation()
			if off, n, ok := d.tracker.TakeDirty(d.a.cfg.ResyncChunk); ok {
				if err := d.paceCopy(ctx, off, n); err != nil {
					// Shutting down: the range goes back to dirty.
					d.a.q.requeueCopies()
					return
				}
				if err := d.readCopy(gen, off, n); err != nil {
					d.lastErr.Store(err.Error())
					d.a.log.Error("resync read failed", "disk", d.cfg.Name, "err", err)
					sleepCtx(ctx, time.Second)
				}
				continue
			}
		}
		select {
		case <-ctx.Done():
		case <-work:
		}
	}
}

// paceCopy waits until the copy rate allows reading the data of
// [off, off+n): holes are not read, so they are not counted. It waits
// before readCopy takes the range's region lock, so a workload write to
// the range is never held up by the cap.
func (d *disk) paceCopy(ctx context.Context, off, n int64) error {
	if d.a.copyRate == nil {
		return nil
	}
	var data int64
	if err := d.dev.Extents(off, n, func(_, en int64, isData bool) error {
		if isData {
			data += en
		}
		return nil
	}); err != nil {
		data = n // readCopy will report the error; pace as if all were data
	}
	return d.a.copyRate.Wait(ctx, data)
}

// copiedTotal is how far the current sync is.
func (d *disk) copiedTotal() int64 {
	if d.tracker == nil {
		return d.copiedData.Load()
	}
	return d.syncTotal.Load() - d.tracker.DirtyBytes()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// runScan replicates a disk the agent is not in front of: a fingerprint
// pass finds changed blocks, they are sent as copies, and the pass is
// committed only once the master target has all of it durably, so a pass
// cut short by a crash or an outage is simply repeated.
func (d *disk) runScan(ctx context.Context) error {
	for ctx.Err() == nil {
		for !d.a.isConnected() {
			select {
			case <-ctx.Done():
				return nil
			case <-d.wakeCh:
			case <-time.After(500 * time.Millisecond):
			}
		}
		start := time.Now()
		started := false
		var lastSeq uint64
		var stats capture.PassStats
		var err error
		gen := d.a.q.generation()
		d.scanning.Store(true)
		stats, err = d.scanner.Pass(ctx, d.a.copyRate.ReaderAt(ctx, d.dev), func(c capture.Change) error {
			if !started {
				d.a.q.mu.Lock()
				d.resyncing = true
				d.syncStart = time.Now()
				d.a.q.pushMarkerLocked(d, wire.Record{Op: wire.OpSyncStart, Disk: d.index})
				d.a.q.mu.Unlock()
				started = true
			}
			r := wire.Record{Op: wire.OpCopyZero, Disk: d.index, Offset: uint64(c.Off), Length: uint32(len(c.Data))}
			if c.Zero {
				r.Length = uint32(c.Len)
			} else {
				r.Op = wire.OpCopy
				r.Data = append([]byte(nil), c.Data...)
				d.copiedData.Add(int64(len(c.Data)))
			}
			if err := d.a.q.waitCopyRoom(ctx, int64(len(r.Data))); err != nil {
				return err
			}
			lastSeq = d.a.q.pushCopy(d, r, nil)
			return nil
		})
		d.scanning.Store(false)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			d.lastErr.Store(err.Error())
			d.a.log.Error("scan pass failed", "disk", d.cfg.Name, "err", err)
			sleepCtx(ctx, 5*time.Second)
			continue
		}
		if started {
			lastSeq = d.a.q.pushMarker(d, wire.Record{Op: wire.OpSyncDone, Disk: d.index})
			d.a.q.pushMarker(nil, wire.Record{Op: wire.OpEpoch, Flags: wire.EpochScan, Offset: uint64(time.Now().UnixNano())})
			if !d.waitDurable(ctx, lastSeq) || d.a.q.generation() != gen {
				continue // session lost: the uncommitted pass will be repeated
			}
			d.a.q.mu.Lock()
			d.resyncing = false
			d.a.q.mu.Unlock()
		}
		if err := d.scanner.Commit(); err != nil {
			d.lastErr.Store(err.Error())
			d.a.log.Error("committing scan pass", "disk", d.cfg.Name, "err", err)
		}
		d.a.log.Info("scan pass done", "disk", d.cfg.Name, "changed_bytes", stats.ChangedBytes, "took", time.Since(start).Round(time.Millisecond))
		sleepCtx(ctx, d.cfg.ScanInterval)
	}
	return nil
}

// waitDurable waits until seq is durable at the master target; false if
// the session to the process server dropped meanwhile.
func (d *disk) waitDurable(ctx context.Context, seq uint64) bool {
	for ctx.Err() == nil {
		st := d.a.q.stats()
		if st.Durable >= seq {
			return true
		}
		if !d.a.isConnected() {
			return false
		}
		sleepCtx(ctx, 50*time.Millisecond)
	}
	return false
}
