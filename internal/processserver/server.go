// Package processserver is the primary site's relay: it takes agents'
// change streams, makes each batch durable in a bounded per-machine cache
// before the agent may drop it, and forwards the cache to the master target
// compressed and throttled.
package processserver

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"standby/internal/localnet"
	"standby/internal/pki"
	"standby/internal/relay"
	"standby/internal/seglog"
	"standby/internal/statusapi"
	"standby/internal/throttle"
	"standby/internal/transport"
	"standby/internal/wire"
)

// Config is the process server's configuration.
type Config struct {
	Name         string `yaml:"name"`
	Listen       string `yaml:"listen"`
	CacheDir     string `yaml:"cache_dir"`
	MasterTarget string `yaml:"master_target"`
	// CacheBytes bounds each machine's cache; when full, agents are slowed
	// (backpressure) and eventually fall back to their dirty bitmaps.
	CacheBytes int64 `yaml:"cache_bytes"`
	// RelayBytes is the memory per machine for copy batches (initial copy,
	// resync, scan) forwarded without passing through the cache: they can
	// be read again from the source, so they need not be durable here.
	// When it is full or the master target is away, copies go through the
	// cache like captured writes. 0 means 32 MiB; negative turns it off.
	RelayBytes int64 `yaml:"relay_bytes"`
	// RelayTotalBytes bounds the copies held in memory for all machines
	// together, so the process server's memory does not grow with the
	// number of machines copying at once: a batch that does not fit goes
	// through the cache. 0 means 64 MiB.
	RelayTotalBytes int64 `yaml:"relay_total_bytes"`
	// Compression: none, s2, zstd or adaptive (zstd while the link is the
	// bottleneck, s2 while the CPU is).
	Compression string `yaml:"compression"`
	// BandwidthLimit caps bytes per second on the wire to the master target.
	BandwidthLimit int64 `yaml:"bandwidth_limit"`
	// BandwidthSchedule overrides it by local time of day and week:
	// "DAYS HH:MM-HH:MM BYTES_PER_SEC" entries (throttle.ParseWindow), the
	// first that matches wins; BandwidthLimit applies outside them.
	BandwidthSchedule []string `yaml:"bandwidth_schedule"`
	StatusListen      string   `yaml:"status_listen"`

	ServerTLS *tls.Config  `yaml:"-"` // for agents
	ClientTLS *tls.Config  `yaml:"-"` // to the master target
	Logger    *slog.Logger `yaml:"-"`
}

// Server is a running process server.
type Server struct {
	cfg     Config
	log     *slog.Logger
	limiter *throttle.Limiter // nil: no bandwidth limit and no schedule
	// schedule is set when BandwidthSchedule is; window is the entry in
	// force ("" for bandwidth_limit), guarded by mu.
	schedule *throttle.Schedule
	window   string
	// loopbackMT: the master target is on this machine (see chooseCodec).
	loopbackMT bool
	// relayBudget and bufs are shared by every machine: the memory for
	// relayed copies and spare frame buffers stays the same however many
	// machines the process server serves.
	relayBudget *relay.Budget
	bufs        *wire.BufferPool

	mu       sync.Mutex
	machines map[string]*machine
	addr     string
	runCtx   context.Context
}

