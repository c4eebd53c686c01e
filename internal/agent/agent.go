// Package agent is the protected machine's side: it sits in front of each
// disk (intercept mode, an NBD server) or scans it (scan mode), keeps every
// write in order in a bounded queue backed by an activity log and a dirty
// bitmap, and streams the changes to its process server.
package agent

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"standby/internal/blockdev"
	"standby/internal/capture"
	"standby/internal/fsutil"
	"standby/internal/localnet"
	"standby/internal/nbd"
	"standby/internal/statusapi"
	"standby/internal/throttle"
	"standby/internal/transport"
	"standby/internal/wire"
)

// DiskConfig names one protected disk.
type DiskConfig struct {
	Name         string        `yaml:"name" json:"name"`
	Path         string        `yaml:"path" json:"path"`
	Mode         string        `yaml:"mode" json:"mode"` // intercept (default) or scan
	ScanInterval time.Duration `yaml:"scan_interval" json:"scan_interval"`
}

// Config is the agent's configuration.
type Config struct {
	Machine       string       `yaml:"machine"`
	StateDir      string       `yaml:"state_dir"`
	ProcessServer string       `yaml:"process_server"`
	NBDListen     []string     `yaml:"nbd_listen"` // unix:PATH or tcp:HOST:PORT
	StatusListen  string       `yaml:"status_listen"`
	Disks         []DiskConfig `yaml:"disks"`
	QueueBytes    int64        `yaml:"queue_bytes"`
	// QueueHold is how long a write may wait for room in a full queue
	// (and the most waited in any second) before the agent falls back to
	// its dirty bitmap: default 200ms, negative for none.
	QueueHold time.Duration `yaml:"queue_hold"`
	// SendLinger is how long a small batch waits for more records before
	// it is sent (default 2ms, negative for none): fewer, larger batches
	// mean fewer fsyncs downstream.
	SendLinger    time.Duration `yaml:"send_linger"`
	EpochInterval time.Duration `yaml:"epoch_interval"`
	BatchBytes    int           `yaml:"batch_bytes"`
	// Hooks freeze applications for app-consistent bookmarks;
	// FreezeTimeout bounds how long writes are held (default 500ms);
	// BookmarkInterval schedules bookmarks (0: on demand only).
	Hooks            []HookConfig  `yaml:"hooks"`
	FreezeTimeout    time.Duration `yaml:"freeze_timeout"`
	BookmarkInterval time.Duration `yaml:"bookmark_interval"`
	ResyncChunk      int64         `yaml:"resync_chunk"`
	// ResyncReaders is how many copy reads run at once per disk (default
	// 16): a catch-up reads scattered blocks, and a disk answers many
	// small reads at once far faster than one after another.
	ResyncReaders int `yaml:"resync_readers"`
	// CopyRate caps, in bytes per second, what the initial copy, resyncs
	// and scan passes read from this machine's disks, all disks together
	// (0: no cap), so that they leave the workload its disk. Captured
	// writes are never held by it. Copies skip holes, which do not count;
	// a scan pass reads (and is paced for) the whole disk.
	CopyRate int64 `yaml:"copy_rate"`

	TLS    *tls.Config  `yaml:"-"`
	Logger *slog.Logger `yaml:"-"`
}

