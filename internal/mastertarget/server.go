// Package mastertarget is the secondary site's receiver: it makes each
// batch durable in an intake log before acknowledging it, applies whole
// epochs to sparse replica disks idempotently by sequence number, and
// checkpoints what it has applied so replays after a crash are harmless.
package mastertarget

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"standby/internal/pki"
	"standby/internal/points"
	"standby/internal/relay"
	"standby/internal/statusapi"
	"standby/internal/transport"
	"standby/internal/wire"
)

// Config is the master target's configuration.
type Config struct {
	Name    string `yaml:"name"`
	Listen  string `yaml:"listen"`
	DataDir string `yaml:"data_dir"`
	// SyncInterval is how often replicas are fsynced and the applied
	// position checkpointed; copies become durable (and the agent may
	// forget them) only at a checkpoint.
	SyncInterval time.Duration `yaml:"sync_interval"`
	// IntakeBytes bounds each machine's intake log (default 8 GiB, at
	// least minIntakeBytes; negative means unbounded).
	IntakeBytes int64 `yaml:"intake_bytes"`
	// RelayBytes is the memory per machine for copy batches (initial copy,
	// resync, scan) waiting to be applied without passing through the
	// intake log: they become durable only at the checkpoint after their
	// apply, and a crash loses nothing reported durable (the process server
	// makes the agent read them again). 0 means 32 MiB; negative turns it
	// off.
	RelayBytes int64 `yaml:"relay_bytes"`
	// RelayTotalBytes bounds such copies for all machines together, so the
	// memory does not grow with the number of machines copying at once: a
	// batch that does not fit goes to the intake log. 0 means 64 MiB.
	RelayTotalBytes int64 `yaml:"relay_total_bytes"`
	// PointInterval is the spacing of crash-consistent points (default
	// 5s, at least 1s). Retention is a thinning grid "INTERVAL:WITHIN,..."
	// (default "all:1h,10m:24h,1h:168h"); MaxAge drops anything older.
	PointInterval time.Duration `yaml:"point_interval"`
	Retention     string        `yaml:"retention"`
	MaxAge        time.Duration `yaml:"max_age"`
	// JournalBytes bounds each machine's undo journal (retention by
	// space): when full, the oldest before-images and the points that
	// need them go first. ViewListen serves views over TCP (host:port,
	// port 0 for any); by default each view gets a unix socket.
	JournalBytes int64  `yaml:"journal_bytes"`
	NoJournal    bool   `yaml:"no_journal"` // replica only, no recovery points before the newest
	ViewListen   string `yaml:"view_listen"`
	StatusListen string `yaml:"status_listen"`

	ServerTLS *tls.Config  `yaml:"-"`
	Logger    *slog.Logger `yaml:"-"`
}

// Server is a running master target.
type Server struct {
	cfg Config
	log *slog.Logger

	policy points.Policy

	exports exportJobs

	// relayBudget and bufs are shared by every machine (see
	// RelayTotalBytes); nil in tests that build a Server by hand.
	relayBudget *relay.Budget
	bufs        *wire.BufferPool

	mu       sync.Mutex
	machines map[string]*machine
	views    map[string]*view
	viewSeq  int
	addr     string
	runCtx   context.Context
}

// minIntakeBytes is the smallest intake a machine may have (8 epochs of
// the largest size).
const minIntakeBytes = 8 * wire.MaxEpochBytes