// New checks the configuration and opens existing caches.
func New(cfg Config) (*Server, error) {
	if cfg.Listen == "" || cfg.CacheDir == "" || cfg.MasterTarget == "" {
		return nil, errors.New("process server: listen, cache_dir and master_target are required")
	}
	if cfg.CacheBytes == 0 {
		cfg.CacheBytes = 2 << 30
	}
	if cfg.RelayBytes == 0 {
		cfg.RelayBytes = 32 << 20
	}
	if cfg.RelayTotalBytes == 0 {
		cfg.RelayTotalBytes = 64 << 20
	}
	if cfg.Compression == "" {
		cfg.Compression = "adaptive"
	}
	if cfg.Compression != "adaptive" {
		if _, err := wire.ParseCodec(cfg.Compression); err != nil {
			return nil, fmt.Errorf("process server: %w", err)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Name == "" {
		cfg.Name = "ps"
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("role", "process-server"), machines: map[string]*machine{}, loopbackMT: localnet.IsLoopback(cfg.MasterTarget),
		relayBudget: relay.NewBudget(max(cfg.RelayTotalBytes, 0)), bufs: wire.NewBufferPool(48 << 20)}
	s.limiter = throttle.New(cfg.BandwidthLimit, 8<<20)
	if len(cfg.BandwidthSchedule) > 0 {
		sc := &throttle.Schedule{Default: max(cfg.BandwidthLimit, 0)}
		for _, e := range cfg.BandwidthSchedule {
			w, err := throttle.ParseWindow(e)
			if err != nil {
				return nil, fmt.Errorf("process server: bandwidth_schedule: %w", err)
			}
			sc.Windows = append(sc.Windows, w)
		}
		s.schedule = sc
		r, w := sc.At(time.Now())
		s.limiter, s.window = throttle.NewAdjustable(r, 8<<20), w
	}
	if err := os.MkdirAll(cfg.CacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("process server: creating cache dir: %w", err)
	}
	ents, err := os.ReadDir(cfg.CacheDir)
	if err != nil {
		return nil, fmt.Errorf("process server: reading cache dir: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(cfg.CacheDir, e.Name(), "hello.json"))
		if err != nil {
			s.log.Warn("cache directory without hello.json, ignored", "dir", e.Name(), "err", err)
			continue
		}
		var h wire.Hello
		if err := json.Unmarshal(b, &h); err != nil {
			return nil, fmt.Errorf("process server: cache of %s: corrupt hello.json: %w", e.Name(), err)
		}
		if _, err := s.openMachine(h); err != nil {
			s.closeAll()
			return nil, err
		}
	}
	return s, nil
}

func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.machines {
		m.log.Close()
	}
}

// Addr is the listening address once Run has started.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Run serves agents and forwards until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	ln, err := transport.Listen(s.cfg.Listen, s.cfg.ServerTLS)
	if err != nil {
		return fmt.Errorf("process server: %w", err)
	}
	s.mu.Lock()
	s.addr = ln.Addr().String()
	s.runCtx = ctx
	for _, m := range s.machines {
		m.startForwarder(ctx)
	}
	s.mu.Unlock()
	s.log.Info("process server listening", "addr", ln.Addr().String(), "master_target", s.cfg.MasterTarget, "compression", s.cfg.Compression,
		"bandwidth_limit", s.limiter.Rate(), "bandwidth_window", s.currentWindow())
	if s.schedule != nil {
		go s.followSchedule(ctx)
	}
	if s.cfg.StatusListen != "" {
		sl, err := statusapi.Listen(s.cfg.StatusListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("process server: status listener: %w", err)
		}
		go func() {
			if err := statusapi.Serve(ctx, sl, statusapi.Handler(func() any { return s.Status() }, s.metrics())); err != nil {
				s.log.Error("status server", "err", err)
			}
		}()
	}
	go func() { <-ctx.Done(); ln.Close() }()
	var wg sync.WaitGroup
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			s.log.Error("accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveAgent(ctx, c)
		}()
	}
	wg.Wait()
	s.mu.Lock()
	ms := make([]*machine, 0, len(s.machines))
	for _, m := range s.machines {
		ms = append(ms, m)
	}
	s.mu.Unlock()
	for _, m := range ms {
		m.wg.Wait()
		if err := m.log.Close(); err != nil {
			s.log.Error("closing cache", "machine", m.name, "err", err)
		}
	}
	return nil
}

func (s *Server) openMachine(h wire.Hello) (*machine, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.machines[h.Machine]; ok {
		return m, nil
	}
	if !wire.ValidName(h.Machine) {
		return nil, fmt.Errorf("invalid machine name %q", h.Machine)
	}
	dir := filepath.Join(s.cfg.CacheDir, h.Machine)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating cache of %s: %w", h.Machine, err)
	}
	if err := writeFileAtomic(filepath.Join(dir, "hello.json"), h); err != nil {
		return nil, fmt.Errorf("recording disks of %s: %w", h.Machine, err)
	}
	lg, err := seglog.Open(filepath.Join(dir, "log"), seglog.Options{MaxBytes: s.cfg.CacheBytes, Logger: s.log.With("machine", h.Machine)})
	if err != nil {
		return nil, fmt.Errorf("opening cache of %s: %w", h.Machine, err)
	}
	st := lg.Stats()
	m := &machine{s: s, name: h.Machine, hello: h, log: lg, relay: relay.NewSharedQueue(max(s.cfg.RelayBytes, 0), s.relayBudget), bufs: s.bufs, lastSeq: st.LastSeq, logLast: st.LastSeq, notify: make(chan struct{}, 1)}
	s.machines[h.Machine] = m
	if s.runCtx != nil {
		// Run already started: start forwarding now (Run starts the others).
		m.startForwarder(s.runCtx)
	}
	return m, nil
}

func writeFileAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func refuse(c *transport.Conn, code, msg string) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_ = c.WriteJSON(wire.TypeError, wire.ErrorMsg{Code: code, Message: msg})
}

