package journal

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// checkPoints checks views of every disk at a spread of points against the
// model built from ops.
func checkPoints(t *testing.T, j *Journal, sizes []int64, ops []op, points []uint64) {
	t.Helper()
	slices.Sort(points)
	m := newModel(sizes)
	k := 0
	for _, p := range points {
		for k < len(ops) && ops[k].seq <= p {
			applyModel(m, ops[k])
			k++
		}
		for d := range sizes {
			checkView(t, j, d, p, m[d], "")
		}
	}
}

func spreadPoints(ops []op, n int, rng *rand.Rand) []uint64 {
	pts := []uint64{0, ops[len(ops)-1].seq}
	for range n {
		pts = append(pts, ops[rng.IntN(len(ops))].seq+uint64(rng.IntN(2)))
	}
	return pts
}

func TestReopen(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 4))
	r := newRig(t, smallSizes, Options{SegmentSize: 512 << 10})
	ops := genOps(seed, smallSizes, 500, 1)
	r.applyAll(ops)
	before := r.j.Stats()
	points := spreadPoints(ops, 12, rng)
	checkPoints(t, r.j, smallSizes, ops, points)
	r.close()
	r.openReplicas()
	r.open()
	after := r.j.Stats()
	if after.LastSeq != before.LastSeq || after.LastSeq < lastDataSeq(ops) || after.Records != before.Records || after.Bytes != before.Bytes || after.Segments != before.Segments {
		t.Fatalf("stats before close %+v, after reopen %+v", before, after)
	}
	if after.OldestSeq != 0 {
		t.Fatalf("OldestSeq %d after reopen, nothing was dropped", after.OldestSeq)
	}
	checkPoints(t, r.j, smallSizes, ops, points)
	// Apply goes on after the reopen, in the same segments' chain.
	more := genOps(seed+1, smallSizes, 200, ops[len(ops)-1].seq+1)
	r.applyAll(more)
	all := append(append([]op{}, ops...), more...)
	checkPoints(t, r.j, smallSizes, all, spreadPoints(all, 12, rng))
}

// lastFinal returns the seq of the last record with the final flag in the
// segment bytes b (after its header), or prev if there is none.
func lastFinal(b []byte, prev uint64) uint64 {
	for off := segHeaderSize; off < len(b); {
		rec, n, err := DecodeRecord(b[off:], 4096)
		if err != nil {
			break
		}
		if rec.Final {
			prev = rec.Seq
		}
		off += n
	}
	return prev
}

