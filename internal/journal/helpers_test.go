package journal

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"standby/internal/blockdev"
)

// testSeed is the seed of a randomised test: STANDBY_TEST_SEED replays a
// failure, otherwise the clock picks one; the test logs it either way.
func testSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("STANDBY_TEST_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("STANDBY_TEST_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (STANDBY_TEST_SEED replays it)", seed)
	return seed
}

// op is one data record of the model stream.
type op struct {
	seq  uint64
	disk int
	off  int64
	n    int64
	data []byte // nil for a zeroing record
}

// genOps makes a deterministic stream of records: unaligned offsets and
// lengths, mostly small, some large, some zeroing, some all-zero data, and
// seqs with gaps (the markers in between carry no data).
func genOps(seed uint64, sizes []int64, count int, first uint64) []op {
	rng := rand.New(rand.NewPCG(seed, 99))
	ops := make([]op, 0, count)
	seq := first
	for range count {
		d := rng.IntN(len(sizes))
		size := sizes[d]
		var n int64
		switch x := rng.IntN(100); {
		case x < 60:
			n = 1 + rng.Int64N(16<<10)
		case x < 95:
			n = 1 + rng.Int64N(128<<10)
		default:
			n = 1 + rng.Int64N(1200<<10)
		}
		n = min(n, size)
		off := rng.Int64N(size - n + 1)
		o := op{seq: seq, disk: d, off: off, n: n}
		switch x := rng.IntN(100); {
		case x < 12:
			// zeroing record: data stays nil
		case x < 20:
			o.data = make([]byte, n) // a write of zeros
		default:
			o.data = make([]byte, n)
			fillPattern(o.data, seq, rng)
		}
		ops = append(ops, o)
		seq += 1 + uint64(rng.IntN(3))
	}
	return ops
}

// lastDataSeq is the seq of the last record of ops that carries data: its
// Preserve always stores a before-image, where a zeroing record over blocks
// already zero stores none and leaves LastSeq where it was.
func lastDataSeq(ops []op) uint64 {
	for i := len(ops) - 1; i >= 0; i-- {
		if ops[i].data != nil {
			return ops[i].seq
		}
	}
	return 0
}

// fillPattern writes bytes that identify the record and the position in
// it, with runs of zeros so that some blocks of a write are all zero. It
// works by copying, not byte by byte: the race detector makes byte loops
// slow enough to matter here.
func fillPattern(b []byte, seq uint64, rng *rand.Rand) {
	var tag [16]byte
	for i := 0; i < len(b); i += 512 {
		binary.LittleEndian.PutUint64(tag[0:], seq)
		binary.LittleEndian.PutUint64(tag[8:], uint64(i))
		n := copy(b[i:], tag[:])
		copy(b[i+n:min(i+512, len(b))], patternBytes[:])
	}
	if len(b) > 8192 && rng.IntN(3) == 0 {
		s := rng.IntN(len(b) - 8192)
		clear(b[s : s+8192])
	}
}

// patternBytes is filler after each tag; read-only.
var patternBytes = func() (p [512]byte) {
	for i := range p {
		p[i] = byte(i*7 + 1)
	}
	return p
}()

// applyModel performs o on an in-memory disk image.
func applyModel(model [][]byte, o op) {
	if o.data == nil {
		clear(model[o.disk][o.off : o.off+o.n])
		return
	}
	copy(model[o.disk][o.off:], o.data)
}