// serveAgent runs one agent session.
func (s *Server) serveAgent(ctx context.Context, raw net.Conn) {
	defer raw.Close()
	c, err := transport.Accept(ctx, raw)
	if err != nil {
		s.log.Warn("agent connection refused", "remote", raw.RemoteAddr().String(), "err", err)
		return
	}
	defer c.Close()
	id, err := pki.PeerIdentity(c.TLS.ConnectionState())
	if err != nil || id.Role != pki.RoleAgent {
		s.log.Warn("peer is not an agent", "remote", raw.RemoteAddr().String(), "identity", id, "err", err)
		refuse(c, "identity", fmt.Sprintf("peer %v is not an agent", id))
		return
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var h wire.Hello
	if err := c.ReadJSON(wire.TypeHello, &h); err != nil {
		s.log.Warn("agent handshake failed", "agent", id.Name, "err", err)
		return
	}
	if h.Machine != id.Name {
		s.log.Warn("agent claims another machine", "certificate", id.Name, "hello", h.Machine)
		refuse(c, "identity", fmt.Sprintf("certificate is for machine %q, hello names %q: an agent may only send its own machine's disks", id.Name, h.Machine))
		return
	}
	m, err := s.openMachine(h)
	if err != nil {
		refuse(c, "cache", err.Error())
		s.log.Error("opening machine", "machine", h.Machine, "err", err)
		return
	}
	if err := m.updateHello(h); err != nil {
		refuse(c, "disks", err.Error())
		s.log.Error("agent disks changed", "machine", h.Machine, "err", err)
		return
	}
	m.runAgentSession(ctx, c)
}

// MachineStatus is the process server's view of one machine.
type MachineStatus struct {
	Machine          string  `json:"machine"`
	AgentConnected   bool    `json:"agent_connected"`
	MTConnected      bool    `json:"master_target_connected"`
	MTError          string  `json:"master_target_error,omitempty"`
	CacheBytes       int64   `json:"cache_bytes"`
	CacheLimit       int64   `json:"cache_limit_bytes"`
	CacheFill        float64 `json:"cache_fill"`
	RelayBytes       int64   `json:"relay_bytes"` // copies held in memory on their way out
	LastSeq          uint64  `json:"last_seq"`
	ForwardedSeq     uint64  `json:"forwarded_seq"`
	DurableSeq       uint64  `json:"durable_seq"`
	Codec            string  `json:"codec"`
	CompressionRatio float64 `json:"compression_ratio"`
	BytesIn          uint64  `json:"bytes_in"`
	BytesOut         uint64  `json:"bytes_out_wire"`
}

// Status of the process server.
type Status struct {
	Role         string `json:"role"`
	Name         string `json:"name"`
	Listen       string `json:"listen"`
	MasterTarget string `json:"master_target"`
	Compression  string `json:"compression"`
	Bandwidth    int64  `json:"bandwidth_limit,omitempty"` // in force now; 0: none
	// BandwidthWindow is the bandwidth_schedule entry in force, if any.
	BandwidthWindow string `json:"bandwidth_window,omitempty"`
	// RelayBytes is the copies held in memory for all machines, at most
	// RelayLimit (plus one batch when a single batch is larger).
	RelayBytes int64           `json:"relay_bytes"`
	RelayLimit int64           `json:"relay_limit_bytes"`
	Machines   []MachineStatus `json:"machines"`
}

// followSchedule applies the bandwidth schedule as the clock moves on.
// Checked every 15 s: a window starts at most that late.
func (s *Server) followSchedule(ctx context.Context) {
	t := time.NewTicker(15 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.applySchedule(now)
		}
	}
}

// applySchedule sets the bandwidth limit the schedule gives for now.
func (s *Server) applySchedule(now time.Time) {
	r, w := s.schedule.At(now)
	s.mu.Lock()
	changed := w != s.window || r != s.limiter.Rate()
	s.window = w
	s.mu.Unlock()
	if !changed {
		return
	}
	s.limiter.SetRate(r)
	if w == "" {
		w = "bandwidth_limit"
	}
	s.log.Info("bandwidth limit changed", "bytes_per_sec", r, "by", w)
}

func (s *Server) currentWindow() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.window
}

// Status reports the process server's state now.
func (s *Server) Status() Status {
	s.mu.Lock()
	st := Status{Role: "process-server", Name: s.cfg.Name, Listen: s.addr, MasterTarget: s.cfg.MasterTarget, Compression: s.cfg.Compression,
		Bandwidth: s.limiter.Rate(), BandwidthWindow: s.window,
		RelayBytes: s.relayBudget.Used(), RelayLimit: s.cfg.RelayTotalBytes}
	ms := make([]*machine, 0, len(s.machines))
	for _, m := range s.machines {
		ms = append(ms, m)
	}
	s.mu.Unlock()
	sort.Slice(ms, func(i, j int) bool { return ms[i].name < ms[j].name })
	for _, m := range ms {
		st.Machines = append(st.Machines, m.status())
	}
	return st
}
