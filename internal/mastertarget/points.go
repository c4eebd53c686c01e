package mastertarget

import (
	"encoding/json"
	"fmt"
	"time"

	"standby/internal/points"
	"standby/internal/wire"
)

// notePoint turns an applied epoch marker or bookmark into a recovery
// point. Crash-consistent points are taken at most every PointInterval;
// bookmarks always make a point. No point is made while a disk resyncs:
// the replica then matches no state the source was ever in.
func (m *machine) notePoint(rec wire.Record) {
	if !rec.Op.ClosesEpoch() || m.points == nil {
		return
	}
	m.mu.Lock()
	consistent := m.consistentLocked()
	lastSeq, lastCrash := m.lastPointSeq, m.lastCrashPoint
	m.mu.Unlock()
	if rec.Seq <= lastSeq {
		return // replayed after a restart: the point exists already
	}
	p := points.Point{Seq: rec.Seq, Consistent: consistent}
	switch rec.Op {
	case wire.OpEpoch:
		p.Time = time.Unix(0, int64(rec.Offset))
		p.Kind = points.KindCrash
		if rec.Flags&wire.EpochScan != 0 {
			p.Kind = points.KindScan
			p.Note = "scan pass: consistent only if the source was frozen or a snapshot"
		}
		if !consistent || p.Time.Sub(lastCrash) < m.s.cfg.PointInterval {
			return
		}
	case wire.OpBookmark:
		var bm wire.Bookmark
		if err := json.Unmarshal(rec.Data, &bm); err != nil {
			m.event("warning", fmt.Sprintf("bookmark at seq %d has an unreadable payload: %v", rec.Seq, err))
			return
		}
		p.Time = time.Unix(0, bm.Time)
		p.Kind = points.KindApp
		if bm.Kind == "tag" {
			p.Kind = points.KindTag
		}
		p.Name, p.Group = bm.Name, bm.Group
		p.Note = fmt.Sprintf("hooks %d, writes held %s, id %s", bm.Hooks, time.Duration(bm.HeldNanos).Round(time.Microsecond), bm.ID)
		if !consistent {
			m.event("warning", fmt.Sprintf("bookmark %q (seq %d) arrived while a disk was resyncing: recorded as not consistent", bm.Name, rec.Seq))
		}
	}
	added, err := m.points.Add(p)
	if err != nil {
		m.event("error", fmt.Sprintf("recording point at seq %d: %v", rec.Seq, err))
		return
	}
	m.mu.Lock()
	m.lastPointSeq = added.Seq
	if added.Kind == points.KindCrash {
		m.lastCrashPoint = added.Time
	}
	m.mu.Unlock()
}

// Event is something an operator should see.
type Event struct {
	Time    time.Time `json:"time"`
	Level   string    `json:"level"`
	Machine string    `json:"machine"`
	Message string    `json:"message"`
}

func (m *machine) event(level, msg string) {
	e := Event{Time: time.Now(), Level: level, Machine: m.name, Message: msg}
	switch level {
	case "error":
		m.s.log.Error(msg, "machine", m.name)
	case "warning":
		m.s.log.Warn(msg, "machine", m.name)
	default:
		m.s.log.Info(msg, "machine", m.name)
	}
	m.mu.Lock()
	m.events = append(m.events, e)
	if len(m.events) > 200 {
		m.events = m.events[len(m.events)-200:]
	}
	m.mu.Unlock()
}

// dropUnrecoverable removes points older than what the journal can still
// reconstruct, and says so.
func (m *machine) dropUnrecoverable() {
	if m.journal == nil || m.points == nil {
		return
	}
	oldest := m.journal.OldestSeq()
	if oldest == 0 {
		return
	}
	gone, err := m.points.Drop(func(p points.Point) bool { return p.Seq < oldest })
	if err != nil {
		m.event("error", fmt.Sprintf("dropping points outside the journal: %v", err))
		return
	}
	if len(gone) > 0 {
		m.event("warning", fmt.Sprintf("journal space ran out: the %d oldest points (up to %s) were dropped", len(gone), gone[len(gone)-1].Time.Format(time.RFC3339)))
	}
}

// runRetention thins the points by the grid and drops those past max age,
// then lets the journal forget what no remaining point needs.
func (m *machine) retain(now time.Time) {
	if m.points == nil {
		return
	}
	m.dropUnrecoverable()
	drop := m.s.policy.Thin(m.points.List(), now)
	gone, err := m.points.Drop(func(p points.Point) bool { return drop[p.ID] })
	if err != nil {
		m.event("error", fmt.Sprintf("thinning points: %v", err))
		return
	}
	if len(gone) > 0 {
		m.s.log.Debug("retention thinned points", "machine", m.name, "dropped", len(gone))
	}
	if m.journal == nil {
		return
	}
	// Before-images older than the oldest point serve no view any more.
	keepFrom := uint64(0)
	if pts := m.points.List(); len(pts) > 0 {
		keepFrom = pts[0].Seq + 1
	} else {
		m.mu.Lock()
		keepFrom = m.live.AppliedSeq + 1
		m.mu.Unlock()
	}
	if _, err := m.journal.Prune(keepFrom); err != nil {
		m.event("error", fmt.Sprintf("pruning journal: %v", err))
	}
}
