package capture

import (
	"context"
	"errors"
	"os"
	"path/filepath"
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

func FuzzDecodeState(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Add([]byte{})
	f.Add([]byte(superMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
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
	})
}
