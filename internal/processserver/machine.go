package processserver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"standby/internal/relay"
	"standby/internal/seglog"
	"standby/internal/transport"
	"standby/internal/wire"
)

// machine is one protected machine's cache and forwarder.
type machine struct {
	s     *Server
	name  string
	log   *seglog.Log
	relay *relay.Queue     // copies on their way to the master target, not cached
	bufs  *wire.BufferPool // relayed frames' buffers (the server's, shared), back from the forwarder once sent
	wg    sync.WaitGroup

	mu          sync.Mutex
	hello       wire.Hello
	lastSeq     uint64 // newest seq cached or relayed (dedupes resent records)
	logLast     uint64 // newest seq appended to the cache
	relaySent   uint64 // newest relayed seq sent in the current master-target session
	mtCached    uint64
	mtDurable   uint64
	agentConns  int
	session     uint64 // current agent session; older ones stop
	mtConnected bool
	mtErr       string
	codec       wire.Codec
	bytesIn     uint64
	rawOut      uint64
	wireOut     uint64
	started     bool

	notify chan struct{} // wakes the agent session to send an ack
}

func (m *machine) updateHello(h wire.Hello) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.hello.Disks) > 0 && len(h.Disks) == len(m.hello.Disks) {
		same := true
		for i := range h.Disks {
			if h.Disks[i] != m.hello.Disks[i] {
				same = false
			}
		}
		if same {
			return nil
		}
	}
	if st := m.log.Stats(); st.Entries > 0 && len(m.hello.Disks) > 0 {
		return fmt.Errorf("machine %s changed its disks (%v → %v) while %d batches are still cached for the old layout", m.name, m.hello.Disks, h.Disks, st.Entries)
	}
	m.hello = h
	return writeFileAtomic(m.s.cfg.CacheDir+"/"+m.name+"/hello.json", h)
}

func (m *machine) wake() {
	select {
	case m.notify <- struct{}{}:
	default:
	}
}

// runAgentSession takes batches from the agent: each is decoded (so a
// corrupt one is refused before it reaches the cache), stripped of records
// already cached, appended (fsynced when it holds captured writes) and only
// then acknowledged.
func (m *machine) runAgentSession(ctx context.Context, c *transport.Conn) {
	m.mu.Lock()
	m.session++
	my := m.session
	m.agentConns++
	w := wire.Welcome{Cached: m.lastSeq, Durable: m.mtDurable}
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.agentConns--
		m.mu.Unlock()
	}()
	lg := m.s.log.With("machine", m.name)
	c.SetPool(m.bufs)
	if err := c.WriteJSON(wire.TypeWelcome, w); err != nil {
		lg.Warn("welcoming agent", "err", err)
		return
	}
	_ = c.SetDeadline(time.Time{})
	lg.Info("agent connected", "remote", c.TLS.RemoteAddr().String(), "cached", w.Cached)

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Acks for master-target progress go out even when the agent is idle.
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-m.notify:
			case <-t.C:
			}
			m.mu.Lock()
			a := wire.Ack{Cached: m.lastSeq, Durable: m.mtDurable}
			stale := m.session != my
			m.mu.Unlock()
			if stale {
				c.Close()
				return
			}
			if err := c.WriteFrame(wire.TypeAck, wire.AppendAck(nil, a), wire.CodecNone); err != nil {
				cancel()
				return
			}
		}
	}()
	go func() { <-sctx.Done(); c.Close() }()
	var buf []byte
	var appended uint64 // appended in this session, perhaps not yet fsynced
	// The committer fsyncs in the background while frames keep coming, and
	// only then acknowledges them as cached.
	committer := m.log.NewCommitter(sctx, func(seq uint64, _ bool, err error) {
		if err != nil {
			lg.Error("syncing cache", "err", err)
			refuse(c, "cache", err.Error())
			cancel()
			return
		}
		m.mu.Lock()
		m.lastSeq = max(m.lastSeq, seq)
		m.mu.Unlock()
		m.wake()
	})
	defer committer.Wait()
	defer cancel()
	for {
		t, p, err := c.ReadFrame()
		if err != nil {
			if sctx.Err() == nil {
				lg.Warn("agent session ended", "err", err)
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
			lg.Error("refusing corrupt batch from agent", "err", err)
			refuse(c, "corrupt", err.Error())
			return
		}
		m.mu.Lock()
		// logLast too: an earlier session may have appended entries its
		// committer never got to acknowledge.
		last := max(m.lastSeq, appended, m.logLast)
		stale := m.session != my
		disks := m.hello.Disks
		m.mu.Unlock()
		if err := wire.ValidateBatch(&b, disks); err != nil {
			lg.Error("refusing batch from agent", "err", err)
			refuse(c, "invalid", err.Error())
			return
		}
		if stale {
			return
		}
		if b.Last <= last {
			// All of it is here already; make sure it is acknowledged,
			// which it may not be if it came in an earlier session.
			committer.Commit(b.Last, true)
			continue
		}
		data := p
		// The checksum the batch arrived with goes on with it while the
		// batch is forwarded unchanged (WriteFrameSum).
		sum, sumOK := c.LastSum()
		if b.First <= last {
			sumOK = false
			k := 0
			for k < len(b.Records) && b.Records[k].Seq <= last {
				k++
			}
			b.Records = b.Records[k:]
			b.First = b.Records[0].Seq
			buf = wire.AppendBatch(buf[:0], &b)
			data = buf
		}
		relayed, err := m.relayCopies(sctx, &b, data, sum, sumOK, c)
		if err != nil {
			return
		}
		if !relayed {
			if err := m.log.Append(sctx, seglog.Entry{First: b.First, Last: b.Last, Data: data}, false); err != nil {
				if sctx.Err() == nil {
					lg.Error("caching batch", "err", err)
					refuse(c, "cache", err.Error())
				}
				return
			}
		}
		appended = b.Last
		m.mu.Lock()
		if !relayed {
			m.logLast = b.Last
		}
		m.bytesIn += uint64(len(data))
		m.mu.Unlock()
		// Copies need no fsync here; anything cached does, before the
		// agent may drop it.
		committer.Commit(appended, !relayed && b.Captured())
	}
}

