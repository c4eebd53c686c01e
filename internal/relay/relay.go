// Package relay carries a machine's copy batches (initial copy, resync,
// scan) past the durable logs of the process server and the master target.
//
// Copies can always be read again from the source (DESIGN.md, "Initial
// replication"), so writing them to a segment log, fsyncing nothing and
// reading them back only costs CPU and memory bandwidth: about a fifth of
// both roles' CPU in the initial-copy profiles (docs/benchmarks.md). A
// Queue holds them in memory instead, and Merge hands them on in sequence
// order with the log's entries: a copy batch is released only after every
// log entry appended before it, so captured writes and copies reach the
// replica in the order the agent numbered them.
//
// What is lost with a Queue (a crash of its process) was never reported
// durable: callers must make sure the agent forgets those copies (it reads
// them again), which is what the process server does by ending the agent's
// session when a master-target session ends with copies unconfirmed.
package relay

import (
	"context"
	"sync"
	"sync/atomic"

	"standby/internal/seglog"
)

// Item is one copy batch held in memory.
type Item struct {
	First, Last uint64
	// LogBefore is the Last of the newest log entry appended before this
	// item: it may be handed on once the log has been read through it.
	LogBefore uint64
	Data      []byte
	// Sum is Data's CRC-32C as it arrived, when HasSum: passed on, not
	// computed again.
	Sum    uint32
	HasSum bool
}

// Budget bounds the bytes several queues hold together: a process server
// relays the copies of every machine it serves, and a bound per machine
// alone would let its memory grow with the number of machines. A batch
// that does not fit the budget goes through the durable log instead.
type Budget struct {
	limit int64
	used  atomic.Int64
}

// NewBudget lets the queues sharing it hold limit bytes in all.
func NewBudget(limit int64) *Budget { return &Budget{limit: limit} }

// Used is what the queues sharing the budget hold now.
func (b *Budget) Used() int64 { return b.used.Load() }

// Fits reports whether n more bytes fit now (an empty budget takes any
// one batch, so a batch larger than the budget still passes alone).
func (b *Budget) Fits(n int64) bool {
	if b == nil {
		return true
	}
	u := b.used.Load()
	return u == 0 || u+n <= b.limit
}

func (b *Budget) take(n int64) bool {
	if b == nil {
		return true
	}
	for {
		u := b.used.Load()
		if u > 0 && u+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

func (b *Budget) give(n int64) {
	if b != nil {
		b.used.Add(-n)
	}
}

// Queue is a bounded FIFO of copy batches in sequence order.
type Queue struct {
	limit  int64
	budget *Budget // shared with other queues; nil: none

	mu     sync.Mutex
	items  []Item
	head   int
	bytes  int64
	signal chan struct{} // closed and replaced whenever the queue changes
}

// NewQueue holds at most limit bytes of batch data.
func NewQueue(limit int64) *Queue {
	return &Queue{limit: limit, signal: make(chan struct{})}
}

// NewSharedQueue holds at most limit bytes of batch data, and no more than
// the budget it shares with other queues allows.
func NewSharedQueue(limit int64, b *Budget) *Queue {
	q := NewQueue(limit)
	q.budget = b
	return q
}

func (q *Queue) changedLocked() {
	close(q.signal)
	q.signal = make(chan struct{})
}

// Changed returns a channel closed at the next push, pop or reset.
func (q *Queue) Changed() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.signal
}

// TryPush appends it if there is room (an empty queue always has room, so
// a batch larger than the limit still passes alone) and the shared budget
// allows it. What counts is the memory an item holds, its capacity: a
// frame's buffer may be up to twice its payload (internal/bufpool).
func (q *Queue) TryPush(it Item) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := int64(cap(it.Data))
	if q.bytes > 0 && q.bytes+n > q.limit {
		return false
	}
	if !q.budget.take(n) {
		return false
	}
	q.items = append(q.items, it)
	q.bytes += n
	q.changedLocked()
	return true
}

