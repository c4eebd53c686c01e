package seglog

import (
	"context"
	"sync"
	"testing"
	"time"
)

// Everything published by the committer must already be durable in the
// log, and the last commit must be published.
func TestCommitterPublishesOnlyDurable(t *testing.T) {
	l, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var published uint64
	var bad error
	c := l.NewCommitter(ctx, func(seq uint64, _ bool, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			bad = err
			return
		}
		if seq < published {
			t.Errorf("published %d after %d", seq, published)
		}
		// Every third seq was passed on without the log: the newest log
		// entry at or below seq must be durable.
		logged := seq
		if logged%3 == 0 {
			logged--
		}
		if l.Stats().DurableSeq < logged {
			t.Errorf("published %d with the log durable through %d", seq, l.Stats().DurableSeq)
		}
		published = seq
	})
	const n = 500
	for s := uint64(1); s <= n; s++ {
		if s%3 == 0 {
			c.Commit(s, false) // passed on without the log
			continue
		}
		if err := l.Append(ctx, Entry{First: s, Last: s, Data: make([]byte, 1000)}, false); err != nil {
			t.Fatal(err)
		}
		c.Commit(s, true)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		p := published
		mu.Unlock()
		if p == n || time.Now().After(deadline) {
			if p != n {
				t.Fatalf("published through %d of %d", p, n)
			}
			break
		}
		time.Sleep(time.Millisecond)
	}
	if bad != nil {
		t.Fatal(bad)
	}
	cancel()
	c.Wait()
}
