package journal

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func applyAll(t *testing.T, r *rig, ops []op) {
	t.Helper()
	a := r.j.NewApplier(8)
	for _, o := range ops {
		r.apply(a, o)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestPruneBySeq(t *testing.T) {
	r := newRig(t, smallSizes, Options{SegmentSize: 256 << 10})
	ops := genOps(21, smallSizes, 400, 1)
	applyAll(t, r, ops)
	before := r.j.Stats()
	if before.Segments < 4 {
		t.Fatalf("want several segments, have %d", before.Segments)
	}
	keep := ops[len(ops)/2].seq
	info, err := r.j.Prune(keep)
	if err != nil {
		t.Fatal(err)
	}
	after := r.j.Stats()
	t.Logf("Prune(%d): %+v; stats %+v -> %+v", keep, info, before, after)
	if info.DroppedSegments == 0 || after.Segments != before.Segments-info.DroppedSegments || after.Bytes != before.Bytes-info.DroppedBytes {
		t.Fatalf("Prune dropped %+v, stats went from %+v to %+v", info, before, after)
	}
	if info.OldestSeq >= keep || info.OldestSeq != after.OldestSeq || after.OldestSeq == 0 {
		t.Fatalf("OldestSeq %d after Prune(%d) (info %d)", after.OldestSeq, keep, info.OldestSeq)
	}
	// Points from keep-1 on are still exact; older ones are refused.
	if _, err := r.j.OpenView(0, after.OldestSeq-1, ""); !errors.Is(err, ErrPointGone) {
		t.Fatalf("view below OldestSeq: %v, want ErrPointGone", err)
	}
	checkPoints(t, r.j, smallSizes, ops, []uint64{after.OldestSeq, keep - 1, keep, ops[len(ops)-1].seq})
	// Every dropped segment is gone from disk, and the index lets go of
	// its runs.
	names, _ := filepath.Glob(filepath.Join(r.journalDir(), "*.ujl"))
	if len(names) != after.Segments {
		t.Fatalf("%d segment files, stats say %d", len(names), after.Segments)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.j.Stats().IndexBytes >= before.IndexBytes && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := r.j.Stats().IndexBytes; got >= before.IndexBytes {
		t.Fatalf("index still %d bytes after dropping segments (was %d)", got, before.IndexBytes)
	}
	// The same holds after a reopen (OldestSeq is then derived from the
	// oldest segment kept, never lower than before).
	r.close()
	r.openReplicas()
	r.open()
	if got := r.j.OldestSeq(); got < after.OldestSeq || got >= keep {
		t.Fatalf("OldestSeq %d after reopen, was %d, keep %d", got, after.OldestSeq, keep)
	}
	checkPoints(t, r.j, smallSizes, ops, []uint64{keep - 1, keep, ops[len(ops)-1].seq})
	// Pruning everything keeps the newest segment.
	if _, err := r.j.Prune(^uint64(0)); err != nil {
		t.Fatal(err)
	}
	if st := r.j.Stats(); st.Segments != 1 {
		t.Fatalf("%d segments after pruning everything, want the active one", st.Segments)
	}
}

func TestViewPinsAgainstPrune(t *testing.T) {
	r := newRig(t, smallSizes, Options{SegmentSize: 256 << 10})
	ops := genOps(22, smallSizes, 400, 1)
	applyAll(t, r, ops[:200])
	pin := ops[50].seq
	v, err := r.j.OpenView(0, pin, filepath.Join(r.dir, "scratch"))
	if err != nil {
		t.Fatal(err)
	}
	applyAll(t, r, ops[200:])
	if st := r.j.Stats(); st.Pinned == 0 {
		t.Fatalf("stats with a view open: %+v, want Pinned > 0", st)
	}
	info, err := r.j.Prune(ops[300].seq)
	if err != nil {
		t.Fatal(err)
	}
	if info.OldestSeq > pin {
		t.Fatalf("Prune moved OldestSeq to %d past the open view at %d", info.OldestSeq, pin)
	}
	want := modelAt(smallSizes, ops, pin)[0]
	if got := readAll(t, v); string(got) != string(want) {
		t.Fatalf("pinned view after Prune: %s", firstDiff(got, want))
	}
	if v.Err() != nil {
		t.Fatalf("pinned view invalidated: %v", v.Err())
	}
	v.Close()
	// Once the view is closed the same Prune goes further.
	info2, err := r.j.Prune(ops[300].seq)
	if err != nil {
		t.Fatal(err)
	}
	if info2.OldestSeq <= pin || info2.DroppedSegments == 0 {
		t.Fatalf("Prune after the view closed: %+v", info2)
	}
}

func TestSpacePressure(t *testing.T) {
	const maxBytes = 2 << 20
	r := newRig(t, smallSizes, Options{MaxBytes: maxBytes})
	ops := genOps(23, smallSizes, 600, 1)
	applyAll(t, r, ops[:40])
	old, err := r.j.OpenView(0, ops[5].seq, filepath.Join(r.dir, "old"))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	applyAll(t, r, ops[40:])
	st := r.j.Stats()
	t.Logf("stats %+v", st)
	if st.Bytes > maxBytes+MaxPreserve {
		t.Fatalf("journal holds %d bytes, bound %d", st.Bytes, maxBytes)
	}
	var events []PruneInfo
	for len(r.j.Pruned()) > 0 {
		events = append(events, <-r.j.Pruned())
	}
	if len(events) == 0 {
		t.Fatal("no Pruned events under space pressure")
	}
	if last := events[len(events)-1]; last.OldestSeq != st.OldestSeq || last.DroppedSegments == 0 || last.DroppedBytes == 0 {
		t.Fatalf("last event %+v, stats %+v", last, st)
	}
	if !slices.IsSortedFunc(events, func(a, b PruneInfo) int { return int(a.OldestSeq) - int(b.OldestSeq) }) {
		t.Fatalf("events out of order: %+v", events)
	}
	// The view that needed dropped before-images fails, saying why; it never
	// returns the replica's newer content.
	buf := make([]byte, 64<<10)
	if _, err := old.ReadAt(buf, 0); !errors.Is(err, ErrViewInvalidated) {
		t.Fatalf("read of a view whose before-images were dropped: %v", err)
	} else {
		t.Logf("invalidated view: %v", err)
	}
	if _, err := old.WriteAt(buf[:10], 0); !errors.Is(err, ErrViewInvalidated) {
		t.Fatalf("write to an invalidated view: %v", err)
	}
	if err := old.Extents(t.Context(), func(int64, int64) error { return nil }); !errors.Is(err, ErrViewInvalidated) {
		t.Fatalf("extents of an invalidated view: %v", err)
	}
	// Points at or above OldestSeq are fine.
	checkPoints(t, r.j, smallSizes, ops, []uint64{st.OldestSeq, ops[len(ops)-1].seq})
	if _, err := r.j.OpenView(0, st.OldestSeq-1, ""); !errors.Is(err, ErrPointGone) {
		t.Fatalf("view below OldestSeq: %v", err)
	}
	// A view opened before the next drop at a point that survives it is
	// unaffected; one at a point it removes is invalidated.
	cur := r.j.OldestSeq()
	survivor, err := r.j.OpenView(0, ops[len(ops)-1].seq, "")
	if err != nil {
		t.Fatal(err)
	}
	defer survivor.Close()
	victim, err := r.j.OpenView(1, cur, "")
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close()
	more := genOps(24, smallSizes, 300, ops[len(ops)-1].seq+1)
	a := r.j.NewApplier(1)
	for i, o := range more {
		r.apply(a, o)
		if victim.Err() != nil {
			more = more[:i+1]
			break
		}
	}
	if victim.Err() == nil {
		t.Fatal("view at a dropped point still valid")
	}
	if err := survivor.Err(); err != nil {
		t.Fatalf("view at a kept point invalidated: %v", err)
	}
	all := append(append([]op{}, ops...), more...)
	want := modelAt(smallSizes, all, ops[len(ops)-1].seq)[0]
	if got := readAll(t, survivor); string(got) != string(want) {
		t.Fatalf("surviving view: %s", firstDiff(got, want))
	}
}

// TestDroppedSegmentComesBack: dropping is a plain unlink, so after a crash
// a dropped segment can reappear; Open must not let it extend the range of
// points (a later dropped segment may be missing).
func TestDroppedSegmentComesBack(t *testing.T) {
	r := newRig(t, smallSizes, Options{SegmentSize: 256 << 10})
	ops := genOps(25, smallSizes, 300, 1)
	applyAll(t, r, ops)
	names, _ := filepath.Glob(filepath.Join(r.journalDir(), "*.ujl"))
	slices.Sort(names)
	if len(names) < 4 {
		t.Fatalf("want several segments, have %d", len(names))
	}
	saved, err := os.ReadFile(names[0])
	if err != nil {
		t.Fatal(err)
	}
	// Drop the two oldest segments.
	if _, err := r.j.Prune(segBase(t, names[2])); err != nil {
		t.Fatal(err)
	}
	oldest := r.j.OldestSeq()
	r.close()
	// The first comes back, the second does not: a gap.
	if err := os.WriteFile(names[0], saved, 0o600); err != nil {
		t.Fatal(err)
	}
	r.openReplicas()
	r.open()
	if got := r.j.OldestSeq(); got < oldest {
		t.Fatalf("OldestSeq %d after a dropped segment came back, was %d", got, oldest)
	}
	if fileExists(names[0]) {
		t.Fatal("a segment outside the chain was kept")
	}
	if _, err := r.j.OpenView(0, 0, ""); !errors.Is(err, ErrPointGone) {
		t.Fatalf("view at 0: %v, want ErrPointGone", err)
	}
}
