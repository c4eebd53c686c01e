package relay

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"standby/internal/seglog"
)

// A producer appends log entries and pushes queue items in one sequence,
// as a session does; Merge must hand every one on exactly once, in order,
// whatever the interleaving and however slow the consumer.
func TestMergeKeepsSequenceOrder(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4, 5} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			lg, err := seglog.Open(t.TempDir(), seglog.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer lg.Close()
			q := NewQueue(64)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			const n = 2000
			rng := rand.New(rand.NewPCG(seed, 0))
			kinds := make([]bool, n+1) // true: queued
			for i := range kinds {
				kinds[i] = rng.IntN(3) == 0
			}
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				var logLast uint64
				for s := uint64(1); s <= n; s++ {
					data := []byte(fmt.Sprint(s))
					if kinds[s] {
						if err := q.Push(ctx, Item{First: s, Last: s, LogBefore: logLast, Data: data}); err != nil {
							t.Error(err)
							return
						}
						continue
					}
					if err := lg.Append(ctx, seglog.Entry{First: s, Last: s, Data: data}, false); err != nil {
						t.Error(err)
						return
					}
					logLast = s
					if rng.IntN(50) == 0 {
						time.Sleep(time.Millisecond)
					}
				}
			}()
			var got uint64
			mctx, stop := context.WithCancel(ctx)
			defer stop()
			err = Merge(mctx, lg, q, 1, func(e Entry) error {
				if e.First != got+1 {
					return fmt.Errorf("got %d..%d after %d", e.First, e.Last, got)
				}
				if e.FromLog == kinds[e.First] {
					return fmt.Errorf("seq %d came from the wrong source (log=%v)", e.First, e.FromLog)
				}
				if string(e.Data) != fmt.Sprint(e.First) {
					return fmt.Errorf("seq %d carries %q", e.First, e.Data)
				}
				got = e.Last
				if got == n {
					stop()
				}
				return nil
			})
			if !errors.Is(err, context.Canceled) || got != n {
				t.Fatalf("merge: %v (through %d)", err, got)
			}
			wg.Wait()
			if q.Len() != 0 {
				t.Fatalf("%d items left in the queue", q.Len())
			}
		})
	}
}

// Items the receiver already has (before from) are dropped; log entries
// before from are skipped by the reader.
func TestMergeFromSkipsOld(t *testing.T) {
	lg, err := seglog.Open(t.TempDir(), seglog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer lg.Close()
	ctx := context.Background()
	q := NewQueue(1 << 20)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(lg.Append(ctx, seglog.Entry{First: 1, Last: 2, Data: []byte("a")}, false))
	must(q.Push(ctx, Item{First: 3, Last: 4, LogBefore: 2, Data: []byte("b")}))
	must(lg.Append(ctx, seglog.Entry{First: 5, Last: 5, Data: []byte("c")}, false))
	must(q.Push(ctx, Item{First: 6, Last: 7, LogBefore: 5, Data: []byte("d")}))
	var seen []uint64
	stop := errors.New("stop")
	err = Merge(ctx, lg, q, 5, func(e Entry) error {
		seen = append(seen, e.First)
		if e.Last == 7 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Fatal(err)
	}
	if fmt.Sprint(seen) != "[5 6]" {
		t.Fatalf("handed on %v, want [5 6]", seen)
	}
}

// A failed emit leaves its item queued: the caller decides what it means.
func TestMergeKeepsItemOnFailedEmit(t *testing.T) {
	lg, err := seglog.Open(t.TempDir(), seglog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer lg.Close()
	q := NewQueue(1 << 20)
	if !q.TryPush(Item{First: 1, Last: 1, Data: []byte("x")}) {
		t.Fatal("push refused on an empty queue")
	}
	boom := errors.New("link down")
	if err := Merge(context.Background(), lg, q, 1, func(Entry) error { return boom }); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if q.Len() != 1 || q.Bytes() != 1 {
		t.Fatalf("queue holds %d items, %d bytes after a failed emit", q.Len(), q.Bytes())
	}
	if q.Reset() != 1 || q.Len() != 0 {
		t.Fatal("reset did not drop the item")
	}
}

func TestQueueBound(t *testing.T) {
	q := NewQueue(10)
	if !q.TryPush(Item{Data: make([]byte, 25)}) {
		t.Fatal("an empty queue must take an item larger than its bound")
	}
	if q.TryPush(Item{Data: make([]byte, 1)}) {
		t.Fatal("a full queue took more")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := q.Push(ctx, Item{Data: make([]byte, 1)}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("push into a full queue: %v", err)
	}
	q.Pop()
	if !q.TryPush(Item{Data: make([]byte, 10)}) {
		t.Fatal("room after pop refused")
	}
}

// Queues sharing a budget hold no more than it together: a full budget
// refuses a batch even to a queue with room of its own, pops and resets
// give the room back, and an empty budget takes any one batch.
func TestSharedBudget(t *testing.T) {
	b := NewBudget(10)
	q1, q2 := NewSharedQueue(8, b), NewSharedQueue(8, b)
	if !q1.TryPush(Item{Data: make([]byte, 6)}) {
		t.Fatal("an empty budget refused a batch")
	}
	if b.Fits(5) || q2.TryPush(Item{Data: make([]byte, 5)}) {
		t.Fatal("a second queue went past the shared budget (6 + 5 > 10)")
	}
	if !b.Fits(4) || !q2.TryPush(Item{Data: make([]byte, 4)}) {
		t.Fatal("room left in the budget refused")
	}
	if b.Used() != 10 {
		t.Fatalf("budget used %d, want 10", b.Used())
	}
	q1.Pop()
	if b.Used() != 4 {
		t.Fatalf("after a pop the budget holds %d, want 4", b.Used())
	}
	if q2.Reset() != 1 || b.Used() != 0 {
		t.Fatalf("after a reset the budget holds %d, want 0", b.Used())
	}
	if !b.Fits(100) || !q1.TryPush(Item{Data: make([]byte, 100)}) {
		t.Fatal("an empty budget must take a batch larger than itself")
	}
	q1.Pop()
	var unshared *Budget
	if !unshared.Fits(1 << 40) {
		t.Fatal("a nil budget bounds nothing")
	}
}
