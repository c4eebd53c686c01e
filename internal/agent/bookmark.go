package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"time"

	"standby/internal/wire"
)

// HookConfig is one freeze/thaw pair, run with sh -c: fsfreeze on a
// mounted file system, a database checkpoint, or both in one script.
type HookConfig struct {
	Name   string `yaml:"name" json:"name"`
	Freeze string `yaml:"freeze" json:"freeze"`
	Thaw   string `yaml:"thaw" json:"thaw"`
}

// BookmarkResult reports an app-consistent bookmark.
type BookmarkResult struct {
	Seq     uint64        `json:"seq"`
	Time    time.Time     `json:"time"`
	Name    string        `json:"name,omitempty"`
	Group   string        `json:"group,omitempty"`
	ID      string        `json:"id,omitempty"`
	Hooks   int           `json:"hooks"`
	Held    time.Duration `json:"held_ns"`
	Aborted bool          `json:"aborted,omitempty"`
	Error   string        `json:"error,omitempty"`
}

// barrier is a prepared (frozen, writes held) bookmark waiting for its
// mark. Only one exists at a time.
type barrier struct {
	id       string
	started  time.Time
	thawed   []HookConfig // frozen hooks, to thaw in reverse
	timer    *time.Timer
	released bool
}

// writeGate holds workload writes while a marker is inserted: writes take
// it shared, a barrier takes it exclusively, which waits for writes in
// flight and keeps new ones out.
type writeGate struct{ mu sync.RWMutex }

func (g *writeGate) enter() { g.mu.RLock() }
func (g *writeGate) leave() { g.mu.RUnlock() }

// Prepare freezes the applications (hooks) and then holds writes. It
// must be followed by Commit or Abort within the hold bound, or the agent
// aborts by itself: an application is never left frozen.
func (a *Agent) Prepare(ctx context.Context, id string) error {
	a.bmu.Lock()
	if a.bar != nil {
		a.bmu.Unlock()
		return fmt.Errorf("bookmark %s: another bookmark (%s) is in progress", id, a.bar.id)
	}
	b := &barrier{id: id, started: time.Now()}
	a.bar = b
	a.bmu.Unlock()
	bound := a.cfg.FreezeTimeout
	fctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	for _, h := range a.cfg.Hooks {
		if h.Freeze == "" {
			continue
		}
		if out, err := hookCommand(fctx, h.Freeze).CombinedOutput(); err != nil {
			if fctx.Err() != nil {
				err = fmt.Errorf("did not finish within the %s bound", bound)
			}
			// A hook that failed half-way may have frozen something: thaw it too.
			b.thawed = append(b.thawed, h)
			a.release(b, fmt.Sprintf("freeze hook %q failed: %v: %s", h.Name, err, trimOut(out)))
			return fmt.Errorf("bookmark %s: freeze hook %q failed: %v: %s", id, h.Name, err, trimOut(out))
		}
		b.thawed = append(b.thawed, h)
	}
	// Hold writes: waits for writes in flight, keeps new ones out.
	held := make(chan struct{})
	go func() { a.gate.mu.Lock(); close(held) }()
	select {
	case <-held:
	case <-fctx.Done():
		go func() { <-held; a.gate.mu.Unlock() }()
		a.release(b, "writes in flight did not finish within the bound")
		return fmt.Errorf("bookmark %s: writes in flight did not finish within %s", id, bound)
	}
	a.bmu.Lock()
	if b.released { // cannot happen before the timer is armed, but be safe
		a.bmu.Unlock()
		a.gate.mu.Unlock()
		return fmt.Errorf("bookmark %s was aborted", id)
	}
	remaining := bound - time.Since(b.started)
	if remaining < 0 {
		remaining = 0
	}
	b.timer = time.AfterFunc(remaining, func() {
		a.log.Warn("bookmark held past its bound: aborting and thawing", "id", id, "bound", bound)
		a.abortBarrier(b, "hold bound exceeded")
	})
	a.bmu.Unlock()
	return nil
}

