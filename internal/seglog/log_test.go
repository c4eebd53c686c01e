package seglog

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRoundTripAcrossSegments(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 64 << 10}
	l := mustOpen(t, dir, opts)
	rng := rand.New(rand.NewPCG(1, 2))
	es := genEntries(rng, 0, 600, 20<<10)
	// One entry larger than a whole segment gets a segment of its own.
	big := es[300].Last + 1
	es = append(es[:301:301], append([]Entry{{First: big, Last: big, Data: payload(big, 200<<10)}},
		genEntries(rng, big+1, 299, 20<<10)...)...)

	// A reader made before anything is appended follows the writer.
	early := l.NewReader(0)
	earlyGot := make(chan []Entry, 1)
	go func() { earlyGot <- readN(t, early, len(es)) }()

	appendAll(t, l, es[:400], false)
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	appendAll(t, l, es[400:], true)

	sameEntries(t, <-earlyGot, es)
	early.Close()

	// Readers made afterwards, from the start and from the middle.
	r := l.NewReader(0)
	sameEntries(t, readN(t, r, len(es)), es)
	r.Close()
	mid := es[250].Last // entries with Last >= mid
	r = l.NewReader(mid)
	sameEntries(t, readN(t, r, len(es)-250), es[250:])
	r.Close()
	// From inside an entry's range: that entry is included.
	r = l.NewReader(es[100].First + (es[100].Last-es[100].First)/2)
	sameEntries(t, readN(t, r, len(es)-100), es[100:])
	r.Close()

	var want int64
	for _, e := range es {
		want += headerSize + int64(len(e.Data))
	}
	st := l.Stats()
	if st.Bytes != want || !filesHold(t, dir, st.Bytes) {
		t.Fatalf("Bytes = %d, want %d (files hold %d)", st.Bytes, want, dirBytes(t, dir))
	}
	if st.Entries != int64(len(es)) || st.FirstSeq != es[0].First || st.LastSeq != es[len(es)-1].Last ||
		st.DurableSeq != st.LastSeq {
		t.Fatalf("Stats = %+v", st)
	}
	if st.Segments < 10 || st.Segments != len(segmentFiles(t, dir)) {
		t.Fatalf("Segments = %d, files %d: want several", st.Segments, len(segmentFiles(t, dir)))
	}
	for _, p := range segmentFiles(t, dir) {
		fi, _ := os.Stat(p)
		if fi.Size() > opts.SegmentSize && fi.Size() != headerSize+200<<10 {
			t.Errorf("%s: %d bytes, above segment size", p, fi.Size())
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopen: same entries, same stats, and appending carries on.
	l = mustOpen(t, dir, opts)
	defer l.Close()
	if got := l.Stats(); got != st {
		t.Fatalf("after reopen Stats = %+v, want %+v", got, st)
	}
	sameEntries(t, readAllEntries(t, l), es)
	last := es[len(es)-1].Last
	if err := l.Append(context.Background(), Entry{First: last, Last: last + 1}, false); !errors.Is(err, ErrOrder) {
		t.Fatalf("append at last seq after reopen: %v, want ErrOrder", err)
	}
	more := genEntries(rng, last+1, 50, 8<<10)
	appendAll(t, l, more, true)
	sameEntries(t, readAllEntries(t, l), append(es, more...))
}

func TestSegmentsNamedByFirstSeq(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, Options{SegmentSize: 100})
	defer l.Close()
	appendAll(t, l, []Entry{{First: 0, Last: 0, Data: make([]byte, 80)}, {First: 7, Last: 9, Data: make([]byte, 80)}, {First: 12, Last: 12}}, false)
	var names []string
	for _, p := range segmentFiles(t, dir) {
		names = append(names, filepath.Base(p))
	}
	// 112+32 bytes would pass 100, so the third entry rolls too.
	want := "00000000000000000000.seg 00000000000000000007.seg 00000000000000000012.seg"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("segment files %q, want %q", got, want)
	}
}

