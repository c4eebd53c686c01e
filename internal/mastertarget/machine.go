package mastertarget

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"standby/internal/blockdev"
	"standby/internal/journal"
	"standby/internal/points"
	"standby/internal/relay"
	"standby/internal/seglog"
	"standby/internal/transport"
	"standby/internal/wire"
)

const stateFile = "state.json"

// diskState is the persisted state of one replica disk.
type diskState struct {
	Name       string `json:"name"`
	Size       int64  `json:"size"`
	Consistent bool   `json:"consistent"`
	// Synced says the initial copy finished once: before that the replica
	// has never been a usable disk.
	Synced bool `json:"synced"`
}

// checkpoint is what the master target has applied and fsynced.
type checkpoint struct {
	Machine    string      `json:"machine"`
	AppliedSeq uint64      `json:"applied_seq"`
	EpochSeq   uint64      `json:"epoch_seq"`
	EpochTime  int64       `json:"epoch_time_unix_nano"`
	Disks      []diskState `json:"disks"`
}

type machine struct {
	s       *Server
	name    string
	dir     string
	intake  *seglog.Log
	relay   *relay.Queue // copy batches applied without the intake log
	replica []*blockdev.Disk
	wg      sync.WaitGroup
	// stop ends the goroutines start began (apply, retention).
	stop context.CancelFunc
	// openedAt and retryDelay pace reopenAfterFailure.
	openedAt   time.Time
	retryDelay time.Duration
	// directBuf stages copies for uncached replica writes; apply's only.
	directBuf []byte
	// bufs recycles batch buffers: relayed frames' (from the session) and
	// intake entries' copies, given back once apply has written them.
	bufs *wire.BufferPool

	mu         sync.Mutex
	cond       *sync.Cond
	cp         checkpoint // as last persisted
	live       checkpoint // as applied in memory
	lastSeq    uint64     // newest seq in intake
	epochLimit uint64     // newest record received that apply may go up to (endsWait): it stops there
	durable    uint64     // everything <= durable survives a crash (acknowledged upstream)
	intakeLast uint64     // newest seq appended to the intake
	intakeSync uint64     // intake entries <= intakeSync are fsynced
	relayOpen  []seqRange // relayed copies not yet covered by a checkpoint, in order
	// applyWaiting: apply waits for an epoch marker; relayed copies then
	// go to the intake at once rather than wait for room.
	applyWaiting bool
	// relaySpill: a copy batch waited relayWait for room in vain; copies
	// go to the intake until the relay is empty again (relayCopies).
	relaySpill bool
	session    uint64
	connected  bool
	peer       string
	applyErr   string
	appliedAt  time.Time
	bytesIn    uint64
	bytesApply uint64
	started    bool
	closed     bool
	notify     chan struct{}

	layout         []wire.DiskInfo // disk names and sizes: fixed once opened, read without the lock
	journal        *journal.Journal
	replayTo       uint64
	points         *points.Catalogue
	lastPointSeq   uint64
	lastCrashPoint time.Time
	events         []Event
}

