package agent

import "time"

// DiskStatus is what an operator needs to know about one protected disk.
type DiskStatus struct {
	Name         string  `json:"name"`
	Path         string  `json:"path"`
	Mode         string  `json:"mode"`
	State        string  `json:"state"`
	Size         int64   `json:"size"`
	SyncTotal    int64   `json:"sync_total_bytes,omitempty"`
	SyncDone     int64   `json:"sync_done_bytes,omitempty"`
	SyncRate     int64   `json:"sync_rate_bytes_per_sec,omitempty"`
	SyncETA      float64 `json:"sync_eta_seconds,omitempty"`
	DirtyBytes   int64   `json:"dirty_bytes"`
	PendingBytes int64   `json:"pending_bytes"`
	LagSeconds   float64 `json:"lag_seconds"`
	AppliedSeq   uint64  `json:"last_applied_seq"`
	LastError    string  `json:"last_error,omitempty"`
}

// Status is the agent's report.
type Status struct {
	Role          string       `json:"role"`
	Machine       string       `json:"machine"`
	ProcessServer string       `json:"process_server"`
	Connected     bool         `json:"connected"`
	ConnError     string       `json:"connection_error,omitempty"`
	NBD           []string     `json:"nbd,omitempty"`
	LastSeq       uint64       `json:"last_seq"`
	CachedSeq     uint64       `json:"cached_seq"`
	DurableSeq    uint64       `json:"durable_seq"`
	QueueBytes    int64        `json:"queue_bytes"`
	QueueRecords  int          `json:"queue_records"`
	BitmapMode    bool         `json:"bitmap_mode"`
	Overflows     uint64       `json:"overflows"`
	HeldWrites    uint64       `json:"held_writes"`                             // writes that waited for room in a full queue
	CopyRateLimit int64        `json:"copy_rate_limit_bytes_per_sec,omitempty"` // cap on copy and scan reads, all disks together
	LagSeconds    float64      `json:"lag_seconds"`
	Drained       bool         `json:"drained"`
	BookmarkError string       `json:"last_bookmark_error,omitempty"`
	Disks         []DiskStatus `json:"disks"`
}

// Status reports the agent's state now.
func (a *Agent) Status() Status {
	qs := a.q.stats()
	a.mu.Lock()
	s := Status{Role: "agent", Machine: a.cfg.Machine, ProcessServer: a.cfg.ProcessServer, Connected: a.connected, ConnError: a.connErr, NBD: append([]string(nil), a.nbdAddrs...), BookmarkError: a.lastBookmarkErr}
	a.mu.Unlock()
	s.LastSeq, s.CachedSeq, s.DurableSeq = qs.LastSeq, qs.Cached, qs.Durable
	s.QueueBytes, s.QueueRecords, s.BitmapMode, s.Overflows, s.HeldWrites = qs.Bytes, qs.Records, qs.BitmapMode, qs.Overflows, qs.Holds
	s.LagSeconds = qs.Lag.Seconds()
	s.CopyRateLimit = a.copyRate.Rate()
	drained := qs.Durable >= qs.LastSeq
	a.q.mu.Lock()
	for _, d := range a.disks {
		ds := DiskStatus{Name: d.cfg.Name, Path: d.cfg.Path, Mode: d.cfg.Mode, Size: d.dev.Size(), AppliedSeq: qs.Durable, LagSeconds: s.LagSeconds}
		ds.LastError, _ = d.lastErr.Load().(string)
		ds.State = StateReplicating
		if d.resyncing {
			ds.State = StateResync
			if d.initial {
				ds.State = StateInitialSync
			}
			drained = false
			// Writes caught in the bitmap have no sequence number, so the
			// queue's timeline cannot tell their age: the replica has had
			// no new consistent point since the resync began.
			ds.LagSeconds = max(ds.LagSeconds, time.Since(d.syncStart).Seconds())
			s.LagSeconds = max(s.LagSeconds, ds.LagSeconds)
		}
		if d.tracker != nil {
			ds.DirtyBytes = d.tracker.DirtyBytes()
			if ds.DirtyBytes > 0 {
				drained = false
			}
			if d.resyncing {
				ds.SyncTotal = d.syncTotal.Load()
				ds.SyncDone = max(0, ds.SyncTotal-ds.DirtyBytes)
			}
		} else if d.scanning.Load() {
			ds.State = "scanning"
		}
		ds.SyncRate = d.rate.Load()
		if d.resyncing && ds.SyncRate > 0 {
			ds.SyncETA = float64(ds.DirtyBytes) / float64(ds.SyncRate)
		}
		ds.PendingBytes = ds.DirtyBytes
		s.Disks = append(s.Disks, ds)
	}
	a.q.mu.Unlock()
	for i := range s.Disks {
		s.Disks[i].PendingBytes += qs.Bytes / int64(len(s.Disks))
	}
	s.Drained = drained && qs.Bytes == 0
	return s
}