// Commit inserts the marker across all disks, releases writes and thaws.
func (a *Agent) Commit(id, name, group string) (BookmarkResult, error) {
	a.bmu.Lock()
	b := a.bar
	if b == nil || b.id != id || b.released {
		a.bmu.Unlock()
		return BookmarkResult{ID: id, Aborted: true}, fmt.Errorf("bookmark %s is not prepared (aborted after its hold bound, or never prepared)", id)
	}
	b.timer.Stop()
	b.released = true
	a.bar = nil
	a.bmu.Unlock()
	// Every disk is flushed so the marker is also a durable state of the source.
	var ferr error
	for _, d := range a.disks {
		if err := d.dev.Sync(); err != nil {
			ferr = errors.Join(ferr, fmt.Errorf("flushing %s: %w", d.cfg.Name, err))
		}
	}
	held := time.Since(b.started)
	now := time.Now()
	bm := wire.Bookmark{Kind: "app", Name: name, Group: group, ID: id, Time: now.UnixNano(), Hooks: len(b.thawed), HeldNanos: int64(held)}
	data, _ := json.Marshal(bm)
	var seq uint64
	if ferr == nil {
		seq = a.q.pushMarker(nil, wire.Record{Op: wire.OpBookmark, Length: uint32(len(data)), Data: data})
	}
	a.gate.mu.Unlock()
	thawErr := a.thaw(b)
	res := BookmarkResult{Seq: seq, Time: now, Name: name, Group: group, ID: id, Hooks: len(b.thawed), Held: held}
	if err := errors.Join(ferr, thawErr); err != nil {
		res.Error = err.Error()
		return res, fmt.Errorf("bookmark %s: %w", id, err)
	}
	a.log.Info("app-consistent bookmark", "id", id, "name", name, "group", group, "seq", seq, "held", held.Round(time.Microsecond), "hooks", len(b.thawed))
	return res, nil
}

// Abort releases a prepared bookmark without a marker.
func (a *Agent) Abort(id string) error {
	a.bmu.Lock()
	b := a.bar
	a.bmu.Unlock()
	if b == nil || b.id != id {
		return nil
	}
	a.abortBarrier(b, "aborted by the coordinator")
	return nil
}

func (a *Agent) abortBarrier(b *barrier, why string) {
	a.bmu.Lock()
	if b.released {
		a.bmu.Unlock()
		return
	}
	b.released = true
	if b.timer != nil {
		b.timer.Stop()
	}
	a.bar = nil
	a.bmu.Unlock()
	a.gate.mu.Unlock()
	if err := a.thaw(b); err != nil {
		a.log.Error("thawing after abort", "id", b.id, "err", err)
	}
	a.noteBookmarkFailure(b.id, why)
}

// release ends a barrier that never held writes.
func (a *Agent) release(b *barrier, why string) {
	a.bmu.Lock()
	b.released = true
	if a.bar == b {
		a.bar = nil
	}
	a.bmu.Unlock()
	if err := a.thaw(b); err != nil {
		a.log.Error("thawing after failed freeze", "id", b.id, "err", err)
	}
	a.noteBookmarkFailure(b.id, why)
}

func (a *Agent) thaw(b *barrier) error {
	var errs error
	for i := len(b.thawed) - 1; i >= 0; i-- {
		h := b.thawed[i]
		if h.Thaw == "" {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := hookCommand(ctx, h.Thaw).CombinedOutput()
		cancel()
		if err != nil {
			errs = errors.Join(errs, fmt.Errorf("thaw hook %q failed: %v: %s", h.Name, err, trimOut(out)))
		}
	}
	return errs
}

func (a *Agent) noteBookmarkFailure(id, why string) {
	a.log.Error("bookmark failed", "id", id, "reason", why)
	a.mu.Lock()
	a.lastBookmarkErr = fmt.Sprintf("%s: %s (%s)", time.Now().Format(time.RFC3339), why, id)
	a.mu.Unlock()
}

func trimOut(b []byte) string {
	if len(b) > 500 {
		b = b[len(b)-500:]
	}
	return string(b)
}

// Bookmark takes an app-consistent bookmark of this machine alone.
func (a *Agent) Bookmark(ctx context.Context, name string) (BookmarkResult, error) {
	id := fmt.Sprintf("%s-%d", a.cfg.Machine, time.Now().UnixNano())
	if err := a.Prepare(ctx, id); err != nil {
		return BookmarkResult{ID: id, Name: name, Aborted: true, Error: err.Error()}, err
	}
	return a.Commit(id, name, "")
}

// runBookmarks takes scheduled bookmarks.
func (a *Agent) runBookmarks(ctx context.Context) error {
	if a.cfg.BookmarkInterval <= 0 {
		return nil
	}
	t := time.NewTicker(a.cfg.BookmarkInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if _, err := a.Bookmark(ctx, ""); err != nil {
				a.log.Error("scheduled bookmark failed", "err", err)
			}
		}
	}
}

// hookCommand runs a hook with sh -c. WaitDelay stops a hook's children
// that outlive a timeout from holding the bookmark past its bound.
func hookCommand(ctx context.Context, script string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	cmd.WaitDelay = 100 * time.Millisecond
	return cmd
}
