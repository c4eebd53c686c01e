package mastertarget

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"standby/internal/fsutil"
	"standby/internal/relay"
	"standby/internal/wire"
)

// runApply applies the intake to the replicas, one whole epoch at a time,
// and checkpoints regularly. A record at or below the checkpoint is never
// applied twice in a way that matters: replay is in order from the
// checkpoint, so the result is the same. With the undo journal on, the
// before-images of a group of records are made durable before any of them
// touches the replica (write-ahead), and a replayed record whose
// before-image is already in the journal is not preserved again: its
// replica range may already hold the new data.
func (m *machine) runApply(ctx context.Context) {
	lg := m.s.log.With("machine", m.name)
	m.mu.Lock()
	from := m.live.AppliedSeq + 1
	m.mu.Unlock()
	lastSync := time.Now()
	var unsynced int64
	// Entries are read ahead by a goroutine so that waiting for an epoch
	// marker and waiting for new entries can be told apart, and so that
	// several batches can be applied under one journal fsync. It merges
	// the intake log with the relayed copies, in sequence order.
	type item struct {
		b   wire.Batch
		buf []byte // what b's records point into: back to the pool once applied
		err error
	}
	// Bounded so read-ahead holds at most a few batches (8 MiB each) in memory.
	entries := make(chan item, 8)
	go func() {
		defer close(entries)
		err := relay.Merge(ctx, m.intake, m.relay, from, func(e relay.Entry) error {
			data := e.Data
			if e.FromLog {
				// The log reader reuses its buffer.
				data = m.bufs.Get(len(e.Data))
				copy(data, e.Data)
			}
			b, err := wire.DecodeBatch(data)
			if err != nil {
				err = fmt.Errorf("intake entry %d..%d: %w", e.First, e.Last, err)
			}
			select {
			case entries <- item{b: b, buf: data, err: err}:
			case <-ctx.Done():
				return ctx.Err()
			}
			// An apply waiting for a marker looks at what just came.
			m.mu.Lock()
			m.cond.Broadcast()
			m.mu.Unlock()
			if err != nil {
				return errReported
			}
			return nil
		})
		if err != nil && err != errReported && ctx.Err() == nil {
			select {
			case entries <- item{err: err}:
			case <-ctx.Done():
			}
		}
	}()
	tick := time.NewTicker(m.s.cfg.SyncInterval)
	defer tick.Stop()
	var pending []wire.Record
	var pendingBytes int
	// held lists the buffers pending records point into, in order, each
	// with the last seq that uses it.
	type heldBuf struct {
		last uint64
		buf  []byte
	}
	var held []heldBuf
	take := func(it item, ok bool) bool {
		if !ok {
			return false
		}
		if it.err != nil {
			if ctx.Err() == nil {
				m.fail(lg, it.err)
			}
			return false
		}
		for _, rec := range it.b.Records {
			pending = append(pending, rec)
			pendingBytes += len(rec.Data)
		}
		if n := len(it.b.Records); n > 0 {
			held = append(held, heldBuf{it.b.Records[n-1].Seq, it.buf})
		}
		return true
	}
	release := func(through uint64) {
		k := 0
		for k < len(held) && held[k].last <= through {
			m.bufs.Put(held[k].buf)
			held[k] = heldBuf{}
			k++
		}
		held = held[k:]
	}
	idle := time.NewTimer(time.Hour)
	idle.Stop()
	defer idle.Stop()
	for {
		if len(pending) == 0 && unsynced > 0 && len(entries) == 0 {
			// Idle: make what was applied durable now rather than at the
			// next tick, so relayed copies are confirmed (and resyncs
			// end) sooner, but not more often than idleSyncGap: a
			// checkpoint fsyncs the replicas, and a workload of small
			// writes leaves apply idle between every two batches.
			if wait := idleSyncGap - time.Since(lastSync); wait > 0 {
				idle.Reset(wait)
			} else {
				if err := m.sync(); err != nil {
					m.fail(lg, err)
					return
				}
				lastSync, unsynced = time.Now(), 0
			}
		}
		if len(pending) == 0 {
			select {
			case it, ok := <-entries:
				if !take(it, ok) {
					_ = m.sync()
					return
				}
			case <-idle.C:
				continue
			case <-tick.C:
				if unsynced > 0 || time.Since(lastSync) > m.s.cfg.SyncInterval {
					if err := m.sync(); err != nil {
						m.fail(lg, err)
						return
					}
					lastSync, unsynced = time.Now(), 0
				}
				continue
			case <-ctx.Done():
				_ = m.sync()
				return
			}
		}
		// Gather what else is already decoded, up to a bound.
	drain:
		for pendingBytes < 64<<20 && len(pending) < 1<<16 {
			select {
			case it, ok := <-entries:
				if !take(it, ok) {
					_ = m.sync()
					return
				}
			default:
				break drain
			}
		}
		ready := m.readyPrefix(pending)
		roomToDrain := func() bool { return len(entries) > 0 && pendingBytes < 64<<20 && len(pending) < 1<<16 }
		if ready == 0 && roomToDrain() {
			continue // what follows may hold the marker, or a sync-start
		}
		if ready == 0 {
			// Wait for the epoch marker that closes pending[0]'s epoch;
			// make what is applied durable first.
			if unsynced > 0 {
				if err := m.sync(); err != nil {
					m.fail(lg, err)
					return
				}
				lastSync, unsynced = time.Now(), 0
			}
			m.mu.Lock()
			// While apply waits, copies must not wait for room in the relay
			// (relayCopies): the marker may be behind them.
			m.applyWaiting = true
			for m.epochLimit < pending[0].Seq && m.consistentLocked() && !m.closed && ctx.Err() == nil && !roomToDrain() {
				m.cond.Wait()
			}
			m.applyWaiting = false
			closed := m.closed
			m.mu.Unlock()
			if closed || ctx.Err() != nil {
				_ = m.sync()
				return
			}
			continue
		}
		n, err := m.applyGroup(pending[:ready])
		if err != nil {
			m.fail(lg, err)
			return
		}
		for _, rec := range pending[:ready] {
			pendingBytes -= len(rec.Data)
		}
		release(pending[ready-1].Seq)
		clear(pending[:ready])
		pending = pending[ready:]
		unsynced += n
		if unsynced > 1<<30 || time.Since(lastSync) > m.s.cfg.SyncInterval {
			if err := m.sync(); err != nil {
				m.fail(lg, err)
				return
			}
			lastSync, unsynced = time.Now(), 0
		}
		if ctx.Err() != nil {
			_ = m.sync()
			return
		}
	}
}

