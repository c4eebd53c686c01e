package capture

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// fuzzSeeds returns real state files of a tiny geometry (16 KiB files), in
// the states the decoder meets: fresh, running with journal records, and
// cleanly closed.
func fuzzSeeds(f *testing.F) [][]byte {
	dir := f.TempDir()
	path := filepath.Join(dir, "state")
	opts := TrackerOptions{BlockSize: 512, ExtentSize: 4096, Logger: quietLogger(), journalSize: 4096}
	const size = 100<<10 + 17
	var seeds [][]byte
	read := func() {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	g, err := newGeometry(size, 512, 4096, 4096)
	if err != nil {
		f.Fatal(err)
	}
	seeds = append(seeds, encodeFreshState(g, flagFresh|flagClean))
	tr, err := OpenTracker(path, size, opts)
	if err != nil {
		f.Fatal(err)
	}
	read()
	for i := range int64(5) {
		off, n, _ := tr.TakeDirty(8 << 10)
		tr.Complete(off, n)
		_ = tr.BeginWrite(context.Background(), i*9000, 5000)
	}
	tr.MarkDirty(50000, 3000)
	read()
	_ = tr.Persist()
	_ = tr.BeginWrite(context.Background(), 90000, 1)
	read()
	_ = tr.Close()
	read()
	return seeds
}

// splitState cuts a state file image into its four regions, each without
// trailing zeros, so fuzz inputs stay a few hundred bytes (the fuzzer
// minimizes every interesting input byte by byte; 16 KiB ones stall it).
func splitState(b []byte) (super, slot0, slot1, journal []byte) {
	g, err := decodeSuper(b)
	if err != nil || int64(len(b)) < g.fileSize() {
		return b, nil, nil, nil
	}
	trim := func(p []byte) []byte { return bytes.TrimRight(p, "\x00") }
	return trim(b[:superUsed]), trim(b[g.slotOff(0):g.slotOff(1)]),
		trim(b[g.slotOff(1):g.journalOff()]), trim(b[g.journalOff():g.fileSize()])
}

// joinState is the inverse: it lays the regions out where the (possibly
// mutated) superblock says they belong, zero-padded or cut to size. With a
// superblock that does not parse, the parts are simply concatenated.
func joinState(super, slot0, slot1, journal []byte) []byte {
	g, err := decodeSuper(super)
	if err != nil || g.fileSize() > 64<<20 {
		return slices.Concat(super, slot0, slot1, journal)
	}
	b := make([]byte, g.fileSize())
	copy(b, super)
	copy(b[g.slotOff(0):g.slotOff(1)], slot0)
	copy(b[g.slotOff(1):g.journalOff()], slot1)
	copy(b[g.journalOff():], journal)
	return b
}

func FuzzDecodeState(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		super, slot0, slot1, journal := splitState(s)
		f.Add(super, slot0, slot1, journal, false)
		f.Add(super, slot0, slot1, journal, true)
	}
	f.Add([]byte{}, []byte{}, []byte{}, []byte{}, false)
	f.Add([]byte(superMagic), []byte(slotMagic), []byte{}, []byte{0x41, 0x4c, 0x4a, 0x52}, true)
	f.Fuzz(func(t *testing.T, super, slot0, slot1, journal []byte, reseal bool) {
		b := joinState(super, slot0, slot1, journal)
		if reseal {
			resealState(b)
		}
		checkDecode(t, b)
		checkDecode(t, slices.Concat(super, slot0, slot1, journal))
	})
}

// resealState recomputes every checksum in a state image, so the fuzzer
// can reach the checks that lie behind them (flags, bits past the end,
// journal extents out of range, sequence numbers).
func resealState(b []byte) {
	if len(b) < superUsed {
		return
	}
	binary.LittleEndian.PutUint32(b[40:], crc32.Checksum(b[:40], castagnoli))
	g, err := decodeSuper(b)
	if err != nil || int64(len(b)) < g.fileSize() {
		return
	}
	for i := range 2 {
		sealSlot(b[g.slotOff(i):g.slotOff(i)+g.slotSize()], g)
	}
	j := b[g.journalOff():g.fileSize()]
	for pos := int64(0); pos+recordHeader+4 <= int64(len(j)); {
		count := binary.LittleEndian.Uint32(j[pos+4:])
		n := recordLen(int(count))
		if binary.LittleEndian.Uint32(j[pos:]) != recordMagic || count == 0 || count > maxRecordExtents || pos+n > int64(len(j)) {
			return
		}
		binary.LittleEndian.PutUint32(j[pos+n-4:], crc32.Checksum(j[pos:pos+n-4], castagnoli))
		pos += n
	}
}

func checkDecode(t *testing.T, b []byte) {
	st, err := decodeState(b)
	if err != nil {
		if !errors.Is(err, ErrCorruptState) {
			t.Fatalf("decode error does not wrap ErrCorruptState: %v", err)
		}
		return
	}
	g := st.geo
	if err := g.validate(); err != nil {
		t.Fatalf("accepted invalid geometry: %v", err)
	}
	if int64(len(st.dirty)) != g.bmWords() || int64(len(st.al)) != g.alWords() {
		t.Fatalf("bitmap lengths %d/%d, want %d/%d", len(st.dirty), len(st.al), g.bmWords(), g.alWords())
	}
	if st.dirty[len(st.dirty)-1]&^tailMask(g.nBlocks()) != 0 || st.al[len(st.al)-1]&^tailMask(g.nExtents()) != 0 {
		t.Fatal("bits beyond the disk accepted")
	}
	if st.journalEnd < 0 || st.journalEnd > g.journalSize || st.seq == 0 {
		t.Fatalf("journal end %d, seq %d", st.journalEnd, st.seq)
	}
}

// TestSplitJoinState keeps the fuzz harness honest: splitting and joining
// a real state file gives back the same file.
func TestSplitJoinState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	tr := openT(t, path, 100<<10, TrackerOptions{BlockSize: 512, ExtentSize: 4096, Logger: quietLogger(), journalSize: 4096})
	_ = tr.BeginWrite(context.Background(), 5000, 10)
	crash(tr)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(joinState(splitState(b)), b) {
		t.Fatal("joinState(splitState(file)) != file")
	}
}