func (c *Config) setDefaults() error {
	if c.Machine == "" {
		return errors.New("agent: machine name is required")
	}
	if c.StateDir == "" {
		return errors.New("agent: state_dir is required")
	}
	if c.ProcessServer == "" {
		return errors.New("agent: process_server address is required")
	}
	if len(c.Disks) == 0 {
		return errors.New("agent: no disks configured")
	}
	if c.QueueBytes == 0 {
		c.QueueBytes = 128 << 20
	}
	if c.QueueHold == 0 {
		c.QueueHold = 200 * time.Millisecond
	}
	if c.SendLinger == 0 {
		c.SendLinger = 2 * time.Millisecond
	}
	if c.EpochInterval == 0 {
		c.EpochInterval = time.Second
	}
	if c.BatchBytes == 0 {
		c.BatchBytes = 8 << 20
	}
	if c.FreezeTimeout == 0 {
		c.FreezeTimeout = 500 * time.Millisecond
	}
	if c.ResyncChunk == 0 {
		c.ResyncChunk = 4 << 20
	}
	if c.ResyncChunk < 4096 || c.ResyncChunk > wire.MaxRecordLength {
		return fmt.Errorf("agent: resync_chunk %d outside 4 KiB..%d", c.ResyncChunk, wire.MaxRecordLength)
	}
	if c.ResyncReaders == 0 {
		c.ResyncReaders = 16
	}
	if c.CopyRate < 0 {
		return fmt.Errorf("agent: copy_rate %d: want 0 (no cap) or bytes per second", c.CopyRate)
	}
	if c.ResyncReaders < 1 {
		return fmt.Errorf("agent: resync_readers %d: want at least 1", c.ResyncReaders)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	seen := map[string]bool{}
	for i := range c.Disks {
		d := &c.Disks[i]
		if d.Name == "" {
			d.Name = fmt.Sprintf("disk%d", i)
		}
		if seen[d.Name] {
			return fmt.Errorf("agent: disk name %q used twice", d.Name)
		}
		seen[d.Name] = true
		if d.Mode == "" {
			d.Mode = ModeIntercept
		}
		if d.Mode != ModeIntercept && d.Mode != ModeScan {
			return fmt.Errorf("agent: disk %s: unknown mode %q (intercept or scan)", d.Name, d.Mode)
		}
		if d.ScanInterval == 0 {
			d.ScanInterval = 30 * time.Second
		}
	}
	return nil
}

// Agent protects one machine.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	q     *queue
	disks []*disk
	// copyRate paces the reads of copies and scans (Config.CopyRate);
	// nil when there is no cap.
	copyRate *throttle.Limiter

	gate writeGate
	bmu  sync.Mutex
	bar  *barrier

	mu              sync.Mutex
	lastBookmarkErr string
	connected       bool
	connErr         string
	nbdAddrs        []string
}

// New opens the disks and the agent's state; Run starts the work.
func New(cfg Config) (*Agent, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: creating state dir: %w", err)
	}
	boot, err := nextBoot(filepath.Join(cfg.StateDir, "boot"))
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Logger.With("role", "agent", "machine", cfg.Machine), q: newQueue(boot, cfg.QueueBytes, cfg.QueueHold, cfg.SendLinger),
		copyRate: throttle.New(cfg.CopyRate, int(cfg.ResyncChunk))}
	for i, dc := range cfg.Disks {
		d, err := a.openDisk(uint16(i), dc)
		if err != nil {
			a.closeDisks()
			return nil, err
		}
		a.disks = append(a.disks, d)
	}
	a.q.disks = a.disks
	return a, nil
}

