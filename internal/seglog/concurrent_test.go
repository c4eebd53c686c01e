package seglog

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// One appender, two readers following it, a trimmer trimming behind the
// slower reader, and a goroutine polling Stats and Sync: run with -race.
func TestConcurrentAppendReadTrim(t *testing.T) {
	const maxBytes = 256 << 10
	dir := t.TempDir()
	l := mustOpen(t, dir, Options{MaxBytes: maxBytes})
	defer l.Close()
	n := 3000
	if testing.Short() {
		n = 500
	}
	es := genEntries(rand.New(rand.NewPCG(8, 9)), 1, n, 8<<10)
	lastSeq := es[len(es)-1].Last

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	var progress [2]atomic.Uint64 // Last of the newest entry each reader has

	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(10, 11))
		for _, e := range es {
			if err := l.Append(ctx, e, rng.IntN(10) == 0); err != nil {
				errs <- err
				return
			}
		}
	}()
	for i := range progress {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := l.NewReader(0)
			defer r.Close()
			for j, want := range es {
				e, err := r.Next(ctx)
				if err != nil {
					errs <- err
					return
				}
				if e.First != want.First || e.Last != want.Last {
					t.Errorf("reader %d entry %d: got [%d,%d], want [%d,%d]", i, j, e.First, e.Last, want.First, want.Last)
					return
				}
				checkPayload(t, e)
				progress[i].Store(e.Last)
			}
		}()
	}
	stop := make(chan struct{})
	var aux sync.WaitGroup
	aux.Add(2)
	go func() { // trimmer
		defer aux.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			done := min(progress[0].Load(), progress[1].Load())
			// Readers hold back trimming, so that they never miss an entry.
			if done > 0 {
				if err := l.TrimThrough(done - 1); err != nil {
					errs <- err
					return
				}
			}
		}
	}()
	go func() { // observer
		defer aux.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Microsecond):
			}
			st := l.Stats()
			if st.Bytes > maxBytes || st.Bytes < 0 || st.DurableSeq > st.LastSeq {
				t.Errorf("Stats %+v break the bound %d", st, maxBytes)
			}
			if err := l.Sync(); err != nil && !errors.Is(err, ErrClosed) {
				errs <- err
				return
			}
		}
	}()
	wg.Wait()
	close(stop)
	aux.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Close cuts a reused active segment's old bytes: then the segment
	// files hold exactly what Stats counts (spares are not segments).
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.LastSeq != lastSeq || st.Bytes != dirBytes(t, dir) {
		t.Fatalf("final Stats %+v, files hold %d", st, dirBytes(t, dir))
	}
}

// Appenders on many goroutines with sync=true share fdatasyncs; whatever the
// interleaving, every acknowledged entry is durable and in order.
func TestConcurrentSyncedAppenders(t *testing.T) {
	l := mustOpen(t, t.TempDir(), Options{SegmentSize: 32 << 10})
	defer l.Close()
	var mu sync.Mutex
	next := uint64(1)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 40 {
				// Sequence numbers are handed out in the order appends are
				// made, as a caller must; the sync runs outside the lock.
				mu.Lock()
				seq := next
				next++
				err := l.Append(context.Background(), Entry{First: seq, Last: seq, Data: payload(seq, 1000)}, false)
				mu.Unlock()
				if err == nil {
					err = l.Sync()
				}
				if err != nil {
					t.Error(err)
					return
				}
				if d := l.Stats().DurableSeq; d < seq {
					t.Errorf("Sync returned with DurableSeq %d below %d", d, seq)
				}
			}
		}()
	}
	wg.Wait()
	got := readAllEntries(t, l)
	if len(got) != 320 {
		t.Fatalf("%d entries", len(got))
	}
	for i, e := range got {
		if e.First != uint64(i+1) {
			t.Fatalf("entry %d has seq %d", i, e.First)
		}
		checkPayload(t, e)
	}
}
