package seglog

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBackpressure(t *testing.T) {
	const recLen = 1000
	dir := t.TempDir()
	// SegmentSize is lowered to MaxBytes/4 = one record per segment.
	l := mustOpen(t, dir, Options{MaxBytes: 4 * recLen})
	defer l.Close()
	entry := func(seq uint64) Entry { return Entry{First: seq, Last: seq, Data: payload(seq, recLen-headerSize)} }
	for seq := uint64(1); seq <= 4; seq++ {
		if err := l.TryAppend(entry(seq), false); err != nil {
			t.Fatalf("TryAppend %d: %v", seq, err)
		}
	}
	if st := l.Stats(); st.Bytes != 4*recLen || st.Segments != 4 {
		t.Fatalf("Stats %+v", st)
	}
	if err := l.TryAppend(entry(5), false); !errors.Is(err, ErrFull) {
		t.Fatalf("TryAppend on a full log: %v, want ErrFull", err)
	}
	if err := l.Append(context.Background(), Entry{First: 5, Last: 5, Data: make([]byte, 4*recLen)}, false); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("entry above MaxBytes: %v, want ErrTooLarge", err)
	}

	// A blocked Append returns once trimming frees space, and not before.
	done := make(chan error, 1)
	go func() { done <- l.Append(context.Background(), entry(5), true) }()
	select {
	case err := <-done:
		t.Fatalf("Append on a full log returned %v without waiting", err)
	case <-time.After(100 * time.Millisecond):
	}
	if st := l.Stats(); st.LastSeq != 4 {
		t.Fatalf("blocked append changed the log: %+v", st)
	}
	// A trim that covers no whole segment frees nothing: still blocked.
	if err := l.TrimThrough(0); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("Append returned %v after a trim that freed nothing", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := l.TrimThrough(1); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Append after trim: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Append still blocked after TrimThrough freed space")
	}
	if st := l.Stats(); st.Bytes != 4*recLen || st.FirstSeq != 2 || st.LastSeq != 5 || st.DurableSeq != 5 || !filesHold(t, dir, st.Bytes) {
		t.Fatalf("Stats %+v (files hold %d)", st, dirBytes(t, dir))
	}

	// Cancelling the context unblocks a waiting Append, which leaves no trace.
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- l.Append(ctx, entry(6), false) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Append: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancel did not unblock Append")
	}
	// So does Close.
	go func() { done <- l.Append(context.Background(), entry(6), false) }()
	time.Sleep(50 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Append blocked across Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Append")
	}
	l = mustOpen(t, dir, Options{MaxBytes: 4 * recLen})
	defer l.Close()
	if st := l.Stats(); st.LastSeq != 5 || st.Entries != 4 {
		t.Fatalf("after reopen %+v", st)
	}
}

// An entry nearly as large as MaxBytes fits only once the fully trimmed
// active segment is dropped to make room for it.
func TestBackpressureResetsTrimmedActiveSegment(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, Options{MaxBytes: 1000})
	defer l.Close()
	big := func(seq uint64) Entry { return Entry{First: seq, Last: seq, Data: payload(seq, 900-headerSize)} }
	if err := l.TryAppend(big(1), false); err != nil {
		t.Fatal(err)
	}
	if err := l.TryAppend(big(2), false); !errors.Is(err, ErrFull) {
		t.Fatalf("second big entry: %v, want ErrFull", err)
	}
	r := l.NewReader(0)
	defer r.Close()
	sameEntries(t, readN(t, r, 1), []Entry{big(1)})

	if err := l.TrimThrough(1); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Segments != 1 || st.Bytes != 900 {
		t.Fatalf("the active segment must survive trimming: %+v", st)
	}
	if err := l.TryAppend(big(2), true); err != nil {
		t.Fatalf("after trimming: %v", err)
	}
	if st := l.Stats(); st.Segments != 1 || st.Bytes != 900 || st.FirstSeq != 2 || !filesHold(t, dir, st.Bytes) {
		t.Fatalf("Stats %+v", st)
	}
	// The reader that sat at the end of the dropped segment carries on.
	sameEntries(t, readN(t, r, 1), []Entry{big(2)})
	// The sequence floor survives the reset.
	if err := l.TryAppend(big(2), false); !errors.Is(err, ErrOrder) {
		t.Fatalf("old seq after reset: %v", err)
	}
}