func openMachine(s *Server, name string, disks []wire.DiskInfo) (*machine, error) {
	if !wire.ValidName(name) {
		return nil, fmt.Errorf("invalid machine name %q", name)
	}
	dir := filepath.Join(s.cfg.DataDir, name)
	m := &machine{s: s, name: name, dir: dir, openedAt: time.Now(), notify: make(chan struct{}, 1), relay: relay.NewSharedQueue(max(s.cfg.RelayBytes, 0), s.relayBudget), bufs: s.bufs}
	m.cond = sync.NewCond(&m.mu)
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &m.cp); err != nil {
			return nil, fmt.Errorf("machine %s: corrupt %s: %w", name, stateFile, err)
		}
		// The disks a Hello describes are checked against these before
		// anything is opened or written.
		var have []wire.DiskInfo
		for i, d := range m.cp.Disks {
			have = append(have, wire.DiskInfo{Index: uint16(i), Name: d.Name, Size: d.Size})
		}
		if disks != nil {
			if err := (&machine{name: name, layout: have}).checkDisks(disks); err != nil {
				return nil, err
			}
		}
	case errors.Is(err, os.ErrNotExist) && disks != nil:
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("machine %s: creating data dir: %w", name, err)
		}
		m.cp = checkpoint{Machine: name}
		for i, d := range disks {
			if int(d.Index) != i || !wire.ValidName(d.Name) || d.Size <= 0 {
				return nil, fmt.Errorf("machine %s: bad disk description %+v", name, d)
			}
			m.cp.Disks = append(m.cp.Disks, diskState{Name: d.Name, Size: d.Size})
		}
	default:
		return nil, fmt.Errorf("machine %s: reading %s: %w", name, stateFile, err)
	}
	for _, d := range m.cp.Disks {
		p := m.replicaPath(d.Name)
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			if err := blockdev.Create(p, d.Size); err != nil {
				m.close()
				return nil, fmt.Errorf("machine %s: creating replica %s: %w", name, p, err)
			}
		}
		rd, err := blockdev.Open(p, false)
		if err != nil {
			m.close()
			return nil, fmt.Errorf("machine %s: opening replica: %w", name, err)
		}
		m.replica = append(m.replica, rd)
		if rd.Size() != d.Size {
			m.close()
			return nil, fmt.Errorf("machine %s: replica %s is %d bytes but disk %s is %d bytes: refusing to apply to a replica of the wrong size", name, p, rd.Size(), d.Name, d.Size)
		}
	}
	// The intake is read back once, right after it is written: past the
	// page cache, whose new pages cost more here than the rest of a small
	// write's intake and apply (docs/architecture.md, "Uncached logs").
	lg, err := seglog.Open(filepath.Join(dir, "intake"), seglog.Options{MaxBytes: s.cfg.IntakeBytes, Logger: s.log.With("machine", name), Direct: true})
	if err != nil {
		m.close()
		return nil, fmt.Errorf("machine %s: opening intake log: %w", name, err)
	}
	m.intake = lg
	cat, err := points.Open(filepath.Join(dir, "points.jsonl"))
	if err != nil {
		m.close()
		return nil, fmt.Errorf("machine %s: %w", name, err)
	}
	m.points = cat
	if !s.cfg.NoJournal {
		var jd []journal.Disk
		for i, d := range m.cp.Disks {
			_ = d
			jd = append(jd, journal.FileDisk(m.replica[i]))
		}
		j, err := journal.Open(filepath.Join(dir, "journal"), jd, journal.Options{MaxBytes: s.cfg.JournalBytes, Logger: s.log.With("machine", name)})
		if err != nil {
			m.close()
			return nil, fmt.Errorf("machine %s: opening undo journal: %w", name, err)
		}
		m.journal = j
		// Until the replay after a restart passes everything that was
		// applied before it, the replica is temporarily older than some
		// before-images assume: views wait for that (waitReplayed).
		m.replayTo = j.LastSeq()
		// Points that need before-images the journal no longer has
		// (dropped under space pressure before a crash) go now.
		m.dropUnrecoverable()
	}
	if pts := cat.List(); len(pts) > 0 {
		m.lastPointSeq = pts[len(pts)-1].Seq
		for i := len(pts) - 1; i >= 0; i-- {
			if pts[i].Kind == points.KindCrash {
				m.lastCrashPoint = pts[i].Time
				break
			}
		}
	}
	if err := m.writeCheckpoint(m.cp); err != nil {
		m.close()
		return nil, err
	}
	m.live = cloneCP(m.cp)
	for i, d := range m.cp.Disks {
		m.layout = append(m.layout, wire.DiskInfo{Index: uint16(i), Name: d.Name, Size: d.Size})
	}
	st := lg.Stats()
	m.lastSeq = max(st.LastSeq, m.cp.AppliedSeq)
	m.intakeLast = st.LastSeq
	m.intakeSync = st.DurableSeq
	m.durable = max(st.DurableSeq, m.cp.AppliedSeq)
	// Epoch markers in the intake that were not applied before a restart
	// must still be honoured: find the newest one.
	if st.Entries > 0 && st.LastSeq > m.cp.AppliedSeq {
		if err := m.scanEpochs(); err != nil {
			m.close()
			return nil, err
		}
	}
	return m, nil
}