// New checks the configuration and opens existing replicas.
func New(cfg Config) (*Server, error) {
	if cfg.Listen == "" || cfg.DataDir == "" {
		return nil, errors.New("master target: listen and data_dir are required")
	}
	if cfg.SyncInterval == 0 {
		cfg.SyncInterval = time.Second
	}
	if cfg.IntakeBytes == 0 {
		cfg.IntakeBytes = 8 << 30
	}
	if cfg.IntakeBytes > 0 && cfg.IntakeBytes < minIntakeBytes { // negative: unbounded
		return nil, fmt.Errorf("master target: intake_bytes %d is below the %d-byte minimum: the intake must hold a whole epoch (up to %d bytes) while apply waits for its marker, besides what is applied but not yet checkpointed", cfg.IntakeBytes, minIntakeBytes, wire.MaxEpochBytes)
	}
	if cfg.RelayBytes == 0 {
		cfg.RelayBytes = 32 << 20
	}
	if cfg.RelayTotalBytes == 0 {
		cfg.RelayTotalBytes = 64 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Name == "" {
		cfg.Name = "mt"
	}
	if cfg.PointInterval == 0 {
		cfg.PointInterval = 5 * time.Second
	}
	if cfg.PointInterval < time.Second {
		return nil, fmt.Errorf("master target: point interval %s is below the 1s minimum", cfg.PointInterval)
	}
	if cfg.Retention == "" {
		cfg.Retention = points.DefaultGrid
	}
	grid, err := points.ParseGrid(cfg.Retention)
	if err != nil {
		return nil, fmt.Errorf("master target: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("role", "master-target"), machines: map[string]*machine{}, views: map[string]*view{}, exports: exportJobs{jobs: map[string]*ExportJob{}}, policy: points.Policy{Grid: grid, MaxAge: cfg.MaxAge},
		relayBudget: relay.NewBudget(max(cfg.RelayTotalBytes, 0)), bufs: wire.NewBufferPool(96 << 20)}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("master target: creating data dir: %w", err)
	}
	// Views do not survive a restart: their scratch files and sockets are
	// left-overs of a crash.
	if err := os.RemoveAll(filepath.Join(cfg.DataDir, ".views")); err != nil {
		return nil, fmt.Errorf("master target: removing stale views: %w", err)
	}
	var ents []os.DirEntry
	ents, err = os.ReadDir(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("master target: reading data dir: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(cfg.DataDir, e.Name(), stateFile)); err != nil {
			continue
		}
		m, err := openMachine(s, e.Name(), nil)
		if err != nil {
			s.closeAll()
			return nil, err
		}
		s.machines[m.name] = m
	}
	return s, nil
}

func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.machines {
		m.close()
	}
}

// Addr is the listening address once Run has started.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Run serves process servers until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	ln, err := transport.Listen(s.cfg.Listen, s.cfg.ServerTLS)
	if err != nil {
		return fmt.Errorf("master target: %w", err)
	}
	s.mu.Lock()
	s.addr = ln.Addr().String()
	s.runCtx = ctx
	for _, m := range s.machines {
		m.start(ctx)
	}
	s.mu.Unlock()
	s.log.Info("master target listening", "addr", ln.Addr().String(), "data_dir", s.cfg.DataDir)
	if s.cfg.StatusListen != "" {
		sl, err := statusapi.Listen(s.cfg.StatusListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("master target: status listener: %w", err)
		}
		go func() {
			mux := statusapi.Handler(func() any { return s.Status() }, s.metrics())
			s.api(mux)
			if err := statusapi.Serve(ctx, sl, mux); err != nil {
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
			s.serve(ctx, c)
		}()
	}
	wg.Wait()
	s.closeAllViews()
	s.mu.Lock()
	ms := make([]*machine, 0, len(s.machines))
	for _, m := range s.machines {
		ms = append(ms, m)
	}
	s.mu.Unlock()
	for _, m := range ms {
		m.wg.Wait()
		m.close()
	}
	return nil
}

func refuse(c *transport.Conn, code, msg string) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_ = c.WriteJSON(wire.TypeError, wire.ErrorMsg{Code: code, Message: msg})
}

