package capture

import (
	"context"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestTrackerConcurrent hammers every operation at once (run with -race).
// At the end it checks the incremental counters against a recount and, after
// a crash, that the writes left open are dirty.
func TestTrackerConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	const size = 32 << 20
	opts := smallOpts()
	opts.IdleClean = time.Millisecond
	opts.journalSize = 8192
	tr := openT(t, path, size, opts)
	drain(t, tr)
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var begun atomic.Int64
	leftOpen := make([][]rg, 4)
	for w := range 4 {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(w), 7))
			var open []rg
			for {
				select {
				case <-stop:
					leftOpen[w] = open
					return
				default:
				}
				if len(open) < 16 && rnd.IntN(2) == 0 {
					n := 1 + rnd.Int64N(300<<10)
					r := rg{rnd.Int64N(size - n), n}
					if err := tr.BeginWrite(ctx, r.off, r.n); err != nil {
						t.Error(err)
						return
					}
					begun.Add(1)
					open = append(open, r)
				} else if len(open) > 0 {
					r := open[0]
					open = open[1:]
					if rnd.IntN(4) == 0 {
						tr.MarkDirty(r.off, r.n)
					}
					tr.EndWrite(r.off, r.n)
				}
			}
		})
	}
	wg.Go(func() {
		var taken []rg
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if off, n, ok := tr.TakeDirty(64 << 10); ok {
				taken = append(taken, rg{off, n})
			}
			if len(taken) > 4 {
				tr.Complete(taken[0].off, taken[0].n)
				taken = taken[1:]
			}
			if i%500 == 0 {
				tr.Requeue()
				taken = nil
			}
			_ = tr.DirtyBytes()
			_ = tr.InflightBytes()
		}
	})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			if err := tr.Persist(); err != nil {
				t.Error(err)
			}
			if err := tr.Clean(time.Now()); err != nil {
				t.Error(err)
			}
		}
	})
	// A caller giving up while waiting for a commit must not leak pending.
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			if err := tr.BeginWrite(cctx, 0, size); err == nil {
				tr.EndWrite(0, size)
			} else if !errors.Is(err, context.Canceled) {
				t.Error(err)
			}
		}
	})
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("%d writes begun", begun.Load())

	tr.mu.Lock()
	c := [4]int64{tr.nDirty, tr.nInflight, tr.nUnion, tr.nTakeable}
	tr.recount()
	if r := [4]int64{tr.nDirty, tr.nInflight, tr.nUnion, tr.nTakeable}; r != c {
		t.Errorf("incremental counters %v, recount %v", c, r)
	}
	tr.mu.Unlock()
	// Every pending count must equal the writes still open.
	want := make([]uint64, len(tr.ext))
	for _, open := range leftOpen {
		for _, r := range open {
			for e := r.off >> tr.geo.extentShift; e <= (r.off+r.n-1)>>tr.geo.extentShift; e++ {
				want[e]++
			}
		}
	}
	for e := range tr.ext {
		if got := tr.ext[e].Load() & pendingMask; got != want[e] {
			t.Fatalf("extent %d pending %d, want %d", e, got, want[e])
		}
	}

	crash(tr)
	tr = openT(t, path, size, opts)
	defer tr.Close()
	got := trackerBits(tr)
	m := newModel(tr.geo)
	for _, open := range leftOpen {
		for _, r := range open {
			lo, hi := m.blocks(r)
			for b := lo; b < hi; b++ {
				if !got[b] {
					t.Fatalf("block %d of an open write not dirty after crash", b)
				}
			}
		}
	}
}