func (a *Agent) openDisk(idx uint16, dc DiskConfig) (*disk, error) {
	dev, err := blockdev.Open(dc.Path, dc.Mode == ModeScan)
	if err != nil {
		return nil, fmt.Errorf("agent: opening disk %s: %w", dc.Name, err)
	}
	d := &disk{a: a, index: idx, cfg: dc, dev: dev, wakeCh: make(chan struct{}, 1)}
	d.lastErr.Store("")
	switch dc.Mode {
	case ModeIntercept:
		t, err := capture.OpenTracker(filepath.Join(a.cfg.StateDir, dc.Name+".track"), dev.Size(), capture.TrackerOptions{Logger: a.log})
		if err != nil {
			dev.Close()
			return nil, fmt.Errorf("agent: opening change tracker of %s: %w", dc.Name, err)
		}
		d.tracker = t
		ri := t.Recovered()
		if ri.Fresh {
			t.MarkAllDirty()
			if err := t.Persist(); err != nil {
				t.Close()
				dev.Close()
				return nil, fmt.Errorf("agent: recording the initial copy of %s: %w", dc.Name, err)
			}
			d.initial = true
		}
		if t.DirtyBytes() > 0 {
			a.log.Info("disk needs sync", "disk", dc.Name, "fresh", ri.Fresh, "unclean", ri.Unclean, "dirty_bytes", t.DirtyBytes())
		}
		// Every start opens with a resync, empty when nothing is dirty
		// (sync-start, then sync-done at once): a sync-done queued but
		// unsent when the last run ended is lost with its queue, and the
		// master target would keep the disk inconsistent for good.
		a.q.mu.Lock()
		d.beginResyncLocked(a.q)
		a.q.mu.Unlock()
	case ModeScan:
		s, err := capture.OpenScanner(filepath.Join(a.cfg.StateDir, dc.Name+".scan"), dev.Size(), capture.ScanOptions{Logger: a.log})
		if err != nil {
			dev.Close()
			return nil, fmt.Errorf("agent: opening scanner of %s: %w", dc.Name, err)
		}
		d.scanner = s
	}
	return d, nil
}

// nextBoot increments the persisted boot counter that forms the high bits
// of sequence numbers, so numbers keep rising after a crash.
func nextBoot(path string) (uint64, error) {
	var boot uint64
	b, err := os.ReadFile(path)
	switch {
	case err == nil && len(b) == 8:
		boot = binary.LittleEndian.Uint64(b)
	case err == nil:
		return 0, fmt.Errorf("agent: boot counter %s is %d bytes, want 8: refusing to guess sequence numbers", path, len(b))
	case !errors.Is(err, os.ErrNotExist):
		return 0, fmt.Errorf("agent: reading boot counter: %w", err)
	}
	boot++
	if boot >= 1<<(64-seqBootShift) {
		return 0, errors.New("agent: boot counter exhausted")
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, fmt.Errorf("agent: writing boot counter: %w", err)
	}
	_, err = f.Write(binary.LittleEndian.AppendUint64(nil, boot))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = fsutil.SyncDir(filepath.Dir(path))
	}
	if err != nil {
		return 0, fmt.Errorf("agent: writing boot counter: %w", err)
	}
	return boot, nil
}

func (a *Agent) closeDisks() {
	for _, d := range a.disks {
		if d.tracker != nil {
			if err := d.tracker.Close(); err != nil {
				a.log.Error("closing tracker", "disk", d.cfg.Name, "err", err)
			}
		}
		d.dev.Close()
	}
}

// Run serves the disks and replicates until ctx is done.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	goRun := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		}()
	}
	// Listeners first, so a configuration error stops us before anything runs.
	var exports []*nbd.Export
	for _, d := range a.disks {
		if d.cfg.Mode == ModeIntercept {
			exports = append(exports, &nbd.Export{Name: d.cfg.Name, Description: a.cfg.Machine + "/" + d.cfg.Name, Backend: d})
		}
	}
	// Write payloads are read into the queue's pool and kept by it.
	srv := &nbd.Server{Logger: a.log, Exports: func() []*nbd.Export { return exports }, Buffers: &a.q.bufs}
	for _, spec := range a.cfg.NBDListen {
		ln, err := listenSpec(spec)
		if err != nil {
			return fmt.Errorf("agent: NBD listener: %w", err)
		}
		a.mu.Lock()
		a.nbdAddrs = append(a.nbdAddrs, ln.Addr().Network()+":"+ln.Addr().String())
		a.mu.Unlock()
		a.log.Info("serving disks over NBD", "listen", ln.Addr().String(), "exports", len(exports))
		goRun("nbd server", func(ctx context.Context) error { return srv.Serve(ctx, ln) })
	}
	if a.cfg.StatusListen != "" {
		ln, err := statusapi.Listen(a.cfg.StatusListen)
		if err != nil {
			return fmt.Errorf("agent: status listener: %w", err)
		}
		goRun("status", func(ctx context.Context) error {
			mux := statusapi.Handler(func() any { return a.Status() }, a.metrics())
			a.control(mux)
			return statusapi.Serve(ctx, ln, mux)
		})
	}
	go func() { <-ctx.Done(); a.q.close() }()
	goRun("sender", a.runSender)
	goRun("epochs", a.runEpochs)
	goRun("housekeeping", a.runHousekeeping)
	goRun("bookmarks", a.runBookmarks)
	for _, d := range a.disks {
		switch d.cfg.Mode {
		case ModeIntercept:
			goRun("resync "+d.cfg.Name, d.runResync)
		case ModeScan:
			goRun("scan "+d.cfg.Name, d.runScan)
		}
	}
	<-ctx.Done()
	wg.Wait()
	a.closeDisks()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// listenSpec opens an NBD listener. The export has no TLS or login and
