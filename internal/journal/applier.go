package journal

import "fmt"

// Applier runs records through the write-ahead protocol for the apply loop,
// letting many records share one Sync:
//
//	lock the range → Preserve (unless seq <= LastSeq) → … → Sync → write the replica → unlock
//
// Preserve reads the replica, so a record whose blocks overlap a record
// still waiting for the Sync would preserve content from before that
// record: Apply flushes the batch first in that case. It is not safe for
// concurrent use; it belongs to the apply goroutine.
type Applier struct {
	j       *Journal
	max     int
	pending []pendingWrite
}

type pendingWrite struct {
	seq    uint64
	disk   int
	b0, b1 int64
	write  func() error
	unlock func()
}

// NewApplier returns an Applier that flushes by itself once maxPending
// records wait (at least 1).
func (j *Journal) NewApplier(maxPending int) *Applier {
	return &Applier{j: j, max: max(maxPending, 1)}
}

// Apply preserves the range of record seq (PreserveZero when zeroing) and
// queues write, the replica write of the record, to run after the next
// Sync. Records must come in seq order. A record at or below LastSeq is not
// preserved again: after a crash its before-image is already durable and
// its replica range may already hold the new data.
func (a *Applier) Apply(seq uint64, disk int, off, n int64, zeroing bool, write func() error) error {
	b0, b1 := a.j.blockRange(off, n)
	for _, p := range a.pending {
		if p.disk == disk && p.b0 < b1 && b0 < p.b1 {
			if err := a.Flush(); err != nil {
				return err
			}
			break
		}
	}
	unlock := a.j.Lock(disk, off, n)
	if seq > a.j.LastSeq() {
		var err error
		if zeroing {
			err = a.j.PreserveZero(seq, disk, off, n)
		} else {
			err = a.j.Preserve(seq, disk, off, n)
		}
		if err != nil {
			unlock()
			return err
		}
	}
	a.pending = append(a.pending, pendingWrite{seq: seq, disk: disk, b0: b0, b1: b1, write: write, unlock: unlock})
	if len(a.pending) >= a.max {
		return a.Flush()
	}
	return nil
}

// Pending is the number of records waiting for Flush.
func (a *Applier) Pending() int { return len(a.pending) }

// Flush syncs the journal and then performs the queued replica writes in
// order. On return every queued record is written (or the error says which
// was not) and every range is unlocked.
func (a *Applier) Flush() error {
	if len(a.pending) == 0 {
		return nil
	}
	pend := a.pending
	a.pending = a.pending[:0]
	defer func() {
		for _, p := range pend {
			p.unlock()
		}
	}()
	if err := a.j.Sync(); err != nil {
		return err
	}
	for _, p := range pend {
		if err := p.write(); err != nil {
			return fmt.Errorf("journal: replica write of seq %d: %w", p.seq, err)
		}
	}
	return nil
}

// Close flushes what is pending.
func (a *Applier) Close() error { return a.Flush() }