// TestCrashTruncate cuts the newest segment at random offsets, as a crash
// mid-append would, and checks that Open recovers to the last intact
// record, that views up to it are exact, and that replaying from there
// (with the apply loop's skip rule) gives exact views everywhere.
func TestCrashTruncate(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 5))
	r := newRig(t, smallSizes, Options{SegmentSize: 512 << 10})
	ops := genOps(seed, smallSizes, 600, 1)
	r.applyAll(ops)
	r.close()
	names, _ := filepath.Glob(filepath.Join(r.journalDir(), "*.ujl"))
	slices.Sort(names)
	lastSeg := names[len(names)-1]
	st, err := os.Stat(lastSeg)
	if err != nil {
		t.Fatal(err)
	}
	// Only the two newest segments can change (the newest is cut, the one
	// before becomes active again if the newest loses its header), so only
	// they are restored between cuts.
	keep := names[max(0, len(names)-2):]
	pristine := make(map[string][]byte)
	for _, n := range keep {
		if pristine[n], err = os.ReadFile(n); err != nil {
			t.Fatal(err)
		}
	}
	var beforeLast uint64
	for _, n := range names[:len(names)-1] {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		beforeLast = lastFinal(b, beforeLast)
	}
	cuts := []int64{0, 1, segHeaderSize - 1, segHeaderSize, segHeaderSize + 1, st.Size() - 1, st.Size()}
	for range 6 {
		cuts = append(cuts, segHeaderSize+rng.Int64N(st.Size()-segHeaderSize))
	}
	for _, cut := range cuts {
		now, _ := filepath.Glob(filepath.Join(r.journalDir(), "*.ujl"))
		for _, n := range now {
			if n > lastSeg {
				os.Remove(n)
			}
		}
		for n, b := range pristine {
			if n == lastSeg {
				b = b[:cut]
			}
			if err := os.WriteFile(n, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		// Garbage after the cut, like a torn write of a record's start.
		if cut > segHeaderSize && cut < st.Size() && rng.IntN(2) == 0 {
			f, _ := os.OpenFile(lastSeg, os.O_WRONLY|os.O_APPEND, 0)
			f.Write([]byte{0x53, 0x42, 0x55, 0x4a, 1, 1, 0})
			f.Close()
		}
		// What LastSeq must be: the last complete call in the segments
		// before the newest, or in what is left of the newest.
		want := lastFinal(pristine[lastSeg][:cut], beforeLast)
		if cut >= segHeaderSize {
			// The newest segment's header says every call below its base
			// was complete and synced before it was created.
			want = max(want, segBase(t, lastSeg)-1)
		}
		// The replica holds exactly what was applied up to the journal's
		// durable point: the write-ahead rule allows nothing more.
		writeReplicas(t, r, modelAt(smallSizes, ops, want))
		r.openReplicas()
		r.open()
		if got := r.j.LastSeq(); got != want {
			t.Fatalf("cut at %d: LastSeq %d, want %d", cut, got, want)
		}
		var upTo []op
		for _, o := range ops {
			if o.seq <= want {
				upTo = append(upTo, o)
			}
		}
		if len(upTo) > 0 {
			checkPoints(t, r.j, smallSizes, upTo, spreadPoints(upTo, 3, rng))
		}
		// Replay: what the journal has is not preserved again.
		a := r.j.NewApplier(8)
		for _, o := range ops {
			if o.seq > want {
				r.apply(a, o)
			}
		}
		if err := a.Flush(); err != nil {
			t.Fatal(err)
		}
		checkPoints(t, r.j, smallSizes, ops, spreadPoints(ops, 4, rng))
		r.close()
	}
}

func segBase(t *testing.T, path string) uint64 {
	b, ok := parseSegName(filepath.Base(path))
	if !ok {
		t.Fatalf("bad segment name %s", path)
	}
	return b
}

func writeReplicas(t *testing.T, r *rig, m [][]byte) {
	t.Helper()
	for i := range r.sizes {
		if err := os.WriteFile(r.replicaPath(i), m[i], 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCorruption(t *testing.T) {
	r := newRig(t, smallSizes, Options{SegmentSize: 256 << 10})
	ops := genOps(11, smallSizes, 300, 1)
	r.applyAll(ops)
	r.close()
	names, _ := filepath.Glob(filepath.Join(r.journalDir(), "*.ujl"))
	slices.Sort(names)
	if len(names) < 3 {
		t.Fatalf("want several segments, have %d", len(names))
	}
	pristine := t.TempDir()
	copyDir(t, r.journalDir(), pristine)
	sealed := names[1]
	b, _ := os.ReadFile(sealed)
	var h recHead
	var err error
	flip := func(path string, off int64) {
		t.Helper()
		os.RemoveAll(r.journalDir())
		copyDir(t, pristine, r.journalDir())
		b, _ := os.ReadFile(path)
		b[off] ^= 0x40
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		what string
		path string
		off  int64
	}{
		{"segment header of a sealed segment", sealed, 9},
		{"record header of a sealed segment", sealed, segHeaderSize + 9},
		{"second record of the newest segment", names[len(names)-1], -1},
	} {
		off := c.off
		if off < 0 {
			// A record in the middle of the newest segment, followed by
			// intact ones: damage, not a torn tail.
			nb, _ := os.ReadFile(c.path)
			_, n, err := DecodeRecord(nb[segHeaderSize:], 4096)
			if err != nil || segHeaderSize+n >= len(nb) {
				t.Skip("newest segment has a single record")
			}
			off = int64(segHeaderSize + n + 3)
		}
		flip(c.path, off)
		r.openReplicas()
		j, err := Open(r.journalDir(), r.disks, r.opts)
		var ce *CorruptError
		if err == nil || !errors.Is(err, ErrCorrupt) || !errors.As(err, &ce) || ce.Segment != c.path {
			if j != nil {
				j.Close()
			}
			t.Fatalf("%s: Open returned %v, want ErrCorrupt naming %s", c.what, err, c.path)
		}
		t.Logf("%s: %v", c.what, err)
		for _, d := range r.replica {
			d.Close()
		}
	}
	// Block data of a sealed segment is not read at Open; a view reading it
	// finds the damage and says so rather than returning it.
	var (
		rec     Record
		recOff  int64
		stored  = -1
		content = b[segHeaderSize:]
	)
	for off := 0; off < len(content) && stored < 0; {
		var n int
		rec, n, err = DecodeRecord(content[off:], 4096)
		if err != nil {
			t.Fatal(err)
		}
		for i, blk := range rec.Blocks {
			if blk != nil {
				stored = i
				break
			}
		}
		recOff = int64(segHeaderSize + off)
		off += n
	}
	if stored < 0 {
		t.Fatal("no stored block in a whole segment")
	}
	h, err = parseRecHead(b[recOff:])
	if err != nil {
		t.Fatal(err)
	}
	// The first stored block's data starts after the header, the bitmap
	// and its checksum.
	flip(sealed, recOff+int64(headLen(h.count))+blockCRCSize+100)
	r.openReplicas()
	r.open()
	v, err := r.j.OpenView(rec.Disk, rec.Seq-1, "")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	buf := make([]byte, 4096)
	_, err = v.ReadAt(buf, (rec.FirstBlock+int64(stored))*4096)
	var ce *CorruptError
	if !errors.Is(err, ErrCorrupt) || !errors.As(err, &ce) || ce.Segment != sealed {
		t.Fatalf("view read of a damaged before-image: %v, want ErrCorrupt naming %s", err, sealed)
	}
	t.Logf("view read: %v", err)
}

// A crash between creating a segment and writing its first record leaves
// an empty newest segment named for a seq that need not come again (a
// relayed copy is re-read under a new seq). The next record must not go
// into that segment under the old name: the journal would then refuse to
// open ("first record has seq X, segment base is Y"), as it once did in
// the kill -9 end-to-end test.
func TestEmptyNewestSegmentTakesAnotherSeq(t *testing.T) {
	r := newRig(t, smallSizes, Options{SegmentSize: 64 << 10})
	var seq uint64
	for seq = 1; ; seq++ {
		if err := r.j.Preserve(seq, 0, int64(seq%16)*64<<10, 64<<10); err != nil {
			t.Fatal(err)
		}
		if err := r.j.Sync(); err != nil {
			t.Fatal(err)
		}
		names, _ := filepath.Glob(filepath.Join(r.journalDir(), "*.ujl"))
		if len(names) >= 3 {
			break
		}
	}
	r.close()
	names, _ := filepath.Glob(filepath.Join(r.journalDir(), "*.ujl"))
	slices.Sort(names)
	newest := names[len(names)-1]
	// The newest segment keeps only its header: its record was lost.
	if err := os.Truncate(newest, segHeaderSize); err != nil {
		t.Fatal(err)
	}
	r.openReplicas()
	r.open()
	next := seq + 40
	if err := r.j.Preserve(next, 1, 0, 8192); err != nil {
		t.Fatal(err)
	}
	if err := r.j.Sync(); err != nil {
		t.Fatal(err)
	}
	r.close()
	r.openReplicas()
	r.open() // fails on a base/seq mismatch
	if got := r.j.LastSeq(); got != next {
		t.Fatalf("last seq after reopening %d, want %d", got, next)
	}
	now, _ := filepath.Glob(filepath.Join(r.journalDir(), "*.ujl"))
	slices.Sort(now)
	if len(now) != len(names) || filepath.Base(now[len(now)-1]) != segName(next) {
		t.Fatalf("segments after the rebase: %v (before: %v)", now, names)
	}
}