// takes writes to the protected disk, so TCP is loopback only; a unix
// socket may be used by the owner and group (a hypervisor running as its
// own user in the owner's group).
func listenSpec(spec string) (net.Listener, error) {
	network, _, ok := strings.Cut(spec, ":")
	if !ok || (network != "unix" && network != "tcp") {
		return nil, fmt.Errorf("listen address %q: want unix:PATH or tcp:HOST:PORT", spec)
	}
	return localnet.Listen("NBD export", spec, 0o660)
}

// runEpochs closes an epoch at a steady pace even when the workload never
// flushes: any prefix of the write sequence is crash-consistent, so a timer
// marker bounds how far the replica's consistent state can lag.
func (a *Agent) runEpochs(ctx context.Context) error {
	t := time.NewTicker(a.cfg.EpochInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			a.q.epochIfDirty(wire.EpochTimer)
		}
	}
}

// runHousekeeping persists the trackers (so a crash resyncs little) and
// clears idle activity-log extents.
func (a *Agent) runHousekeeping(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			for _, d := range a.disks {
				if d.tracker == nil {
					continue
				}
				if err := d.tracker.Persist(); err != nil {
					a.log.Error("persisting change tracker", "disk", d.cfg.Name, "err", err)
				}
				if err := d.tracker.Clean(now); err != nil {
					a.log.Error("cleaning activity log", "disk", d.cfg.Name, "err", err)
				}
			}
		}
	}
}

// runSender keeps a session with the process server and streams the queue.
func (a *Agent) runSender(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := a.session(ctx)
		if time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond // it was up for a while: retry quickly
		}
		a.setConnected(false, err)
		a.q.disconnected()
		if ctx.Err() != nil {
			return nil
		}
		var em *wire.ErrorMsg
		if errors.As(err, &em) {
			a.log.Error("process server refused the session", "code", em.Code, "err", em.Message)
		} else {
			a.log.Warn("session with process server ended", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		// Retries stay frequent: a refused connection costs next to
		// nothing, while every second spent waiting to retry after the
		// process server is back is a second more of lag.
		backoff = min(backoff*2, 500*time.Millisecond)
	}
	return nil
}

func (a *Agent) setConnected(v bool, err error) {
	a.mu.Lock()
	a.connected = v
	if err != nil {
		a.connErr = err.Error()
	} else if v {
		a.connErr = ""
	}
	a.mu.Unlock()
	for _, d := range a.disks {
		d.kick()
	}
}

func (a *Agent) isConnected() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.connected
}