// relayCopies hands a batch of copies to the forwarder without caching it,
// waiting for room while the master target is connected. It reports false
// (cache it instead) for captured records, with the relay off, or while the
// master target is away: then the cache holds copies as before, bounded by
// its own limit.
func (m *machine) relayCopies(ctx context.Context, b *wire.Batch, data []byte, sum uint32, sumOK bool, c *transport.Conn) (bool, error) {
	if m.s.cfg.RelayBytes <= 0 || b.Captured() {
		return false, nil
	}
	var own []byte
	for {
		ch := m.relay.Changed()
		m.mu.Lock()
		up := m.mtConnected
		// Every cache entry appended so far precedes the batch.
		it := relay.Item{First: b.First, Last: b.Last, LogBefore: m.logLast, Sum: sum, HasSum: sumOK}
		m.mu.Unlock()
		if !up {
			return false, nil
		}
		if !m.s.relayBudget.Fits(int64(cap(data))) {
			// Other machines' copies hold the memory: the cache takes
			// this batch rather than the session waiting for them.
			return false, nil
		}
		if own == nil {
			own = c.Keep(data) // data may be the connection's read buffer
		}
		it.Data = own
		if m.relay.TryPush(it) {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-ch:
		case <-time.After(100 * time.Millisecond): // recheck the master target
		}
	}
}

func (m *machine) startForwarder(ctx context.Context) {
	m.mu.Lock()
	if m.started {
		m.mu.Unlock()
		return
	}
	m.started = true
	m.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.runForwarder(ctx)
	}()
}