// rig is a machine with replica files and a journal.
type rig struct {
	t       testing.TB
	dir     string
	sizes   []int64
	replica []*blockdev.Disk
	disks   []Disk
	j       *Journal
	opts    Options
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newRig(t testing.TB, sizes []int64, opts Options) *rig {
	t.Helper()
	r := &rig{t: t, dir: t.TempDir(), sizes: sizes, opts: opts}
	if r.opts.Logger == nil {
		r.opts.Logger = quietLogger()
	}
	for i, s := range sizes {
		if err := blockdev.Create(r.replicaPath(i), s); err != nil {
			t.Fatal(err)
		}
	}
	r.openReplicas()
	r.open()
	t.Cleanup(func() { r.close() })
	return r
}

func (r *rig) replicaPath(i int) string { return filepath.Join(r.dir, fmt.Sprintf("disk%d.img", i)) }
func (r *rig) journalDir() string       { return filepath.Join(r.dir, "journal") }

func (r *rig) openReplicas() {
	r.t.Helper()
	r.replica, r.disks = nil, nil
	for i := range r.sizes {
		d, err := blockdev.Open(r.replicaPath(i), false)
		if err != nil {
			r.t.Fatal(err)
		}
		r.replica = append(r.replica, d)
		r.disks = append(r.disks, FileDisk(d))
	}
}

func (r *rig) open() {
	r.t.Helper()
	j, err := Open(r.journalDir(), r.disks, r.opts)
	if err != nil {
		r.t.Fatalf("opening journal: %v", err)
	}
	r.j = j
}

func (r *rig) close() {
	if r.j != nil {
		if err := r.j.Close(); err != nil {
			r.t.Errorf("closing journal: %v", err)
		}
		r.j = nil
	}
	for _, d := range r.replica {
		d.Close()
	}
	r.replica = nil
}

// apply runs o through the protocol, as the master target's apply loop will.
func (r *rig) apply(a *Applier, o op) {
	r.t.Helper()
	if err := a.Apply(o.seq, o.disk, o.off, o.n, o.data == nil, r.writer(o)); err != nil {
		r.t.Fatalf("apply seq %d: %v", o.seq, err)
	}
}

func (r *rig) writer(o op) func() error {
	d := r.replica[o.disk]
	return func() error {
		if o.data == nil {
			return d.ZeroRange(o.off, o.n, true)
		}
		_, err := d.WriteAt(o.data, o.off)
		return err
	}
}

func newModel(sizes []int64) [][]byte {
	m := make([][]byte, len(sizes))
	for i, s := range sizes {
		m[i] = make([]byte, s)
	}
	return m
}

func cloneModel(m [][]byte) [][]byte {
	c := make([][]byte, len(m))
	for i := range m {
		c[i] = bytes.Clone(m[i])
	}
	return c
}

// modelAt is the expected content of every disk at point p.
func modelAt(sizes []int64, ops []op, p uint64) [][]byte {
	m := newModel(sizes)
	for _, o := range ops {
		if o.seq > p {
			break
		}
		applyModel(m, o)
	}
	return m
}

func readAll(t testing.TB, v *View) []byte {
	t.Helper()
	b := make([]byte, v.Size())
	// Odd-sized reads, so requests straddle blocks and chunks.
	const step = 300_001
	for off := int64(0); off < v.Size(); off += step {
		end := min(off+step, v.Size())
		if n, err := v.ReadAt(b[off:end], off); err != nil || n != int(end-off) {
			t.Fatalf("view read at %d: n=%d err=%v", off, n, err)
		}
	}
	return b
}

// firstDiff describes where two images differ, for failure messages.
func firstDiff(got, want []byte) string {
	for i := range want {
		if got[i] != want[i] {
			return fmt.Sprintf("first difference at relative byte %d (relative block %d): got %#x want %#x", i, i/4096, got[i], want[i])
		}
	}
	return "equal"
}

// checkView compares a view with want piece by piece, through a small
// buffer: whole-disk allocations are what makes the race detector slow.
func checkView(t testing.TB, j *Journal, disk int, point uint64, want []byte, scratch string) {
	t.Helper()
	v, err := j.OpenView(disk, point, scratch)
	if err != nil {
		t.Fatalf("opening view of disk %d at %d: %v", disk, point, err)
	}
	defer v.Close()
	if v.Size() != int64(len(want)) {
		t.Fatalf("view of disk %d has %d bytes, want %d", disk, v.Size(), len(want))
	}
	const step = 300_001
	buf := make([]byte, step)
	for off := int64(0); off < v.Size(); off += step {
		n := min(step, v.Size()-off)
		if got, err := v.ReadAt(buf[:n], off); err != nil || got != int(n) {
			t.Fatalf("view of disk %d at %d, read at %d: n=%d err=%v", disk, point, off, got, err)
		}
		if !bytes.Equal(buf[:n], want[off:off+n]) {
			t.Fatalf("view of disk %d at %d, bytes %d..%d: %s", disk, point, off, off+n, firstDiff(buf[:n], want[off:off+n]))
		}
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// applyAll applies ops through one applier of depth 8 and flushes it.
func (r *rig) applyAll(ops []op) {
	r.t.Helper()
	a := r.j.NewApplier(8)
	for _, o := range ops {
		r.apply(a, o)
	}
	if err := a.Flush(); err != nil {
		r.t.Fatal(err)
	}
}
