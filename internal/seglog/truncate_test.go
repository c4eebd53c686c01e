package seglog

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
)

func TestTruncateFrom(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 32 << 10}
	l := mustOpen(t, dir, opts)
	rng := rand.New(rand.NewPCG(3, 4))
	es := genEntries(rng, 1, 300, 4<<10)
	appendAll(t, l, es, true)
	segsBefore := l.Stats().Segments
	if segsBefore < 4 {
		t.Fatalf("want several segments, have %d", segsBefore)
	}

	// An entry straddling the cut: refused, nothing changes.
	var straddle Entry
	for _, e := range es[100:] {
		if e.Last > e.First {
			straddle = e
			break
		}
	}
	if straddle.Last == 0 {
		t.Fatal("no multi-seq entry generated")
	}
	if err := l.TruncateFrom(straddle.First + 1); !errors.Is(err, ErrOrder) {
		t.Fatalf("cut inside entry %d..%d: %v, want ErrOrder", straddle.First, straddle.Last, err)
	}
	sameEntries(t, readAllEntries(t, l), es)

	// Cut in the middle of a segment: entries from k on go, from disk too.
	k := 150
	cut := es[k].First
	if err := l.TruncateFrom(cut); err != nil {
		t.Fatal(err)
	}
	st := l.Stats()
	if st.LastSeq != es[k-1].Last || st.DurableSeq > st.LastSeq || st.Entries != int64(k) || st.Segments >= segsBefore {
		t.Fatalf("after cut Stats = %+v, want LastSeq %d and %d entries in fewer than %d segments", st, es[k-1].Last, k, segsBefore)
	}
	if st.Bytes != dirBytes(t, dir) {
		t.Fatalf("Bytes = %d, files hold %d", st.Bytes, dirBytes(t, dir))
	}
	sameEntries(t, readAllEntries(t, l), es[:k])
	// Appends resume from the cut, and everything survives a reopen.
	more := genEntries(rng, cut, 40, 4<<10)
	appendAll(t, l, more, true)
	want := append(append([]Entry(nil), es[:k]...), more...)
	sameEntries(t, readAllEntries(t, l), want)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, dir, opts)
	sameEntries(t, readAllEntries(t, l), want)

	// A cut at a segment's first entry removes the segment file; a cut
	// below everything empties the log, and appends resume at the cut.
	if err := l.TruncateFrom(want[0].First); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Entries != 0 || st.Segments != 0 || st.LastSeq != want[0].First-1 || dirBytes(t, dir) != 0 {
		t.Fatalf("after emptying: Stats %+v, files %d bytes", st, dirBytes(t, dir))
	}
	if err := l.Append(context.Background(), Entry{First: want[0].First - 1, Last: want[0].First - 1}, true); !errors.Is(err, ErrOrder) {
		t.Fatalf("append below the cut: %v, want ErrOrder", err)
	}
	again := genEntries(rng, want[0].First, 10, 1<<10)
	appendAll(t, l, again, true)
	sameEntries(t, readAllEntries(t, l), again)
	// A cut above the last entry changes nothing.
	if err := l.TruncateFrom(again[len(again)-1].Last + 1); err != nil {
		t.Fatal(err)
	}
	sameEntries(t, readAllEntries(t, l), again)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}