func TestAppendValidates(t *testing.T) {
	l := mustOpen(t, t.TempDir(), Options{})
	defer l.Close()
	ctx := context.Background()
	if err := l.Append(ctx, Entry{First: 5, Last: 4}, false); !errors.Is(err, ErrOrder) {
		t.Fatalf("first > last: %v", err)
	}
	if err := l.Append(ctx, Entry{First: 0, Last: 0}, true); err != nil {
		t.Fatalf("seq 0 on an empty log: %v", err)
	}
	if err := l.Append(ctx, Entry{First: 0, Last: 3}, false); !errors.Is(err, ErrOrder) {
		t.Fatalf("repeated seq: %v", err)
	}
	if err := l.Append(ctx, Entry{First: 1, Last: 3}, false); err != nil {
		t.Fatal(err)
	}
	if err := l.TryAppend(Entry{First: 3, Last: 3}, false); !errors.Is(err, ErrOrder) {
		t.Fatalf("overlapping range: %v", err)
	}
	if st := l.Stats(); st.LastSeq != 3 || st.Entries != 2 || st.DurableSeq != 0 {
		t.Fatalf("Stats = %+v", st)
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.DurableSeq != 3 {
		t.Fatalf("after Sync DurableSeq = %d, want 3", st.DurableSeq)
	}
}

func TestTrimThrough(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, Options{SegmentSize: 4 << 10})
	defer l.Close()
	es := genEntries(rand.New(rand.NewPCG(3, 4)), 1, 200, 1<<10)
	appendAll(t, l, es, false)
	before := l.Stats()

	// A reader parked in the oldest segment.
	r := l.NewReader(0)
	defer r.Close()
	readN(t, r, 1)

	cut := es[120].Last
	if err := l.TrimThrough(cut); err != nil {
		t.Fatal(err)
	}
	st := l.Stats()
	if st.Segments >= before.Segments || !filesHold(t, dir, st.Bytes) || st.Segments != len(segmentFiles(t, dir)) {
		t.Fatalf("after trim Stats = %+v (before %+v), files hold %d bytes in %d", st, before, dirBytes(t, dir), len(segmentFiles(t, dir)))
	}
	// Whole segments only: the oldest entry held is at or before the cut,
	// and nothing after the cut is gone.
	if st.FirstSeq > cut+1 {
		t.Fatalf("FirstSeq %d: trimmed past %d", st.FirstSeq, cut)
	}
	held := readAllEntries(t, l)
	if held[len(held)-1].Last != es[len(es)-1].Last || held[0].First != st.FirstSeq {
		t.Fatalf("held entries [%d..%d], stats %+v", held[0].First, held[len(held)-1].Last, st)
	}
	// The parked reader returns what it had already buffered of its
	// trimmed segment, then skips to the oldest segment still held and
	// misses nothing from there on.
	idx := map[uint64]int{}
	for i, e := range es {
		idx[e.First] = i
	}
	prev := 0
	for i := 0; ; i++ {
		e := readN(t, r, 1)[0]
		j, ok := idx[e.First]
		if !ok || j <= prev {
			t.Fatalf("reader returned [%d,%d] after entry %d", e.First, e.Last, prev)
		}
		if j != prev+1 && (e.First != st.FirstSeq || es[prev].Last > cut) {
			t.Fatalf("reader jumped from [%d,%d] to [%d,%d] (oldest held %d)", es[prev].First, es[prev].Last, e.First, e.Last, st.FirstSeq)
		}
		prev = j
		if prev == len(es)-1 {
			if e.First == held[0].First {
				t.Fatal("reader never skipped the trimmed entries")
			}
			t.Logf("reader got %d entries after the trim", i+1)
			break
		}
	}

	// Trimming everything keeps the active segment: no file churn when the
	// consumer keeps up.
	if err := l.TrimThrough(es[len(es)-1].Last); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Segments != 1 || st.LastSeq != es[len(es)-1].Last {
		t.Fatalf("after trimming all: %+v", st)
	}
}

func TestReaderWaitsAndCloseUnblocks(t *testing.T) {
	l := mustOpen(t, t.TempDir(), Options{})
	r := l.NewReader(10)
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := r.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next on empty log: %v", err)
	}
	// Entries below from are skipped, even when they come later.
	appendAll(t, l, []Entry{{First: 1, Last: 9, Data: payload(1, 10)}, {First: 10, Last: 10, Data: payload(10, 3)}}, false)
	if e := readN(t, r, 1)[0]; e.First != 10 {
		t.Fatalf("got [%d,%d], want first 10", e.First, e.Last)
	}
	done := make(chan error, 1)
	go func() {
		_, err := r.Next(context.Background())
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Next after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Next")
	}
	if err := l.Append(context.Background(), Entry{First: 11, Last: 11}, false); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Next(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next on a closed reader: %v", err)
	}
}

func TestOpenLocksDirectory(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, Options{})
	if _, err := Open(dir, Options{Logger: testLogger(t)}); err == nil {
		t.Fatal("second Open of the same directory succeeded")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, dir, Options{})
	l.Close()
}
