package seglog

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func inode(t testing.TB, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func spareFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.spare"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// reusedFixture returns an open log whose active segment is a reused file
// holding fewer bytes of new records than of an older segment's, and the
// entries it holds.
func reusedFixture(t *testing.T, logger *slog.Logger) (string, *Log, []Entry) {
	t.Helper()
	dir := t.TempDir()
	l := mustOpen(t, dir, Options{SegmentSize: 64 << 10, Logger: logger})
	rng := rand.New(rand.NewPCG(7, 8))
	old := genEntries(rng, 1, 150, 4<<10) // several segments
	appendAll(t, l, old, true)
	segs := segmentFiles(t, dir)
	if len(segs) < 3 {
		t.Fatalf("fixture too small: %d segments", len(segs))
	}
	inodes := map[uint64]bool{}
	for _, p := range segs[:2] {
		inodes[inode(t, p)] = true
	}
	// The consumer has everything but the active segment.
	if err := l.TrimThrough(old[len(old)-1].Last); err != nil {
		t.Fatal(err)
	}
	if n := len(spareFiles(t, dir)); n != maxSpares {
		t.Fatalf("%d spare files after trimming %d segments, want %d", n, len(segs)-1, maxSpares)
	}
	// Fill the active segment, then a few small records in the next,
	// which must be one of the spares.
	var fresh []Entry
	seq := old[len(old)-1].Last + 1
	for len(segmentFiles(t, dir)) < 2 || len(fresh) < 3 {
		segsBefore := len(segmentFiles(t, dir))
		e := Entry{First: seq, Last: seq, Data: payload(seq, 2<<10)}
		appendAll(t, l, []Entry{e}, true)
		seq++
		if segsBefore == 1 && len(segmentFiles(t, dir)) == 2 {
			fresh = fresh[:0] // the roll happened with this entry
		}
		fresh = append(fresh, e)
	}
	active := segmentFiles(t, dir)[1]
	if !inodes[inode(t, active)] {
		t.Fatal("the new segment is a new file, not a reused spare")
	}
	fi, _ := os.Stat(active)
	if st := l.Stats(); fi.Size() <= int64(len(fresh))*(headerSize+2<<10) {
		t.Fatalf("reused segment of %d bytes holds no old bytes past its records (stats %+v)", fi.Size(), st)
	}
	return dir, l, fresh
}

func TestTrimmedSegmentsAreReused(t *testing.T) {
	dir, l, fresh := reusedFixture(t, testLogger(t))
	if n := len(spareFiles(t, dir)); n != maxSpares-1 {
		t.Fatalf("%d spares left after one was reused, want %d", n, maxSpares-1)
	}
	got := readAllEntries(t, l)
	// Everything from the first fresh entry's segment on is readable.
	sameEntries(t, got[len(got)-len(fresh):], fresh)
	for _, e := range got {
		checkPayload(t, e)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// A clean close cut the old bytes: reopening finds nothing to cut.
	logger, recs := newRecordingLogger()
	l2 := mustOpen(t, dir, Options{SegmentSize: 64 << 10, Logger: logger})
	defer l2.Close()
	sameEntries(t, readAllEntries(t, l2), got)
	for _, r := range recs() {
		if r.Level >= slog.LevelInfo && strings.Contains(r.Message, "cut") || strings.Contains(r.Message, "torn") {
			t.Fatalf("clean reopen logged %q %v", r.Message, recordAttrs(r))
		}
	}
	if n := len(spareFiles(t, dir)); n != maxSpares-1 {
		t.Fatalf("reopen kept %d spares, want %d", n, maxSpares-1)
	}
}

// A crash while the active segment is a reused file leaves an older
// segment's whole, valid records after the new ones: Open must end the
// segment there, not call them corruption, and not replay them.
func TestCrashInReusedSegment(t *testing.T) {
	_, l, fresh := reusedFixture(t, testLogger(t))
	defer l.Close()
	crashed := copyDir(t, l.dir) // what a kill -9 leaves: the files as they are

	logger, recs := newRecordingLogger()
	l2, err := Open(crashed, Options{SegmentSize: 64 << 10, Logger: logger})
	if err != nil {
		t.Fatalf("Open after a crash in a reused segment: %v", err)
	}
	got := readAllEntries(t, l2)
	sameEntries(t, got[len(got)-len(fresh):], fresh)
	if w := tornWarnings(recs()); len(w) != 0 {
		t.Errorf("old bytes reported as a torn tail: %v", w)
	}
	cut := false
	for _, r := range recs() {
		cut = cut || strings.Contains(r.Message, "old bytes of a reused segment")
	}
	if !cut {
		t.Error("Open did not report cutting the reused segment's old bytes")
	}
	l2.Close()

	// The same with the last new record torn: still only the tail goes,
	// though whole old records follow the damage.
	crashed = copyDir(t, l.dir)
	active := segmentFiles(t, crashed)[1]
	var lastOff int64
	for off, i := int64(0), 0; i < len(fresh); i++ {
		lastOff = off
		off += headerSize + int64(len(fresh[i].Data))
	}
	flipByte(t, active, lastOff+headerSize+100)
	l3, err := Open(crashed, Options{SegmentSize: 64 << 10, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open after a torn record in a reused segment: %v", err)
	}
	defer l3.Close()
	got = readAllEntries(t, l3)
	sameEntries(t, got[len(got)-len(fresh)+1:], fresh[:len(fresh)-1])
	if fi, _ := os.Stat(active); fi.Size() != lastOff {
		t.Fatalf("active segment cut at %d, want %d", fi.Size(), lastOff)
	}
}

// Damage to a record of the reused segment that new records follow is
// still corruption, old bytes or not.
func TestReusedSegmentDamageBeforeNewRecordIsCorrupt(t *testing.T) {
	_, l, _ := reusedFixture(t, testLogger(t))
	defer l.Close()
	crashed := copyDir(t, l.dir)
	flipByte(t, segmentFiles(t, crashed)[1], headerSize+10) // the first new record
	_, err := Open(crashed, Options{SegmentSize: 64 << 10, Logger: testLogger(t)})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open = %v, want ErrCorrupt", err)
	}
}

// A spare a reader is still in is not overwritten under it.
func TestSpareWithReaderNotReused(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, Options{SegmentSize: 64 << 10})
	defer l.Close()
	es := genEntries(rand.New(rand.NewPCG(9, 10)), 1, 40, 4<<10)
	appendAll(t, l, es, true)
	r := l.NewReader(0)
	defer r.Close()
	if _, err := r.Next(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := segmentFiles(t, dir)[0]
	ino := inode(t, first)
	if err := l.TrimThrough(es[len(es)-1].Last); err != nil {
		t.Fatal(err)
	}
	// Roll through more segments than there are spares.
	seq := es[len(es)-1].Last + 1
	for range 3 * (64 << 10) / (8 << 10) {
		appendAll(t, l, []Entry{{First: seq, Last: seq, Data: payload(seq, 8<<10)}}, true)
		seq++
	}
	for _, p := range segmentFiles(t, dir) {
		if inode(t, p) == ino {
			t.Fatalf("the spare the reader is in was reused as %s", p)
		}
	}
	// Once the reader has moved on, the next roll may take it.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.TrimThrough(seq - 2); err != nil {
		t.Fatal(err)
	}
	reused := false
	for range 3 * (64 << 10) / (8 << 10) {
		appendAll(t, l, []Entry{{First: seq, Last: seq, Data: payload(seq, 8<<10)}}, true)
		seq++
		for _, p := range segmentFiles(t, dir) {
			reused = reused || inode(t, p) == ino
		}
	}
	if !reused {
		t.Fatal("the spare was never reused after its reader left")
	}
}

// Old records that happen to start right where the new ones end.
func TestReusedSegmentOldRecordOnBoundary(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fresh int // new records before the old ones
	}{{"after new records", 2}, {"at the start", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var b []byte
			var want []Entry
			for i := range tc.fresh {
				e := Entry{First: 100 + uint64(i), Last: 100 + uint64(i), Data: payload(100+uint64(i), 3000)}
				b = appendRecord(b, e)
				want = append(want, e)
			}
			end := len(b)
			for s := uint64(5); s < 8; s++ { // an older segment's records
				b = appendRecord(b, Entry{First: s, Last: s, Data: payload(s, 1000)})
			}
			path := filepath.Join(dir, segmentName(100))
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			logger, recs := newRecordingLogger()
			l, err := Open(dir, Options{Logger: logger})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer l.Close()
			sameEntries(t, readAllEntries(t, l), want)
			if w := tornWarnings(recs()); len(w) != 0 {
				t.Errorf("old records reported as a torn tail: %v", w)
			}
			fi, err := os.Stat(path)
			switch {
			case tc.fresh == 0 && !errors.Is(err, os.ErrNotExist):
				t.Fatalf("a segment with no new record was kept: %v", err)
			case tc.fresh > 0 && (err != nil || fi.Size() != int64(end)):
				t.Fatalf("segment not cut at %d: %v %v", end, fi, err)
			}
		})
	}
}