// runForwarder keeps a session with the master target and sends the cache
// from where the master target's intake ends.
func (m *machine) runForwarder(ctx context.Context) {
	lg := m.s.log.With("machine", m.name)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := m.forward(ctx)
		m.mu.Lock()
		m.mtConnected = false
		m.mu.Unlock()
		m.forgetRelayed()
		m.mu.Lock()
		if err != nil {
			m.mtErr = err.Error()
		}
		m.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		var em *wire.ErrorMsg
		if errors.As(err, &em) {
			lg.Error("master target refused the session", "code", em.Code, "err", em.Message)
		} else {
			lg.Warn("session with master target ended", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

func (m *machine) forward(ctx context.Context) error {
	c, err := transport.Dial(ctx, m.s.cfg.MasterTarget, m.s.cfg.ClientTLS)
	if err != nil {
		return err
	}
	defer c.Close()
	m.mu.Lock()
	h := m.hello
	m.mu.Unlock()
	h.Role = "process-server"
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.WriteJSON(wire.TypeHello, h); err != nil {
		return err
	}
	var w wire.Welcome
	if err := c.ReadJSON(wire.TypeWelcome, &w); err != nil {
		return fmt.Errorf("handshake with master target: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	m.ackFromMT(wire.Ack(w))
	m.mu.Lock()
	m.mtCached = w.Cached // lower than before if a restart lost batches it held in memory
	m.mtConnected = true
	m.mtErr = ""
	m.mu.Unlock()
	m.s.log.Info("forwarding to master target", "machine", m.name, "addr", m.s.cfg.MasterTarget, "from_seq", w.Cached+1)

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() {
		for {
			t, p, err := c.ReadFrame()
			if err != nil {
				errc <- fmt.Errorf("reading from master target: %w", err)
				return
			}
			switch t {
			case wire.TypeAck:
				a, err := wire.DecodeAck(p)
				if err != nil {
					errc <- err
					return
				}
				m.ackFromMT(a)
			case wire.TypeError:
				var em wire.ErrorMsg
				_ = jsonUnmarshal(p, &em)
				errc <- &em
				return
			case wire.TypePing:
			default:
				errc <- fmt.Errorf("%w: unexpected %s frame from master target", wire.ErrCorrupt, t)
				return
			}
		}
	}()
	go func() { <-sctx.Done(); c.Close() }()
	var writer sync.WaitGroup
	writer.Add(1)
	go func() {
		defer writer.Done()
		codec := wire.CodecS2
		errc <- relay.Merge(sctx, m.log, m.relay, w.Cached+1, func(e relay.Entry) error {
			waited := m.s.waitBandwidth(sctx, len(e.Data))
			if err := sctx.Err(); err != nil {
				return err
			}
			codec = m.s.chooseCodec(codec, waited)
			var err error
			if e.HasSum && codec == wire.CodecNone {
				err = c.WriteFrameSum(wire.TypeBatch, e.Data, e.Sum)
			} else {
				err = c.WriteFrame(wire.TypeBatch, e.Data, codec)
			}
			if err != nil {
				return err
			}
			raw, onWire := c.Counters()
			m.mu.Lock()
			m.codec = codec
			m.rawOut, m.wireOut = raw, onWire
			// The master target keeps copies in memory until applied,
			// whichever way they came here: copies forwarded from the
			// cache (the master target was away when they arrived) are
			// as lost as relayed ones if its session ends before they are
			// durable, and a master target restarted on its intake
			// reports durable past them.
			if op, ok := wire.FirstOp(e.Data); !e.FromLog || (ok && !op.Captured()) {
				m.relaySent = max(m.relaySent, e.Last)
			}
			m.mu.Unlock()
			if !e.FromLog {
				m.bufs.Put(e.Data) // sent: nothing refers to it any more
			}
			return nil
		})
	}()
	err = nil
	select {
	case err = <-errc:
		err = wire.PreferRefusal(err, errc, 200*time.Millisecond)
	case <-ctx.Done():
	}
	cancel()
	c.Close()
	writer.Wait() // the relay is settled before the caller looks at it
	return err
}

// forgetRelayed runs when a master-target session ends. Copies it was sent
// but has not confirmed durable may be gone with it, and copies still
// queued would follow a gap: the agent's session is ended so that it
// forgets every unconfirmed copy and reads those ranges again (copies are
// never reported durable without being so).
func (m *machine) forgetRelayed() {
	dropped := m.relay.Reset()
	m.mu.Lock()
	defer m.mu.Unlock()
	if dropped > 0 || m.relaySent > m.mtDurable {
		m.s.log.Warn("master-target session ended with relayed copies unconfirmed: the agent will read them again", "machine", m.name, "queued", dropped, "sent_seq", m.relaySent, "durable_seq", m.mtDurable)
		m.session++
	}
	m.relaySent = 0
}

// ackFromMT records master-target progress and drops what it has durably.
func (m *machine) ackFromMT(a wire.Ack) {
	m.mu.Lock()
	if a.Cached > m.mtCached {
		m.mtCached = a.Cached
	}
	adv := a.Durable > m.mtDurable
	if adv {
		m.mtDurable = a.Durable
	}
	d := m.mtDurable
	m.mu.Unlock()
	if adv {
		if err := m.log.TrimThrough(d); err != nil {
			m.s.log.Error("trimming cache", "machine", m.name, "err", err)
		}
		m.wake()
	}
}

func (m *machine) status() MachineStatus {
	st := m.log.Stats()
	m.mu.Lock()
	defer m.mu.Unlock()
	ms := MachineStatus{Machine: m.name, AgentConnected: m.agentConns > 0, MTConnected: m.mtConnected, MTError: m.mtErr,
		CacheBytes: st.Bytes, RelayBytes: m.relay.Bytes(), CacheLimit: m.s.cfg.CacheBytes, LastSeq: m.lastSeq, ForwardedSeq: m.mtCached, DurableSeq: m.mtDurable,
		Codec: m.codec.String(), BytesIn: m.bytesIn, BytesOut: m.wireOut}
	if m.s.cfg.CacheBytes > 0 {
		ms.CacheFill = float64(st.Bytes) / float64(m.s.cfg.CacheBytes)
	}
	if m.wireOut > 0 {
		ms.CompressionRatio = float64(m.rawOut) / float64(m.wireOut)
	}
	return ms
}
