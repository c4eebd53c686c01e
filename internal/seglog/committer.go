package seglog

import (
	"context"
	"sync"
)

// Committer makes a receiver's appends durable in the background, so the
// receiver goes on reading its connection while an fdatasync runs: each
// fdatasync then covers everything appended during the previous one (group
// commit that adapts to the disk), where a receiver that synced after each
// entry would pay one fdatasync per batch and stop reading meanwhile.
type Committer struct {
	log  *Log
	kick chan struct{}

	mu       sync.Mutex
	want     uint64 // newest seq handed to Commit
	needSync bool   // an entry appended since the last sync needs it
	done     chan struct{}
}

// NewCommitter starts a committer. onDurable is called, in its goroutine
// and with increasing seq, once everything handed to Commit up to seq is
// durable (synced tells whether an fdatasync was needed for it); on a sync
// error it is called with the error and the committer stops.
func (l *Log) NewCommitter(ctx context.Context, onDurable func(seq uint64, synced bool, err error)) *Committer {
	c := &Committer{log: l, kick: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		var published uint64
		for {
			select {
			case <-ctx.Done():
				return
			case <-c.kick:
			}
			c.mu.Lock()
			seq, needSync := c.want, c.needSync
			c.needSync = false
			c.mu.Unlock()
			if needSync {
				if err := l.Sync(); err != nil {
					onDurable(seq, false, err)
					return
				}
			}
			if seq > published || needSync {
				published = max(published, seq)
				onDurable(seq, needSync, nil)
			}
		}
	}()
	return c
}

// Commit hands over the receiver's progress: everything up to seq has been
// appended (needSync: some of it to this log, unsynced) or passed on in
// some other way that needs no sync.
func (c *Committer) Commit(seq uint64, needSync bool) {
	c.mu.Lock()
	c.want = max(c.want, seq)
	c.needSync = c.needSync || needSync
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Wait returns once the committer's goroutine has stopped (its context
// ended or a sync failed).
func (c *Committer) Wait() { <-c.done }