func (s *Server) serve(ctx context.Context, raw net.Conn) {
	defer raw.Close()
	c, err := transport.Accept(ctx, raw)
	if err != nil {
		s.log.Warn("connection refused", "remote", raw.RemoteAddr().String(), "err", err)
		return
	}
	defer c.Close()
	id, err := pki.PeerIdentity(c.TLS.ConnectionState())
	if err != nil || id.Role != pki.RoleProcessServer {
		s.log.Warn("peer is not a process server", "remote", raw.RemoteAddr().String(), "identity", id, "err", err)
		refuse(c, "identity", fmt.Sprintf("peer %v is not a process server", id))
		return
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var h wire.Hello
	if err := c.ReadJSON(wire.TypeHello, &h); err != nil {
		s.log.Warn("handshake failed", "peer", id.Name, "err", err)
		return
	}
	m, err := s.machine(h)
	if err != nil {
		s.log.Error("refusing machine", "machine", h.Machine, "process_server", id.Name, "err", err)
		refuse(c, "replica", err.Error())
		return
	}
	m.runSession(ctx, c, id.Name)
}

// machine returns the machine of a Hello, creating its replicas on first
// contact and checking that existing ones match the disks.
func (s *Server) machine(h wire.Hello) (*machine, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.machines[h.Machine]; ok {
		if err := m.checkDisks(h.Disks); err != nil {
			return nil, err
		}
		if err := m.stoppedErr(); err != nil {
			return nil, err
		}
		return m, nil
	}
	m, err := openMachine(s, h.Machine, h.Disks)
	if err != nil {
		return nil, err
	}
	s.machines[m.name] = m
	if s.runCtx != nil {
		m.start(s.runCtx)
	}
	return m, nil
}

// reopenAfterFailure gives a machine whose apply stopped on an error (a
// full file system, an I/O error) a fresh start from its files, as a
// restart of the master target would, and keeps trying until that works:
// an operator who frees space should not also have to restart the master
// target, and other machines on it should not have to stop for this one.
// A fresh start is the only safe one: after a failed write or fsync the
// undo journal knows nothing about its files (a sticky error), and its
// recovery on open is what sorts that out. The machine's open views go
// with it, as they would in a restart. Replay from the last checkpoint is
// idempotent, so whatever apply had done past it is simply done again.
func (s *Server) reopenAfterFailure(ctx context.Context, old *machine) {
	lg := s.log.With("machine", old.name)
	// A machine that stops again soon after a reopen (the space was not
	// freed) waits longer each time, up to a minute.
	delay := 5 * time.Second
	if old.retryDelay > 0 && time.Since(old.openedAt) < 10*time.Minute {
		delay = old.retryDelay
	}
	old.mu.Lock()
	stopped := old.applyErr
	old.mu.Unlock()
	for ; ; delay = min(2*delay, time.Minute) {
		lg.Warn("apply stopped: reopening the machine from its files", "in", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		if old.stop != nil {
			old.stop()
		}
		old.wg.Wait()
		s.closeViewsOf(old)
		old.close()
		s.mu.Lock()
		if s.machines[old.name] != old || ctx.Err() != nil {
			s.mu.Unlock()
			return
		}
		m, err := openMachine(s, old.name, nil)
		if err != nil {
			s.mu.Unlock()
			old.mu.Lock()
			old.applyErr = fmt.Sprintf("%s; reopening: %v", stopped, err)
			old.mu.Unlock()
			lg.Error("reopening machine after apply stopped", "err", err)
			continue
		}
		old.mu.Lock()
		m.events = append(m.events, old.events...)
		old.mu.Unlock()
		from := m.live.AppliedSeq + 1
		m.retryDelay = min(2*delay, time.Minute)
		s.machines[m.name] = m
		m.start(ctx)
		s.mu.Unlock()
		m.event("info", fmt.Sprintf("machine reopened after apply stopped (%s); applying from seq %d", stopped, from))
		return
	}
}

// Status of the master target.
type Status struct {
	Role    string `json:"role"`
	Name    string `json:"name"`
	Listen  string `json:"listen"`
	DataDir string `json:"data_dir"`
	// RelayBytes is the copies held in memory for all machines, at most
	// RelayLimit (plus one batch when a single batch is larger).
	RelayBytes int64           `json:"relay_bytes"`
	RelayLimit int64           `json:"relay_limit_bytes"`
	Machines   []MachineStatus `json:"machines"`
}

// Status reports the master target's state now.
func (s *Server) Status() Status {
	s.mu.Lock()
	st := Status{Role: "master-target", Name: s.cfg.Name, Listen: s.addr, DataDir: s.cfg.DataDir, RelayLimit: s.cfg.RelayTotalBytes}
	if s.relayBudget != nil {
		st.RelayBytes = s.relayBudget.Used()
	}
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
