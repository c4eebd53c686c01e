package imagefmt_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"standby/internal/imagefmt"
	"standby/internal/imagefmt/imagefmttest"
)

// benchSize is the disk the benchmarks export: 512 MiB, about half of it
// data, unless STANDBY_IMAGEFMT_BENCH_MIB says otherwise.
func benchSize(b *testing.B) int64 {
	if s := os.Getenv("STANDBY_IMAGEFMT_BENCH_MIB"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			b.Fatalf("STANDBY_IMAGEFMT_BENCH_MIB=%q: want a positive number of MiB", s)
		}
		return n << 20
	}
	return 512 << 20
}

func BenchmarkWriteQcow2(b *testing.B) { benchWrite(b, imagefmt.FormatQcow2, true) }
func BenchmarkWriteRaw(b *testing.B)   { benchWrite(b, imagefmt.FormatRaw, true) }

// BenchmarkWriteVMDK is not compared with qemu-img: its flat extent is
// written exactly as a raw image is, which BenchmarkWriteRaw compares.
func BenchmarkWriteVMDK(b *testing.B) { benchWrite(b, imagefmt.FormatVMDK, false) }

// benchWrite measures Write on a file-backed disk (MB/s over the virtual
// size, warm page cache), then compares it with qemu-img convert of the same
// file in the same run, warm and cold, and reports imagefmt's throughput as
// a multiple of qemu-img's ("x-qemu-warm", "x-qemu-cold"; above 1 is faster).
func benchWrite(b *testing.B, format imagefmt.Format, compare bool) {
	dir := b.TempDir()
	size := benchSize(b)
	src := filepath.Join(dir, "source.raw")
	if _, err := imagefmttest.MakeRawFile(src, imagefmttest.Spec{Size: size, DataFraction: 0.5, Seed: 42, MaxRegion: 8 << 20}); err != nil {
		b.Fatal(err)
	}
	s, err := imagefmt.OpenFileSource(src)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	out := filepath.Join(dir, "out."+ext(format))
	opts := imagefmt.Options{Logger: discard()}
	b.SetBytes(size)
	for b.Loop() {
		res, err := imagefmt.Write(ctx, s, format, out, opts)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		for _, f := range res.Files {
			os.Remove(f)
		}
		b.StartTimer()
	}
	b.StopTimer()
	if !compare {
		return
	}
	for _, cold := range []bool{false, true} {
		c, err := imagefmttest.Compare(ctx, src, format, imagefmttest.CompareOptions{Rounds: 3, Dir: dir, Cold: cold})
		if err != nil {
			b.Fatal(err)
		}
		b.Log(c)
		unit := "x-qemu-warm"
		if cold {
			unit = "x-qemu-cold"
		}
		b.ReportMetric(c.Ratio(), unit)
	}
}