func cloneCP(c checkpoint) checkpoint {
	c.Disks = append([]diskState(nil), c.Disks...)
	return c
}

func (m *machine) replicaPath(disk string) string { return filepath.Join(m.dir, disk+".img") }

// endsWait reports whether apply may go up to a record of this op once it
// has arrived, without seeing it first in its read-ahead: an epoch marker
// closes the epoch before it, and a sync-start ends the disk's consistent
// point, so the records before it will never be closed by a marker (a
// queue overflow drops the agent's queued markers with its writes). That
// must be known from arrival, not from apply's read-ahead, which is
// bounded (64 MiB): an unclosed epoch larger than that left apply waiting
// for a marker that could not come, since the relayed copies behind the
// sync-start hold the process server's cache until they are applied.
func endsWait(op wire.Op) bool { return op.ClosesEpoch() || op == wire.OpSyncStart }

func (m *machine) scanEpochs() error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := m.intake.Stats()
	r := m.intake.NewReader(m.cp.AppliedSeq + 1)
	defer r.Close()
	for {
		e, err := r.Next(ctx)
		if err != nil {
			return fmt.Errorf("machine %s: scanning intake: %w", m.name, err)
		}
		b, err := wire.DecodeBatch(e.Data)
		if err != nil {
			return fmt.Errorf("machine %s: intake entry %d..%d: %w", m.name, e.First, e.Last, err)
		}
		for _, rec := range b.Records {
			if endsWait(rec.Op) {
				m.epochLimit = rec.Seq
			}
		}
		if e.Last >= st.LastSeq {
			return nil
		}
	}
}

func (m *machine) checkDisks(disks []wire.DiskInfo) error {
	if len(disks) != len(m.layout) {
		return fmt.Errorf("machine %s has %d replica disks here, the source has %d: refusing (remove the replica to start over)", m.name, len(m.layout), len(disks))
	}
	for i, d := range disks {
		have := m.layout[i]
		if d.Name != have.Name || d.Size != have.Size {
			return fmt.Errorf("machine %s disk %d: source is %s of %d bytes, replica is %s of %d bytes: refusing to apply to a replica of the wrong size", m.name, i, d.Name, d.Size, have.Name, have.Size)
		}
	}
	return nil
}

func (m *machine) close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	// A session still on this machine sees itself stale and hangs up, so
	// the process server reconnects to whatever replaces it.
	m.session++
	m.cond.Broadcast()
	stop := m.stop
	m.mu.Unlock()
	if stop != nil {
		stop()
	}
	for _, r := range m.replica {
		r.Close()
	}
	if m.intake != nil {
		m.intake.Close()
	}
	if m.points != nil {
		m.points.Close()
	}
	if m.journal != nil {
		m.journal.Close()
	}
}

func (m *machine) start(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started {
		return
	}
	m.started = true
	parent := ctx
	ctx, m.stop = context.WithCancel(ctx)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.runApply(ctx)
		m.mu.Lock()
		failed := m.applyErr != "" && !m.closed
		m.mu.Unlock()
		if failed {
			go m.s.reopenAfterFailure(parent, m)
		}
	}()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				m.retain(now)
			}
		}
	}()
	context.AfterFunc(ctx, func() {
		m.mu.Lock()
		m.cond.Broadcast()
		m.mu.Unlock()
	})
}

func (m *machine) wake() {
	select {
	case m.notify <- struct{}{}:
	default:
	}
}

