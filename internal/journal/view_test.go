package journal

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"standby/internal/blockdev"
)

func replicaHash(t *testing.T, d *blockdev.Disk) [32]byte {
	t.Helper()
	b := make([]byte, d.Size())
	if _, err := d.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func TestViewWrites(t *testing.T) {
	sizes := []int64{1<<20 + 512} // the last block is partial
	r := newRig(t, sizes, Options{})
	ops := genOps(5, sizes, 200, 1)
	model := newModel(sizes)
	a := r.j.NewApplier(8)
	var mid [][]byte
	var midPoint uint64
	for i, o := range ops {
		r.apply(a, o)
		applyModel(model, o)
		if i == 99 {
			if err := a.Flush(); err != nil {
				t.Fatal(err)
			}
			mid, midPoint = cloneModel(model), o.seq
		}
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	scratch := filepath.Join(r.dir, "view.scratch")
	v, err := r.j.OpenView(0, midPoint, scratch)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(mid[0])
	write := func(off int64, p []byte) {
		t.Helper()
		if n, err := v.WriteAt(p, off); err != nil || n != len(p) {
			t.Fatalf("view write %d+%d: n=%d err=%v", off, len(p), n, err)
		}
		copy(want[off:], p)
	}
	check := func(what string) {
		t.Helper()
		if got := readAll(t, v); !bytes.Equal(got, want) {
			t.Fatalf("after %s: %s", what, firstDiff(got, want))
		}
	}
	write(4096, bytes.Repeat([]byte{0xAA}, 8192)) // whole blocks
	check("an aligned write")
	write(100, []byte("partial head"))               // inside a block never written
	write(4096+10, []byte("inside a written block")) // inside a written block
	write(3*4096-5, []byte("straddles two blocks"))  // partial tail and head
	check("partial-block writes")
	write(sizes[0]-7, []byte("the end"))                // the partial last block
	write(200_000, bytes.Repeat([]byte{1, 2, 3}, 9000)) // unaligned, many blocks
	check("writes at the end and across many blocks")
	// Read-your-writes for a single small read.
	small := make([]byte, 12)
	if _, err := v.ReadAt(small, 100); err != nil || string(small) != "partial head" {
		t.Fatalf("read back %q, %v", small, err)
	}
	// Reads past the end behave as io.ReaderAt says.
	tail := make([]byte, 20)
	if n, err := v.ReadAt(tail, sizes[0]-7); n != 7 || err != io.EOF || string(tail[:7]) != "the end" {
		t.Fatalf("read over the end: n=%d err=%v %q", n, err, tail[:n])
	}
	if _, err := v.WriteAt([]byte("x"), sizes[0]); err == nil {
		t.Fatal("a write past the end succeeded")
	}
	// Apply goes on: the view keeps its point and its writes.
	for _, o := range genOps(6, sizes, 50, ops[len(ops)-1].seq+1) {
		r.apply(a, o)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	check("more apply underneath")
	// A second view at the same point does not see the first one's writes.
	checkView(t, r.j, 0, midPoint, mid[0], "")
	after := replicaHash(t, r.replica[0])
	// The replica moved on with apply, but never by the view: its content
	// is exactly the model of the applied records.
	full := modelAt(sizes, append(append([]op{}, ops...), genOps(6, sizes, 50, ops[len(ops)-1].seq+1)...), ^uint64(0))
	if after != sha256.Sum256(full[0]) {
		t.Fatal("the replica differs from the applied records: view writes leaked into it")
	}
	if !fileExists(scratch) {
		t.Fatal("scratch file missing while the view is open")
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if fileExists(scratch) {
		t.Fatal("Close left the scratch file")
	}
	if _, err := v.ReadAt(small, 0); err == nil {
		t.Fatal("read of a closed view succeeded")
	}
	if st := r.j.Stats(); st.Views != 0 {
		t.Fatalf("%d views after Close", st.Views)
	}
}

func TestReadOnlyViewAndReplicaUntouched(t *testing.T) {
	sizes := []int64{1 << 20}
	r := newRig(t, sizes, Options{})
	a := r.j.NewApplier(4)
	for _, o := range genOps(7, sizes, 40, 1) {
		r.apply(a, o)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	before := replicaHash(t, r.replica[0])
	v, err := r.j.OpenView(0, 5, "")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if _, err := v.WriteAt([]byte("x"), 0); err == nil {
		t.Fatal("write to a read-only view succeeded")
	}
	readAll(t, v)
	if replicaHash(t, r.replica[0]) != before {
		t.Fatal("reading a view changed the replica")
	}
}

func TestOpenViewErrors(t *testing.T) {
	r := newRig(t, []int64{1 << 20}, Options{})
	if _, err := r.j.OpenView(1, 0, ""); err == nil {
		t.Fatal("view of a disk that does not exist")
	}
	if _, err := r.j.OpenView(0, 0, filepath.Join(r.dir, "no", "such", "dir", "scratch")); err == nil {
		t.Fatal("view with an impossible scratch path")
	}
	if st := r.j.Stats(); st.Views != 0 {
		t.Fatalf("failed OpenView left %d views registered", st.Views)
	}
}

// TestViewAheadOfApply: a view opened at a point apply has not reached
// is invalidated once apply preserves a seq at or below it, rather than
// silently showing a mix of points.
func TestViewAheadOfApply(t *testing.T) {
	sizes := []int64{1 << 20}
	r := newRig(t, sizes, Options{})
	a := r.j.NewApplier(1)
	ops := genOps(8, sizes, 20, 1)
	for _, o := range ops[:10] {
		r.apply(a, o)
	}
	ahead, err := r.j.OpenView(0, ops[15].seq, "")
	if err != nil {
		t.Fatal(err)
	}
	defer ahead.Close()
	current, err := r.j.OpenView(0, ops[9].seq, "")
	if err != nil {
		t.Fatal(err)
	}
	defer current.Close()
	for _, o := range ops[10:] {
		r.apply(a, o)
	}
	buf := make([]byte, 4096)
	if _, err := ahead.ReadAt(buf, 0); !errors.Is(err, ErrViewInvalidated) {
		t.Fatalf("read of a view opened ahead of apply: %v, want ErrViewInvalidated", err)
	}
	want := modelAt(sizes, ops, ops[9].seq)[0]
	if got := readAll(t, current); !bytes.Equal(got, want) {
		t.Fatalf("view at the applied point: %s", firstDiff(got, want))
	}
}

// TestOpenViewTime: opening a view costs the same on a 16 GiB disk as on
// a 1 GiB one (no copying, no scanning).
func TestOpenViewTime(t *testing.T) {
	for _, size := range []int64{1 << 30, 16 << 30} {
		r := newRig(t, []int64{size}, Options{})
		a := r.j.NewApplier(16)
		for _, o := range genOps(9, []int64{size}, 200, 1) {
			r.apply(a, o)
		}
		if err := a.Flush(); err != nil {
			t.Fatal(err)
		}
		scratch := filepath.Join(r.dir, "scratch")
		var worst time.Duration
		for i := range 20 {
			start := time.Now()
			v, err := r.j.OpenView(0, uint64(i*10), scratch)
			el := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			worst = max(worst, el)
			if err := v.Close(); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("disk of %d GiB: slowest OpenView %v", size>>30, worst)
		if worst > 50*time.Millisecond {
			t.Fatalf("OpenView on a %d GiB disk took %v", size>>30, worst)
		}
		st, err := os.Stat(r.replicaPath(0))
		if err != nil || st.Size() != size {
			t.Fatalf("replica: %v %v", st, err)
		}
	}
}
