package journal

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

const benchDisk = 256 << 20

// benchRig is a replica full of non-zero data (so before-images are stored,
// not flagged zero) and a bounded journal.
func benchRig(b *testing.B) *rig {
	b.Helper()
	r := newRig(b, []int64{benchDisk}, Options{MaxBytes: 1 << 30})
	buf := make([]byte, 4<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for off := int64(0); off < benchDisk; off += int64(len(buf)) {
		for i := range buf {
			buf[i] = byte(rng.Uint32() | 1)
		}
		if _, err := r.replica[0].WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	return r
}

// benchPreserve measures the journal's share of apply: Lock, Preserve and
// a Sync per MiB preserved (the replica write itself is not included).
func benchPreserve(b *testing.B, size int64) {
	r := benchRig(b)
	rng := rand.New(rand.NewPCG(3, 4))
	perSync := max(1, int((1<<20)/size))
	b.SetBytes(size)
	b.ResetTimer()
	seq := uint64(1)
	for i := 0; b.Loop(); i++ {
		off := rng.Int64N(benchDisk/size) * size
		unlock := r.j.Lock(0, off, size)
		if err := r.j.Preserve(seq, 0, off, size); err != nil {
			b.Fatal(err)
		}
		unlock()
		seq++
		if i%perSync == perSync-1 {
			if err := r.j.Sync(); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := r.j.Sync(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	st := r.j.Stats()
	if st.Records > 0 {
		b.ReportMetric(float64(st.Bytes)/float64(st.Records)/float64(size), "journal-bytes/applied-byte")
	}
}

func BenchmarkPreserve4K(b *testing.B) { benchPreserve(b, 4096) }
func BenchmarkPreserve1M(b *testing.B) { benchPreserve(b, 1<<20) }

// BenchmarkViewRead reads 64 KiB at random offsets of a view whose blocks
// come from a mix of before-images and the replica.
func BenchmarkViewRead(b *testing.B) {
	r := benchRig(b)
	rng := rand.New(rand.NewPCG(5, 6))
	a := r.j.NewApplier(64)
	data := make([]byte, 16<<10)
	for i := range data {
		data[i] = byte(i)
	}
	// Overwrite about half the disk in 16 KiB writes after the point.
	for seq := uint64(1); seq <= benchDisk/2/uint64(len(data)); seq++ {
		o := op{seq: seq, off: rng.Int64N(benchDisk/int64(len(data))) * int64(len(data)), n: int64(len(data)), data: data}
		r.apply(a, o)
	}
	if err := a.Flush(); err != nil {
		b.Fatal(err)
	}
	v, err := r.j.OpenView(0, 0, "")
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for b.Loop() {
		off := rng.Int64N(benchDisk/int64(len(buf))) * int64(len(buf))
		if _, err := v.ReadAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenView opens and closes a view with a scratch file on a
// 16 GiB replica.
func BenchmarkOpenView(b *testing.B) {
	r := newRig(b, []int64{16 << 30}, Options{})
	a := r.j.NewApplier(16)
	for _, o := range genOps(9, []int64{16 << 30}, 100, 1) {
		r.apply(a, o)
	}
	if err := a.Flush(); err != nil {
		b.Fatal(err)
	}
	scratch := filepath.Join(r.dir, "scratch")
	b.ResetTimer()
	for b.Loop() {
		v, err := r.j.OpenView(0, 50, scratch)
		if err != nil {
			b.Fatal(err)
		}
		if err := v.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// benchBaseline is the peer for BenchmarkPreserve*: appending the same
// bytes to a plain file with the same fdatasync cadence, no journal.
func benchBaseline(b *testing.B, size int64) {
	f, err := os.Create(filepath.Join(b.TempDir(), "plain"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, size)
	for i := range buf {
		buf[i] = byte(i | 1)
	}
	perSync := max(1, int((1<<20)/size))
	var at int64
	b.SetBytes(size)
	for i := 0; b.Loop(); i++ {
		if _, err := f.WriteAt(buf, at); err != nil {
			b.Fatal(err)
		}
		// Keep the file bounded like the journal (MaxBytes).
		at = (at + size) % (1 << 30)
		if i%perSync == perSync-1 {
			if err := fdatasync(f); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkBaselineAppend4K(b *testing.B) { benchBaseline(b, 4096) }
func BenchmarkBaselineAppend1M(b *testing.B) { benchBaseline(b, 1<<20) }