// FuzzOpenLastSegment feeds Open a last segment made of whole records of
// its own, then arbitrary bytes (which may hold records of an older
// segment, as a reused file does). Open either fails with ErrCorrupt or
// returns at least the segment's own records, in order, and a second Open
// finds nothing more to change.
func FuzzOpenLastSegment(f *testing.F) {
	f.Add(uint8(3), []byte{}, false)
	f.Add(uint8(2), []byte{}, true) // a reused file: own records, then an older segment's
	f.Add(uint8(0), []byte{}, true)
	f.Add(uint8(2), []byte("garbage after the records"), true)
	f.Add(uint8(0), appendRecord(nil, Entry{First: 7, Last: 8, Data: []byte("old")}), false)
	f.Add(uint8(4), appendRecord(nil, Entry{First: 2000, Last: 2000, Data: []byte("later")}), false)
	f.Add(uint8(1), appendRecord(nil, Entry{First: 1500, Last: 1501, Data: payload(1500, 300)})[:100], true)
	f.Fuzz(func(t *testing.T, nNew uint8, tail []byte, withOld bool) {
		const base = 1000
		var file []byte
		var own []Entry
		for i := range int(nNew % 6) {
			e := Entry{First: base + uint64(2*i), Last: base + uint64(2*i) + 1, Data: payload(uint64(i), i*37%300)}
			file = appendRecord(file, e)
			own = append(own, e)
		}
		if withOld {
			file = appendRecord(file, Entry{First: 5, Last: 6, Data: payload(5, 100)})
		}
		file = append(file, tail...)
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, segmentName(base)), file, 0o600); err != nil {
			t.Fatal(err)
		}
		l, err := Open(dir, Options{Logger: discardLogger()})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open failed with an error that is not ErrCorrupt: %v", err)
			}
			if len(tail) == 0 {
				// Own records, then at most an older segment's: nothing
				// damaged.
				t.Fatalf("Open refused a segment without damage: %v", err)
			}
			return
		}
		got := readAllEntries(t, l)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if len(got) < len(own) {
			t.Fatalf("Open kept %d entries, fewer than the segment's %d whole records", len(got), len(own))
		}
		sameEntries(t, got[:len(own)], own)
		for i, e := range got {
			if e.First < base || (i > 0 && e.First <= got[i-1].Last) {
				t.Fatalf("entry %d [%d,%d] out of order or below the base", i, e.First, e.Last)
			}
		}
		l2, err := Open(dir, Options{Logger: discardLogger()})
		if err != nil {
			t.Fatalf("second Open: %v", err)
		}
		again := readAllEntries(t, l2)
		l2.Close()
		sameEntries(t, again, got)
	})
}