// directMin is the smallest copy written to a replica uncached: below it
// an O_DIRECT write's fixed cost is more than the page-cache write it
// saves, and small copies (a resync of scattered blocks) are likelier to
// be read back soon for before-images.
const directMin = 128 << 10

// idleSyncGap is the least time between two checkpoints taken because
// apply is idle (see runApply).
const idleSyncGap = 50 * time.Millisecond

// errReported ends the read-ahead after it has passed an error on.
var errReported = errors.New("reported")

// readyPrefix counts the records at the head of recs that may be applied
// now: those inside a closed epoch, or any while a disk is resyncing (the
// replica then has no consistent point to protect, and waiting could
// deadlock: copies become durable here only once applied, and the process
// server frees cache, letting the next marker through, only for durable
// data).
func (m *machine) readyPrefix(recs []wire.Record) int {
	m.mu.Lock()
	limit := m.epochLimit
	consistent := make([]bool, len(m.live.Disks))
	for i, d := range m.live.Disks {
		consistent[i] = d.Consistent
	}
	applied := m.live.AppliedSeq
	m.mu.Unlock()
	all := func() bool {
		for _, c := range consistent {
			if !c {
				return false
			}
		}
		return true
	}
	// Records up to a sync-start need no closing marker: from there on
	// the machine has no consistent point until the resync ends, so
	// waiting for one would only hold up the copies behind it (a queue
	// overflow drops the agent's queued markers with its writes).
	lastSyncStart := -1
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].Op == wire.OpSyncStart {
			lastSyncStart = i
			break
		}
	}
	for i, rec := range recs {
		if rec.Seq > limit && rec.Seq > applied && all() && i > lastSyncStart {
			return i
		}
		switch rec.Op {
		case wire.OpSyncStart:
			consistent[rec.Disk] = false
		case wire.OpSyncDone:
			consistent[rec.Disk] = true
		}
	}
	return len(recs)
}

// applyGroup applies records in order: before-images first (one fsync for
// a run of records), then the replica writes. A run never writes the same
// region twice, because the before-image of the second write must be the
// first write's data, which only exists once the first is applied.
func (m *machine) applyGroup(recs []wire.Record) (int64, error) {
	if m.journal == nil {
		return m.applyRun(recs)
	}
	var total int64
	const grain = 16 // 64 KiB regions for overlap detection
	touched := map[uint64]struct{}{}
	start := 0
	for i := 0; i <= len(recs); i++ {
		cut := i == len(recs)
		if !cut && recs[i].Op.Modifies() {
			rec := recs[i]
			first := rec.Offset >> grain
			last := (rec.Offset + uint64(max(rec.Length, 1)) - 1) >> grain
			for r := first; r <= last && !cut; r++ {
				if _, ok := touched[uint64(rec.Disk)<<48|r]; ok {
					cut = true
				}
			}
			if !cut {
				for r := first; r <= last; r++ {
					touched[uint64(rec.Disk)<<48|r] = struct{}{}
				}
			}
		}
		if !cut {
			continue
		}
		if i > start {
			if err := m.preserve(recs[start:i]); err != nil {
				return total, err
			}
			n, err := m.applyRun(recs[start:i])
			total += n
			if err != nil {
				return total, err
			}
		}
		start = i
		clear(touched)
		if i < len(recs) && recs[i].Op.Modifies() {
			i-- // re-examine recs[i] as the first of the next run
		}
	}
	return total, nil
}

