package seglog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
)

type recPos struct{ off, n int64 }

// recordPositions lists the records of a segment file.
func recordPositions(t testing.TB, path string) []recPos {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []recPos
	for off := 0; off < len(b); {
		_, n, err := decodeRecord(b[off:])
		if err != nil {
			t.Fatalf("%s at %d: %v", path, off, err)
		}
		out = append(out, recPos{int64(off), int64(n)})
		off += n
	}
	return out
}

// crashFixture writes a closed log of several segments and returns its
// directory and entries; its last segment holds at least three records.
func crashFixture(t *testing.T) (string, []Entry) {
	t.Helper()
	dir := t.TempDir()
	l := mustOpen(t, dir, Options{SegmentSize: 16 << 10})
	es := genEntries(rand.New(rand.NewPCG(5, 6)), 100, 50, 3<<10)
	appendAll(t, l, es, true)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	segs := segmentFiles(t, dir)
	if len(segs) < 3 || len(recordPositions(t, segs[len(segs)-1])) < 3 {
		t.Fatalf("fixture too small: %d segments", len(segs))
	}
	return dir, es
}

func truncateFile(t testing.TB, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

func flipByte(t testing.TB, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

func appendBytes(t testing.TB, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

func putU32(t testing.TB, path string, off int64, v uint32) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

func tornWarnings(recs []slog.Record) []map[string]any {
	var out []map[string]any
	for _, r := range recs {
		if r.Level == slog.LevelWarn && strings.Contains(r.Message, "torn tail") {
			out = append(out, recordAttrs(r))
		}
	}
	return out
}

func TestOpenRecoversTornTail(t *testing.T) {
	pristine, es := crashFixture(t)
	segs := segmentFiles(t, pristine)
	lastSeg := segs[len(segs)-1]
	recs := recordPositions(t, lastSeg)
	tail := recs[len(recs)-1]
	fi, _ := os.Stat(lastSeg)
	fileEnd := fi.Size()
	firstOfLast := len(es) - len(recs) // index in es of the last segment's first entry

	type tc struct {
		name      string
		damage    func(t *testing.T, path string)
		keep      int   // entries that must survive
		tornAt    int64 // -1: no truncation expected
		removeSeg bool  // the last segment holds nothing whole and goes away
	}
	cut := func(at int64) func(*testing.T, string) {
		return func(t *testing.T, p string) { truncateFile(t, p, at) }
	}
	flip := func(at int64) func(*testing.T, string) {
		return func(t *testing.T, p string) { flipByte(t, p, at) }
	}
	payloadLen := tail.n - headerSize
	cases := []tc{
		{"cut at record boundary", cut(tail.off), len(es) - 1, -1, false},
		{"cut after 1 header byte", cut(tail.off + 1), len(es) - 1, tail.off, false},
		{"cut mid header", cut(tail.off + 13), len(es) - 1, tail.off, false},
		{"cut before crc", cut(tail.off + crcOffset), len(es) - 1, tail.off, false},
		{"cut after header", cut(tail.off + headerSize), len(es) - 1, tail.off, false},
		{"cut mid payload", cut(tail.off + headerSize + payloadLen/2), len(es) - 1, tail.off, false},
		{"cut last byte", cut(fileEnd - 1), len(es) - 1, tail.off, false},
		{"flip magic", flip(tail.off + 1), len(es) - 1, tail.off, false},
		{"flip length", flip(tail.off + 8), len(es) - 1, tail.off, false},
		{"flip last seq", flip(tail.off + 21), len(es) - 1, tail.off, false},
		{"flip crc", flip(tail.off + crcOffset + 2), len(es) - 1, tail.off, false},
		{"flip payload", flip(tail.off + headerSize + payloadLen/3), len(es) - 1, tail.off, false},
		{"flip last payload byte", flip(fileEnd - 1), len(es) - 1, tail.off, false},
		{"zeroed blocks past the end", func(t *testing.T, p string) { appendBytes(t, p, make([]byte, 8192)) }, len(es), fileEnd, false},
		{"garbage past the end", func(t *testing.T, p string) { appendBytes(t, p, payload(42, 5000)) }, len(es), fileEnd, false},
		{"magic then garbage past the end", func(t *testing.T, p string) {
			b := appendRecord(nil, Entry{First: 1 << 40, Last: 1 << 40, Data: payload(9, 100)})
			appendBytes(t, p, b[:60])
		}, len(es), fileEnd, false},
		{"first record of last segment torn", cut(recs[0].off + headerSize + 1), firstOfLast, 0, true},
		{"last segment empty", cut(0), firstOfLast, 0, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyDir(t, pristine)
			path := segmentFiles(t, dir)[len(segs)-1]
			c.damage(t, path)
			logger, records := newRecordingLogger()
			l, err := Open(dir, Options{SegmentSize: 16 << 10, Logger: logger})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			sameEntries(t, readAllEntries(t, l), es[:c.keep])
			if st := l.Stats(); st.LastSeq != es[c.keep-1].Last || st.DurableSeq != st.LastSeq {
				t.Fatalf("Stats %+v, want LastSeq %d", st, es[c.keep-1].Last)
			}
			warns := tornWarnings(records())
			switch {
			case c.tornAt < 0 && len(warns) != 0:
				t.Fatalf("unexpected truncation warning %v", warns)
			case c.tornAt >= 0 && len(warns) != 1:
				t.Fatalf("want one truncation warning, got %v", warns)
			case c.tornAt >= 0:
				if warns[0]["segment"] != path || warns[0]["offset"] != c.tornAt {
					t.Fatalf("warning %v, want segment %s offset %d", warns[0], path, c.tornAt)
				}
			}
			if _, err := os.Stat(path); c.removeSeg != errors.Is(err, os.ErrNotExist) {
				t.Fatalf("stat last segment after recovery: %v (want removed: %v)", err, c.removeSeg)
			}
			// The repair is on disk: appending and reopening gives a clean
			// log with no second warning.
			next := Entry{First: es[len(es)-1].Last + 10, Last: es[len(es)-1].Last + 10, Data: payload(1, 777)}
			next.Data = payload(next.First, 777)
			if err := l.Append(context.Background(), next, true); err != nil {
				t.Fatal(err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			logger, records = newRecordingLogger()
			l, err = Open(dir, Options{SegmentSize: 16 << 10, Logger: logger})
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			defer l.Close()
			want := append(append([]Entry(nil), es[:c.keep]...), next)
			sameEntries(t, readAllEntries(t, l), want)
			if w := tornWarnings(records()); len(w) != 0 {
				t.Fatalf("second open warned again: %v", w)
			}
		})
	}
}

func TestOpenRejectsCorruptionBeforeTail(t *testing.T) {
	pristine, _ := crashFixture(t)
	segs := segmentFiles(t, pristine)
	nlast := len(segs) - 1
	lastRecs := recordPositions(t, segs[nlast])
	firstRecs := recordPositions(t, segs[0])
	mid := lastRecs[len(lastRecs)-2]

	type tc struct {
		name   string
		seg    int
		damage func(t *testing.T, path string)
		off    int64
		trust  bool // Options.TrustSealed
	}
	cases := []tc{
		{"payload of last segment's second-last record", nlast, func(t *testing.T, p string) {
			flipByte(t, p, mid.off+headerSize+3)
		}, mid.off, false},
		{"header of last segment's first record", nlast, func(t *testing.T, p string) {
			flipByte(t, p, lastRecs[0].off+17)
		}, lastRecs[0].off, false},
		// A length pointing past the end looks like a torn write, but a
		// whole record follows it, so it is not the tail.
		{"length of a middle record runs past end", nlast, func(t *testing.T, p string) {
			putU32(t, p, mid.off+8, uint32(mid.n)+1<<20)
		}, mid.off, false},
		{"payload in sealed segment", 0, func(t *testing.T, p string) {
			flipByte(t, p, firstRecs[1].off+headerSize+1)
		}, firstRecs[1].off, false},
		{"crc of sealed segment's last record", 1, func(t *testing.T, p string) {
			recs := recordPositions(t, p)
			flipByte(t, p, recs[len(recs)-1].off+crcOffset)
		}, -1, false},
		{"sealed segment cut short", 1, func(t *testing.T, p string) {
			recs := recordPositions(t, p)
			truncateFile(t, p, recs[len(recs)-1].off+40)
		}, -1, false},
		{"sealed segment cut short, trusted", 1, func(t *testing.T, p string) {
			recs := recordPositions(t, p)
			truncateFile(t, p, recs[len(recs)-1].off+40)
		}, -1, true},
		{"magic in sealed segment, trusted", 0, func(t *testing.T, p string) {
			flipByte(t, p, firstRecs[2].off)
		}, firstRecs[2].off, true},
		{"sealed segment emptied", 1, func(t *testing.T, p string) { truncateFile(t, p, 0) }, 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyDir(t, pristine)
			path := segmentFiles(t, dir)[c.seg]
			want := c.off
			if want < 0 { // the last record of that segment
				recs := recordPositions(t, path)
				want = recs[len(recs)-1].off
			}
			c.damage(t, path)
			_, err := Open(dir, Options{SegmentSize: 16 << 10, Logger: testLogger(t), TrustSealed: c.trust})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open: %v, want ErrCorrupt", err)
			}
			var ce *CorruptError
			if !errors.As(err, &ce) || ce.Segment != path || ce.Offset != want {
				t.Fatalf("Open: %v; want segment %s offset %d", err, path, want)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), fmt.Sprintf("offset %d", want)) {
				t.Fatalf("error %q does not name file and offset", err)
			}
			// Nothing was repaired behind the operator's back.
			if fi, _ := os.Stat(path); c.name != "sealed segment emptied" && fi.Size() == 0 {
				t.Fatal("segment emptied")
			}
		})
	}
}

// With TrustSealed, payload damage in a sealed segment is found by the
// reader instead of Open.
func TestTrustSealedReaderFindsDamage(t *testing.T) {
	pristine, es := crashFixture(t)
	dir := copyDir(t, pristine)
	path := segmentFiles(t, dir)[0]
	recs := recordPositions(t, path)
	flipByte(t, path, recs[2].off+headerSize+5)
	l, err := Open(dir, Options{SegmentSize: 16 << 10, Logger: testLogger(t), TrustSealed: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer l.Close()
	if st := l.Stats(); st.Entries != int64(len(es)) {
		t.Fatalf("Entries %d, want %d", st.Entries, len(es))
	}
	r := l.NewReader(0)
	defer r.Close()
	sameEntries(t, readN(t, r, 2), es[:2])
	_, err = r.Next(context.Background())
	var ce *CorruptError
	if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) || ce.Segment != path || ce.Offset != recs[2].off {
		t.Fatalf("Next: %v, want corruption at %s:%d", err, path, recs[2].off)
	}
	// And Open without TrustSealed refuses the same directory.
	l.Close()
	if _, err := Open(dir, Options{Logger: testLogger(t)}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("verifying Open: %v", err)
	}
}

// Damage in a large record is found to be non-tail even when the record
// after it lies beyond the first search window.
func TestOpenRejectsDamageBeforeRecordFarAway(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, Options{})
	appendAll(t, l, []Entry{
		{First: 1, Last: 1, Data: payload(1, 100)},
		{First: 2, Last: 2, Data: payload(2, 3<<20)},
		{First: 3, Last: 3, Data: payload(3, 100)},
	}, true)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	path := segmentFiles(t, dir)[0]
	recs := recordPositions(t, path)
	flipByte(t, path, recs[1].off+headerSize+5)
	_, err := Open(dir, Options{Logger: testLogger(t)})
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.Offset != recs[1].off || !strings.Contains(err.Error(), fmt.Sprintf("follows at offset %d", recs[2].off)) {
		t.Fatalf("Open: %v, want corruption at %d with a record following at %d", err, recs[1].off, recs[2].off)
	}
	// Without the record after it, the same damage is a torn tail.
	truncateFile(t, path, recs[2].off)
	l = mustOpen(t, dir, Options{})
	defer l.Close()
	if st := l.Stats(); st.Entries != 1 || st.LastSeq != 1 {
		t.Fatalf("Stats %+v", st)
	}
}