// runSession takes batches from a process server.
func (m *machine) runSession(ctx context.Context, c *transport.Conn, peer string) {
	m.mu.Lock()
	m.session++
	my := m.session
	m.connected = true
	m.peer = peer
	w := wire.Welcome{Cached: m.lastSeq, Durable: m.durable}
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		if m.session == my {
			m.connected = false
		}
		m.mu.Unlock()
	}()
	lg := m.s.log.With("machine", m.name)
	c.SetPool(m.bufs)
	if err := c.WriteJSON(wire.TypeWelcome, w); err != nil {
		lg.Warn("welcoming process server", "err", err)
		return
	}
	_ = c.SetDeadline(time.Time{})
	lg.Info("process server connected", "peer", peer, "cached", w.Cached, "durable", w.Durable)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		var sent wire.Ack
		for {
			select {
			case <-sctx.Done():
				return
			case <-m.notify:
			case <-t.C:
			}
			m.mu.Lock()
			a := wire.Ack{Cached: m.lastSeq, Durable: m.durable}
			stale := m.session != my
			m.mu.Unlock()
			if stale {
				c.Close()
				return
			}
			if a == sent {
				continue
			}
			if err := c.WriteFrame(wire.TypeAck, wire.AppendAck(nil, a), wire.CodecNone); err != nil {
				cancel()
				return
			}
			sent = a
		}
	}()
	go func() { <-sctx.Done(); c.Close() }()
	var buf []byte
	var appended, epoch uint64
	// The committer fsyncs the intake in the background while frames keep
	// coming, and only then lets durable advance.
	committer := m.intake.NewCommitter(sctx, func(seq uint64, synced bool, err error) {
		if err != nil {
			lg.Error("syncing intake log", "err", err)
			refuse(c, "intake", err.Error())
			cancel()
			return
		}
		m.mu.Lock()
		if synced {
			m.intakeSync = max(m.intakeSync, seq)
		}
		m.updateDurableLocked()
		m.mu.Unlock()
		m.wake()
	})
	defer committer.Wait()
	defer cancel()
	for {
		t, p, err := c.ReadFrame()
		if err != nil {
			if sctx.Err() == nil {
				lg.Warn("process server session ended", "err", err)
				if errors.Is(err, wire.ErrCorrupt) {
					refuse(c, "corrupt", err.Error())
				}
			}
			return
		}
		if t == wire.TypePing {
			continue
		}
		if t != wire.TypeBatch {
			refuse(c, "protocol", fmt.Sprintf("unexpected %s frame", t))
			return
		}
		b, err := wire.DecodeBatch(p)
		if err != nil {
			lg.Error("refusing corrupt batch", "err", err)
			refuse(c, "corrupt", err.Error())
			return
		}
		if err := m.validate(&b); err != nil {
			lg.Error("refusing batch", "err", err)
			refuse(c, "invalid", err.Error())
			return
		}
		m.mu.Lock()
		last, stale := max(m.lastSeq, appended), m.session != my
		m.mu.Unlock()
		if stale {
			return
		}
		if b.Last <= last {
			// Here already (perhaps from an earlier session whose
			// committer never synced it): make sure durable follows.
			committer.Commit(b.Last, true)
			m.wake()
			continue
		}
		data := p
		if b.First <= last {
			k := 0
			for k < len(b.Records) && b.Records[k].Seq <= last {
				k++
			}
			b.Records = b.Records[k:]
			b.First = b.Records[0].Seq
			buf = wire.AppendBatch(buf[:0], &b)
			data = buf
		}
		for i := len(b.Records) - 1; i >= 0; i-- {
			if endsWait(b.Records[i].Op) {
				epoch = b.Records[i].Seq
				break
			}
		}
		relayed, err := m.relayCopies(sctx, &b, data, c)
		if err != nil {
			return
		}
		if !relayed {
			if err := m.intake.Append(sctx, seglog.Entry{First: b.First, Last: b.Last, Data: data}, false); err != nil {
				if sctx.Err() == nil {
					lg.Error("writing intake log", "err", err)
					refuse(c, "intake", err.Error())
				}
				return
			}
		}
		appended = b.Last
		m.mu.Lock()
		if !relayed {
			m.intakeLast = b.Last
		}
		// Apply may go ahead before the fsync: what it applies becomes
		// durable through the checkpoint, which fsyncs the replica first.
		m.lastSeq = appended
		m.bytesIn += uint64(len(data))
		m.epochLimit = max(m.epochLimit, epoch)
		m.cond.Broadcast()
		m.mu.Unlock()
		committer.Commit(appended, !relayed && b.Captured())
	}
}