// preserve journals the before-images of a run and makes them durable.
func (m *machine) preserve(recs []wire.Record) error {
	last := m.journal.LastSeq()
	m.mu.Lock()
	synced := make([]bool, len(m.live.Disks))
	for i, d := range m.live.Disks {
		synced[i] = d.Synced
	}
	applied := m.live.AppliedSeq
	m.mu.Unlock()
	// Start reading every before-image of the run at once: the reads below
	// then find them cached instead of waiting for the disk one by one.
	if len(recs) > 1 {
		sy := append([]bool(nil), synced...)
		for _, rec := range recs {
			if rec.Op == wire.OpSyncDone {
				sy[rec.Disk] = true
			}
			if rec.Seq > applied && rec.Seq > last && rec.Op.Modifies() && sy[rec.Disk] {
				m.replica[rec.Disk].Prefetch(int64(rec.Offset), int64(rec.Length))
			}
		}
	}
	preserved := false
	for _, rec := range recs {
		if rec.Op == wire.OpSyncDone {
			synced[rec.Disk] = true
		}
		if rec.Seq <= applied || rec.Seq <= last {
			continue
		}
		// Before the first full copy there is no point to go back to.
		if !rec.Op.Modifies() || !synced[rec.Disk] {
			continue
		}
		preserve := m.journal.Preserve
		if rec.Op == wire.OpZero || rec.Op == wire.OpCopyZero {
			preserve = m.journal.PreserveZero // already-zero blocks need no before-image
		}
		if err := preserve(rec.Seq, int(rec.Disk), int64(rec.Offset), int64(rec.Length)); err != nil {
			return fmt.Errorf("preserving before-image of seq %d: %w", rec.Seq, err)
		}
		preserved = true
	}
	if preserved {
		if err := m.journal.Sync(); err != nil {
			return fmt.Errorf("syncing undo journal: %w", err)
		}
	}
	return nil
}

func (m *machine) applyRun(recs []wire.Record) (int64, error) {
	var total int64
	for _, rec := range recs {
		m.mu.Lock()
		skip := rec.Seq <= m.live.AppliedSeq
		m.mu.Unlock()
		if skip {
			continue
		}
		n, err := m.apply(rec)
		if err != nil {
			return total, err
		}
		total += n
		m.notePoint(rec)
	}
	return total, nil
}

// consistentLocked reports whether every replica disk is at a consistent
// point in the applied state. Caller holds m.mu.
func (m *machine) consistentLocked() bool {
	for _, d := range m.live.Disks {
		if !d.Consistent {
			return false
		}
	}
	return true
}

func (m *machine) fail(lg interface{ Error(string, ...any) }, err error) {
	lg.Error("apply stopped", "err", err)
	m.mu.Lock()
	m.applyErr = err.Error()
	m.mu.Unlock()
}

