package journal

import (
	"bytes"
	"context"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"

	"standby/internal/blockdev"
)

// Disk sizes of the model machine: one 8 MiB disk and one whose size is
// not a multiple of the block size.
var modelSizes = []int64{8 << 20, 3<<20 + 1000}

// smallSizes serve the tests about recovery and space, which check many
// points many times.
var smallSizes = []int64{2 << 20, 1<<20 + 1000}

type snapshot struct {
	point uint64
	disks [][]byte
}

// runModel applies ops through an Applier with random batching, taking a
// snapshot after a flush every so often.
func runModel(t *testing.T, r *rig, model [][]byte, ops []op, rng *rand.Rand, every int) []snapshot {
	t.Helper()
	a := r.j.NewApplier(1 + rng.IntN(24))
	var snaps []snapshot
	for i, o := range ops {
		r.apply(a, o)
		applyModel(model, o)
		if i%every == every-1 || i == len(ops)-1 {
			if err := a.Flush(); err != nil {
				t.Fatal(err)
			}
			// The point is anywhere from this record to just before the
			// next: seqs in between carry no data.
			p := o.seq
			if i+1 < len(ops) {
				p = ops[i+1].seq - 1
			}
			snaps = append(snaps, snapshot{point: p, disks: cloneModel(model)})
		}
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	return snaps
}

func TestModel(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	r := newRig(t, modelSizes, Options{SegmentSize: 2 << 20})
	ops := genOps(seed, modelSizes, 2000, 10)
	model := newModel(modelSizes)
	snaps := append([]snapshot{{point: 0, disks: newModel(modelSizes)}}, runModel(t, r, model, ops, rng, 200)...)
	var applied int64
	for _, o := range ops {
		applied += o.n
	}
	st := r.j.Stats()
	t.Logf("%d records, %d bytes applied, journal %d bytes in %d segments (%d records): %.2f journal bytes per applied byte; index %d bytes",
		len(ops), applied, st.Bytes, st.Segments, st.Records, float64(st.Bytes)/float64(applied), st.IndexBytes)
	// LastSeq is the newest record whose before-images were stored: a
	// zeroing record over blocks already zero stores none, so the stream
	// may end in records that do not move it (preserving them again after
	// a crash stores nothing again).
	lastStored := lastDataSeq(ops)
	if st.LastSeq < lastStored || st.LastSeq > ops[len(ops)-1].seq {
		t.Fatalf("LastSeq %d, want between %d (the last data record) and %d (the last record)", st.LastSeq, lastStored, ops[len(ops)-1].seq)
	}
	for _, s := range snaps {
		for d := range modelSizes {
			checkView(t, r.j, d, s.point, s.disks[d], "")
		}
	}
	// Random unaligned reads of random points, through one view each.
	for range 200 {
		s := snaps[rng.IntN(len(snaps))]
		d := rng.IntN(len(modelSizes))
		v, err := r.j.OpenView(d, s.point, "")
		if err != nil {
			t.Fatal(err)
		}
		off := rng.Int64N(modelSizes[d])
		n := 1 + rng.Int64N(min(modelSizes[d]-off, 300<<10))
		buf := make([]byte, n)
		if _, err := v.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, s.disks[d][off:off+n]) {
			t.Fatalf("view of disk %d at %d, read %d+%d: %s", d, s.point, off, n, firstDiff(buf, s.disks[d][off:off+n]))
		}
		v.Close()
	}
	// The newest point is the replica itself.
	for d := range modelSizes {
		got := make([]byte, modelSizes[d])
		if _, err := r.replica[d].ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, model[d]) {
			t.Fatalf("replica %d differs from the model: %s", d, firstDiff(got, model[d]))
		}
	}
}

// TestModelConcurrent reads views at older points while apply goes on
// underneath them (run with -race).
func TestModelConcurrent(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 2))
	r := newRig(t, modelSizes, Options{SegmentSize: 1 << 20})
	ops := genOps(seed, modelSizes, 2000, 1)
	model := newModel(modelSizes)
	first, rest := ops[:1000], ops[1000:]
	snaps := runModel(t, r, model, first, rng, 100)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	done := make(chan struct{})
	var reads [4]int
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(10+w)))
			for ctx.Err() == nil {
				s := snaps[rng.IntN(len(snaps))]
				d := rng.IntN(len(modelSizes))
				v, err := r.j.OpenView(d, s.point, filepath.Join(r.dir, "scratch"+string(rune('a'+w))))
				if err != nil {
					errs <- err
					return
				}
				for range 20 {
					off := rng.Int64N(modelSizes[d])
					n := 1 + rng.Int64N(min(modelSizes[d]-off, 64<<10))
					buf := make([]byte, n)
					if _, err := v.ReadAt(buf, off); err != nil {
						errs <- err
						v.Close()
						return
					}
					if !bytes.Equal(buf, s.disks[d][off:off+n]) {
						t.Errorf("concurrent view of disk %d at %d, read %d+%d: %s", d, s.point, off, n, firstDiff(buf, s.disks[d][off:off+n]))
						v.Close()
						return
					}
					reads[w]++
				}
				v.Close()
			}
		}()
	}
	go func() {
		defer close(done)
		a := r.j.NewApplier(1 + rng.IntN(16))
		for _, o := range rest {
			r.apply(a, o)
			applyModel(model, o)
		}
		if err := a.Flush(); err != nil {
			t.Error(err)
		}
	}()
	<-done
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("view reads during apply: %v", reads)
	for _, s := range snaps[len(snaps)-3:] {
		for d := range modelSizes {
			checkView(t, r.j, d, s.point, s.disks[d], "")
		}
	}
	for d := range modelSizes {
		checkView(t, r.j, d, rest[len(rest)-1].seq, model[d], "")
	}
}

func TestExtents(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 3))
	sizes := []int64{32 << 20}
	r := newRig(t, sizes, Options{})
	// Sparse writes far apart, then zero some of them: older points hold
	// data where the replica is now a hole.
	ops := genOps(seed, sizes, 150, 1)
	model := newModel(sizes)
	snaps := runModel(t, r, model, ops, rng, 25)
	for _, s := range snaps {
		v, err := r.j.OpenView(0, s.point, filepath.Join(r.dir, "scratch"))
		if err != nil {
			t.Fatal(err)
		}
		// A write of the view must show up too.
		woff := rng.Int64N(sizes[0] - 10000)
		if _, err := v.WriteAt([]byte("view data"), woff); err != nil {
			t.Fatal(err)
		}
		want := bytes.Clone(s.disks[0])
		copy(want[woff:], "view data")
		covered := make([]bool, (sizes[0]+4095)/4096)
		var last int64 = -1
		var total int64
		err = v.Extents(context.Background(), func(off, n int64) error {
			if off <= last || n <= 0 || off+n > sizes[0] {
				t.Fatalf("extent %d+%d after %d: out of order, empty or past the end", off, n, last)
			}
			last = off + n
			total += n
			for b := off / 4096; b < (off+n+4095)/4096; b++ {
				covered[b] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for b := range covered {
			if !covered[b] && !isZeroBytes(want[b*4096:min(int64(b+1)*4096, sizes[0])]) {
				t.Fatalf("point %d: block %d holds data but is outside every extent", s.point, b)
			}
		}
		if total == sizes[0] {
			t.Fatalf("point %d: extents cover the whole disk, holes were not skipped", s.point)
		}
		v.Close()
	}
}

func isZeroBytes(b []byte) bool { return blockdev.IsZero(b) }