type seqRange struct{ first, last uint64 }

// relayWait bounds how long a copy batch waits for room in the relay
// before it goes to the intake log instead: apply normally frees room in
// milliseconds, and a relay that stays full must never stop the intake.
const relayWait = 2 * time.Second

// relayCopies queues a batch of copies for apply without writing it to the
// intake log. It reports false (log it instead) for captured records, with
// the relay off, when the relay stays full for relayWait, and after that
// (relaySpill) or while apply waits for a marker, until the relay empties.
func (m *machine) relayCopies(ctx context.Context, b *wire.Batch, data []byte, c *transport.Conn) (bool, error) {
	if m.s.cfg.RelayBytes <= 0 || b.Captured() {
		return false, nil
	}
	own := c.Keep(data) // data may be the connection's read buffer
	deadline := time.NewTimer(relayWait)
	defer deadline.Stop()
	for {
		ch := m.relay.Changed()
		m.mu.Lock()
		if m.relay.Len() == 0 {
			m.relaySpill = false
		}
		if (m.applyWaiting || m.relaySpill) && m.relay.Len() > 0 {
			m.mu.Unlock()
			return false, nil
		}
		if !m.s.relayBudget.Fits(int64(cap(own))) {
			// Other machines' copies hold the memory: the intake takes
			// this batch rather than the session waiting for them.
			m.mu.Unlock()
			return false, nil
		}
		it := relay.Item{First: b.First, Last: b.Last, LogBefore: m.intakeLast, Data: own}
		m.relayOpen = append(m.relayOpen, seqRange{b.First, b.Last})
		pushed := m.relay.TryPush(it)
		if !pushed {
			m.relayOpen = m.relayOpen[:len(m.relayOpen)-1]
		}
		m.mu.Unlock()
		if pushed {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-deadline.C:
			// Apply is behind the relay's oldest batch (working through
			// logged records before it): until the relay empties, later
			// copies go to the intake at once instead of each waiting
			// relayWait, which held the whole session (captured writes
			// too) to one batch per relayWait.
			m.mu.Lock()
			m.relaySpill = true
			m.mu.Unlock()
			return false, nil
		case <-ch:
		case <-time.After(50 * time.Millisecond): // recheck applyWaiting and relaySpill
		}
	}
}

// updateDurableLocked recomputes what may be acknowledged as durable:
// everything the last checkpoint covers, and beyond it the fsynced intake
// up to the first relayed copy not yet checkpointed. Caller holds m.mu.
func (m *machine) updateDurableLocked() {
	d := m.intakeSync
	if len(m.relayOpen) > 0 && m.relayOpen[0].first <= d {
		d = m.relayOpen[0].first - 1
	}
	m.durable = max(m.durable, m.cp.AppliedSeq, d)
}

// validate checks every record against the replica layout before anything
// is stored: a record outside its disk is refused whole, never clipped.
func (m *machine) validate(b *wire.Batch) error {
	return wire.ValidateBatch(b, m.layout)
}

// stoppedErr says why a machine takes no sessions: its apply stopped on an
// error and it is closed until reopenAfterFailure has opened it afresh.
func (m *machine) stoppedErr() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		return nil
	}
	return fmt.Errorf("machine %s is stopped until it is reopened from its files (apply stopped: %s)", m.name, m.applyErr)
}