// apply performs one record on the replicas.
func (m *machine) apply(rec wire.Record) (int64, error) {
	var n int64
	if m.journal != nil && rec.Op.Modifies() {
		unlock := m.journal.Lock(int(rec.Disk), int64(rec.Offset), int64(rec.Length))
		defer unlock()
	}
	switch rec.Op {
	case wire.OpWrite, wire.OpCopy:
		var err error
		if rec.Op == wire.OpCopy && len(rec.Data) >= directMin {
			// Large copies (an initial copy) are block-aligned and not
			// read back soon: past the page cache (blockdev.WriteDirect).
			_, err = m.replica[rec.Disk].WriteDirect(rec.Data, int64(rec.Offset), &m.directBuf)
		} else {
			_, err = m.replica[rec.Disk].WriteAt(rec.Data, int64(rec.Offset))
		}
		if err != nil {
			return 0, fmt.Errorf("applying seq %d to %s: %w", rec.Seq, m.layout[rec.Disk].Name, err)
		}
		n = int64(len(rec.Data))
	case wire.OpZero, wire.OpCopyZero:
		if err := m.replica[rec.Disk].ZeroRange(int64(rec.Offset), int64(rec.Length), true); err != nil {
			return 0, fmt.Errorf("zeroing seq %d on %s: %w", rec.Seq, m.layout[rec.Disk].Name, err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch rec.Op {
	case wire.OpEpoch:
		m.live.EpochSeq = rec.Seq
		m.live.EpochTime = int64(rec.Offset)
	case wire.OpBookmark:
		m.live.EpochSeq = rec.Seq
		var bm wire.Bookmark
		if json.Unmarshal(rec.Data, &bm) == nil {
			m.live.EpochTime = bm.Time
		}
	case wire.OpSyncStart:
		m.live.Disks[rec.Disk].Consistent = false
	case wire.OpSyncDone:
		m.live.Disks[rec.Disk].Consistent = true
		m.live.Disks[rec.Disk].Synced = true
	}
	m.live.AppliedSeq = rec.Seq
	m.appliedAt = time.Now()
	m.bytesApply += uint64(n)
	return n, nil
}

// sync makes the applied state durable: replicas first, then the
// checkpoint that says so, then the intake it covers may go.
func (m *machine) sync() error {
	m.mu.Lock()
	cp := cloneCP(m.live)
	prev := m.cp.AppliedSeq
	m.mu.Unlock()
	if cp.AppliedSeq == prev {
		return nil
	}
	for i, r := range m.replica {
		if err := r.Sync(); err != nil {
			return fmt.Errorf("fsync of replica %s: %w", m.layout[i].Name, err)
		}
	}
	if err := m.writeCheckpoint(cp); err != nil {
		return err
	}
	m.mu.Lock()
	m.cp = cp
	k := 0
	for k < len(m.relayOpen) && m.relayOpen[k].last <= cp.AppliedSeq {
		k++
	}
	m.relayOpen = m.relayOpen[k:]
	m.updateDurableLocked()
	m.mu.Unlock()
	if err := m.intake.TrimThrough(cp.AppliedSeq); err != nil {
		return fmt.Errorf("trimming intake: %w", err)
	}
	m.wake()
	return nil
}

func (m *machine) writeCheckpoint(cp checkpoint) error {
	b, err := json.MarshalIndent(cp, "", "  ")
	if err != nil {
		return err
	}
	p := filepath.Join(m.dir, stateFile)
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("writing checkpoint: %w", err)
	}
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err == nil {
		err = fsutil.SyncDir(m.dir)
	}
	if err != nil {
		return fmt.Errorf("writing checkpoint of %s: %w", m.name, err)
	}
	return nil
}

// DiskStatus is one replica disk.
type DiskStatus struct {
	Name       string `json:"name"`
	Size       int64  `json:"size"`
	Replica    string `json:"replica"`
	State      string `json:"state"`
	Consistent bool   `json:"consistent"`
}

// MachineStatus is the master target's view of one machine.
type MachineStatus struct {
	Machine       string       `json:"machine"`
	Connected     bool         `json:"connected"`
	ProcessServer string       `json:"process_server,omitempty"`
	ReceivedSeq   uint64       `json:"received_seq"`
	DurableSeq    uint64       `json:"durable_seq"`
	AppliedSeq    uint64       `json:"last_applied_seq"`
	EpochSeq      uint64       `json:"epoch_seq"`
	EpochTime     time.Time    `json:"epoch_time"`
	LagSeconds    float64      `json:"lag_seconds"`
	IntakeBytes   int64        `json:"intake_bytes"`
	PendingBytes  int64        `json:"pending_bytes"`
	BytesReceived uint64       `json:"bytes_received"`
	BytesApplied  uint64       `json:"bytes_applied"`
	ApplyError    string       `json:"apply_error,omitempty"`
	Disks         []DiskStatus `json:"disks"`
}

func (m *machine) status() MachineStatus {
	st := m.intake.Stats()
	m.mu.Lock()
	defer m.mu.Unlock()
	ms := MachineStatus{Machine: m.name, Connected: m.connected, ProcessServer: m.peer, ReceivedSeq: m.lastSeq, DurableSeq: m.durable,
		AppliedSeq: m.live.AppliedSeq, EpochSeq: m.live.EpochSeq, IntakeBytes: st.Bytes, BytesReceived: m.bytesIn, BytesApplied: m.bytesApply, ApplyError: m.applyErr}
	if m.live.EpochTime > 0 {
		ms.EpochTime = time.Unix(0, m.live.EpochTime)
		ms.LagSeconds = time.Since(ms.EpochTime).Seconds()
	}
	if m.live.AppliedSeq < m.lastSeq {
		ms.PendingBytes = st.Bytes + m.relay.Bytes()
	}
	for i, d := range m.live.Disks {
		ds := DiskStatus{Name: d.Name, Size: d.Size, Replica: m.replicaPath(d.Name), Consistent: d.Consistent}
		switch {
		case d.Consistent:
			ds.State = "consistent"
		case !d.Synced:
			ds.State = "initial-sync"
		default:
			ds.State = "resync"
		}
		_ = i
		ms.Disks = append(ms.Disks, ds)
	}
	return ms
}
