package capture

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkBeginWriteHot is the per-write cost of the tracker on the
// normal path: the extent is already in the persisted activity log.
func BenchmarkBeginWriteHot(b *testing.B) {
	tr := openT(b, filepath.Join(b.TempDir(), "state"), 1<<30, TrackerOptions{Logger: quietLogger()})
	defer tr.Close()
	ctx := context.Background()
	if err := tr.BeginWrite(ctx, 0, 4096); err != nil { // make it hot
		b.Fatal(err)
	}
	tr.EndWrite(0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		if err := tr.BeginWrite(ctx, 8192, 4096); err != nil {
			b.Fatal(err)
		}
		tr.EndWrite(8192, 4096)
	}
}

// BenchmarkBeginWriteHotParallel: all cores writing to 64 hot extents.
func BenchmarkBeginWriteHotParallel(b *testing.B) {
	tr := openT(b, filepath.Join(b.TempDir(), "state"), 1<<30, TrackerOptions{Logger: quietLogger()})
	defer tr.Close()
	ctx := context.Background()
	if err := tr.BeginWrite(ctx, 0, 256<<20); err != nil {
		b.Fatal(err)
	}
	tr.EndWrite(0, 256<<20)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		rnd := rand.New(rand.NewPCG(rand.Uint64(), 1))
		for pb.Next() {
			off := rnd.Int64N(256<<20-4096) &^ 4095
			if err := tr.BeginWrite(ctx, off, 4096); err != nil {
				b.Error(err)
				return
			}
			tr.EndWrite(off, 4096)
		}
	})
}

// BenchmarkBeginWriteCold is the activity-log commit: every write is to an
// extent not yet active, so each pays a journal append and an fdatasync.
func BenchmarkBeginWriteCold(b *testing.B) {
	const size = 1 << 40
	tr := openT(b, filepath.Join(b.TempDir(), "state"), size, TrackerOptions{Logger: quietLogger()})
	defer tr.Close()
	ctx := context.Background()
	ext := tr.ExtentSize()
	var i int64
	for b.Loop() {
		off := (i * ext) % size
		i++
		if err := tr.BeginWrite(ctx, off, 4096); err != nil {
			b.Fatal(err)
		}
		tr.EndWrite(off, 4096)
	}
}

func BenchmarkTakeDirty(b *testing.B) {
	tr := openT(b, filepath.Join(b.TempDir(), "state"), 64<<30, TrackerOptions{Logger: quietLogger()})
	defer tr.Close()
	for b.Loop() {
		off, n, ok := tr.TakeDirty(1 << 20)
		if !ok {
			tr.MarkAllDirty()
			continue
		}
		tr.Complete(off, n)
	}
}

func scanBenchDisk(b *testing.B) (*os.File, int64) {
	const size = 256 << 20
	path := filepath.Join(b.TempDir(), "disk.img")
	buf := make([]byte, size)
	rnd := rand.New(rand.NewPCG(1, 1))
	fillRandom(rnd, buf)
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f, size
}

// BenchmarkScanPass: a steady-state pass over a 256 MiB file of data (in
// the page cache): read, hash every 64 KiB block, compare, write pending.
func BenchmarkScanPass(b *testing.B) {
	f, size := scanBenchDisk(b)
	s, err := OpenScanner(filepath.Join(b.TempDir(), "fp"), size, ScanOptions{Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.Pass(ctx, f, func(Change) error { return nil }); err != nil {
		b.Fatal(err)
	}
	if err := s.Commit(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	for b.Loop() {
		st, err := s.Pass(ctx, f, func(Change) error { return nil })
		if err != nil {
			b.Fatal(err)
		}
		if st.Changed != 0 {
			b.Fatalf("%d blocks changed", st.Changed)
		}
	}
}

// BenchmarkCompare: two identical 256 MiB files (the worst case: all read).
func BenchmarkCompare(b *testing.B) {
	f, size := scanBenchDisk(b)
	g, err := os.Open(f.Name())
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	b.SetBytes(size)
	for b.Loop() {
		if _, err := Compare(context.Background(), f, g, size, 64<<10); err != nil {
			b.Fatal(err)
		}
	}
}