// Push appends it, waiting for room.
func (q *Queue) Push(ctx context.Context, it Item) error {
	for {
		ch := q.Changed()
		if q.TryPush(it) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Peek returns the oldest item.
func (q *Queue) Peek() (Item, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.items) {
		return Item{}, false
	}
	return q.items[q.head], true
}

// Pop drops the oldest item.
func (q *Queue) Pop() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.items) {
		return
	}
	n := int64(cap(q.items[q.head].Data))
	q.bytes -= n
	q.budget.give(n)
	q.items[q.head] = Item{}
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
	q.changedLocked()
}

// Reset drops every item and says how many there were.
func (q *Queue) Reset() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := len(q.items) - q.head
	q.budget.give(q.bytes)
	clear(q.items)
	q.items, q.head, q.bytes = q.items[:0], 0, 0
	q.changedLocked()
	return n
}

// Bytes is the batch data held.
func (q *Queue) Bytes() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.bytes
}

// Len is the number of items held.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items) - q.head
}

// Entry is what Merge hands on: a log entry or a queued item.
type Entry struct {
	First, Last uint64
	Data        []byte
	// FromLog says Data belongs to the log reader and is valid only until
	// the emit callback returns; a queued item's Data is the caller's.
	FromLog bool
	Sum     uint32 // Data's CRC-32C, when HasSum (queued items only)
	HasSum  bool
}

// Merge reads the log from seq from and the queue, and calls emit with
// their batches in sequence order until ctx ends or emit or the log fails.
// Queue items that end before from are dropped unseen (the receiver has
// them already). Popping an item happens after emit returns, so an item is
// never lost between the queue and a failed emit: the caller decides what
// a failed session means for the queue.
func Merge(ctx context.Context, lg *seglog.Log, q *Queue, from uint64, emit func(Entry) error) error {
	ctx, cancel := context.WithCancel(ctx)
	// The reader is not safe for concurrent use: its goroutine closes it,
	// and Merge returns only after that.
	readerDone := make(chan struct{})
	defer func() {
		cancel()
		<-readerDone
	}()
	r := lg.NewReader(from)
	type logItem struct {
		e    seglog.Entry
		err  error
		done chan struct{} // the reader may reuse e.Data once closed
	}
	logc := make(chan logItem)
	go func() {
		defer close(readerDone)
		defer r.Close()
		for {
			e, err := r.Next(ctx)
			it := logItem{e: e, err: err, done: make(chan struct{})}
			select {
			case logc <- it:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
			select {
			case <-it.done:
			case <-ctx.Done():
				return
			}
		}
	}()
	logDone := from - 1 // log entries through logDone have been handed on (or skipped)
	// emitHead hands on the queue's oldest item, or drops it unseen when
	// it ends before from, and pops it.
	emitHead := func(it Item) error {
		if it.Last >= from {
			if err := emit(Entry{First: it.First, Last: it.Last, Data: it.Data, Sum: it.Sum, HasSum: it.HasSum}); err != nil {
				return err
			}
		}
		q.Pop()
		return nil
	}
	for {
		// Taken before Peek, so a push between the two still wakes us.
		changed := q.Changed()
		if it, ok := q.Peek(); ok && (it.Last < from || it.LogBefore <= logDone) {
			if err := emitHead(it); err != nil {
				return err
			}
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case li := <-logc:
			if li.err != nil {
				return li.err
			}
			// Items pushed before this entry was appended go first. They
			// are all ready (every log entry before them has been handed
			// on), but the select may have picked this entry over the
			// queue's change signal when both were pending.
			for {
				it, ok := q.Peek()
				if !ok || it.Last >= li.e.First {
					break
				}
				if err := emitHead(it); err != nil {
					close(li.done)
					return err
				}
			}
			err := emit(Entry{First: li.e.First, Last: li.e.Last, Data: li.e.Data, FromLog: true})
			close(li.done)
			if err != nil {
				return err
			}
			logDone = max(logDone, li.e.Last)
		}
	}
}