func (a *Agent) session(ctx context.Context) error {
	c, err := transport.Dial(ctx, a.cfg.ProcessServer, a.cfg.TLS)
	if err != nil {
		return err
	}
	defer c.Close()
	hello := wire.Hello{Role: "agent", Machine: a.cfg.Machine}
	for _, d := range a.disks {
		hello.Disks = append(hello.Disks, wire.DiskInfo{Index: d.index, Name: d.cfg.Name, Size: d.dev.Size()})
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.WriteJSON(wire.TypeHello, hello); err != nil {
		return err
	}
	var w wire.Welcome
	if err := c.ReadJSON(wire.TypeWelcome, &w); err != nil {
		return fmt.Errorf("handshake with process server: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	if last := a.q.stats().LastSeq; w.Cached > last || w.Durable > last {
		// Sequence numbers only grow (boot counter in the high bits), so
		// this agent never numbered what the process server claims to
		// hold: its state directory was lost or restored from a copy.
		// Taking the claim would count new writes as delivered.
		return fmt.Errorf("process server claims seq %d cached and %d durable, beyond this agent's newest seq %d: the agent's state (%s) is older than the process server's and master target's for machine %q; refusing to replicate into that history (remove the machine's cache at the process server and replica state at the master target to start over)",
			w.Cached, w.Durable, last, a.cfg.StateDir, a.cfg.Machine)
	}
	a.q.ack(wire.Ack(w))
	a.q.resetSend()
	a.setConnected(true, nil)
	a.log.Info("connected to process server", "addr", a.cfg.ProcessServer, "cached", w.Cached, "durable", w.Durable)

	sctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 2)
	// The sender must be gone before the next session acknowledges
	// records from its Welcome: their pooled buffers go back then, and
	// must not be lent out while this sender still copies from them.
	// Cancelling wakes it in nextBatch, closing in WriteFrame.
	var sender sync.WaitGroup
	defer func() {
		cancel()
		c.Close()
		sender.Wait()
	}()
	go func() {
		for {
			t, p, err := c.ReadFrame()
			if err != nil {
				errc <- fmt.Errorf("reading from process server: %w", err)
				return
			}
			switch t {
			case wire.TypeAck:
				ack, err := wire.DecodeAck(p)
				if err != nil {
					errc <- err
					return
				}
				a.q.ack(ack)
			case wire.TypeError:
				var em wire.ErrorMsg
				_ = jsonUnmarshal(p, &em)
				errc <- &em
				return
			case wire.TypePing:
			default:
				errc <- fmt.Errorf("%w: unexpected %s frame from process server", wire.ErrCorrupt, t)
				return
			}
		}
	}()
	sender.Go(func() {
		stop := context.AfterFunc(sctx, a.q.wake)
		defer stop()
		var buf []byte
		var parts [][]byte
		for {
			b, err := a.q.nextBatch(sctx, a.cfg.BatchBytes)
			if errors.Is(err, errRetry) {
				continue
			}
			if err != nil {
				errc <- err
				return
			}
			// Large records (copies, big writes) go from their buffers
			// to the connection without being joined into one first;
			// so the records' buffers stay lent until the frame is sent.
			buf, parts = wire.BatchParts(buf, parts, &b, 64<<10)
			err = c.WriteFrameParts(wire.TypeBatch, parts)
			clear(parts)
			a.q.encoded()
			if err != nil {
				errc <- err
				return
			}
		}
	})
	select {
	case err := <-errc:
		return wire.PreferRefusal(err, errc, 200*time.Millisecond)
	case <-ctx.Done():
		return nil
	}
}

// ParseDiskFlag parses NAME=PATH[,mode=scan][,interval=DURATION].
func ParseDiskFlag(s string) (DiskConfig, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" || rest == "" {
		return DiskConfig{}, fmt.Errorf("disk %q: want NAME=PATH[,mode=scan][,interval=30s]", s)
	}
	parts := strings.Split(rest, ",")
	dc := DiskConfig{Name: name, Path: parts[0]}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch k {
		case "mode":
			dc.Mode = v
		case "interval":
			d, err := time.ParseDuration(v)
			if err != nil {
				return DiskConfig{}, fmt.Errorf("disk %q: interval: %w", s, err)
			}
			dc.ScanInterval = d
		default:
			return DiskConfig{}, fmt.Errorf("disk %q: unknown option %q", s, k)
		}
	}
	return dc, nil
}
