package capture

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

const scanBS = 64 << 10

// scanDisk is a disk image file with an in-memory copy to check against.
type scanDisk struct {
	path string
	data []byte
}

func newScanDisk(t testing.TB, size int64, rnd *rand.Rand) *scanDisk {
	t.Helper()
	d := &scanDisk{path: filepath.Join(t.TempDir(), "disk.img"), data: make([]byte, size)}
	// Every third block stays zero, like unused space.
	for b := int64(0); b*scanBS < size; b++ {
		if b%3 != 0 {
			fillRandom(rnd, d.data[b*scanBS:min((b+1)*scanBS, size)])
		}
	}
	d.sync(t)
	return d
}

func fillRandom(rnd *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(rnd.Uint32() | 1) // never a zero block
	}
}

func (d *scanDisk) sync(t testing.TB) {
	t.Helper()
	if err := os.WriteFile(d.path, d.data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (d *scanDisk) open(t testing.TB) *os.File {
	t.Helper()
	f, err := os.Open(d.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// changedBlock is one block as reported by a pass, after splitting merges.
type changedBlock struct {
	blk  int64
	zero bool
}

// runPass returns the changed blocks in order, checking each Change's data
// against the disk and applying it to replica (which must end up equal).
func runPass(t *testing.T, s *Scanner, d *scanDisk, replica []byte) ([]changedBlock, PassStats) {
	t.Helper()
	var got []changedBlock
	lastEnd := int64(-1)
	st, err := s.Pass(context.Background(), d.open(t), func(c Change) error {
		if c.Off <= lastEnd-1 || c.Off%scanBS != 0 || c.Len <= 0 || c.Len > maxMerge {
			return fmt.Errorf("bad change off=%d len=%d after %d", c.Off, c.Len, lastEnd)
		}
		lastEnd = c.Off + c.Len
		if c.Zero {
			if c.Data != nil {
				return errors.New("zero change with data")
			}
			if !bytes.Equal(d.data[c.Off:c.Off+c.Len], make([]byte, c.Len)) {
				return fmt.Errorf("zero change at %d over non-zero data", c.Off)
			}
			clear(replica[c.Off : c.Off+c.Len])
		} else {
			if int64(len(c.Data)) != c.Len || !bytes.Equal(c.Data, d.data[c.Off:c.Off+c.Len]) {
				return fmt.Errorf("change at %d: data differs from disk", c.Off)
			}
			copy(replica[c.Off:], c.Data)
		}
		for o := c.Off; o < c.Off+c.Len; o += scanBS {
			got = append(got, changedBlock{o / scanBS, c.Zero})
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Pass: %v", err)
	}
	if !bytes.Equal(replica, d.data) {
		t.Fatal("replica built from the changes differs from the disk")
	}
	return got, st
}

func TestScannerPasses(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	const size = 10<<20 + 12345 // partial last block; pieces of 4 MiB
	d := newScanDisk(t, size, rnd)
	state := filepath.Join(t.TempDir(), "fp")
	opts := ScanOptions{BlockSize: scanBS, Logger: quietLogger()}
	s, err := OpenScanner(state, size, opts)
	if err != nil {
		t.Fatal(err)
	}
	replica := make([]byte, size) // the far end starts empty
	nBlocks := int64(size+scanBS-1) / scanBS

	// First pass: every non-zero block, none as zero.
	got, st := runPass(t, s, d, replica)
	var want []changedBlock
	for b := range nBlocks {
		if b%3 != 0 {
			want = append(want, changedBlock{b, false})
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("first pass: %d blocks changed, want %d (the non-zero ones)", len(got), len(want))
	}
	if st.Scanned != size || st.Changed != int64(len(want)) {
		t.Fatalf("first pass stats %+v", st)
	}
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, _ := runPass(t, s, d, replica); len(got) != 0 {
		t.Fatalf("unchanged disk: %d blocks reported", len(got))
	}
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}

	// Modify: new data in a zero block and a data block, a run of three
	// adjacent blocks across a piece boundary, zero two data blocks, and
	// touch one byte of the partial last block.
	fillRandom(rnd, d.data[3*scanBS:4*scanBS])   // was zero
	d.data[7*scanBS+100] ^= 0xff                 // one byte
	fillRandom(rnd, d.data[63*scanBS:66*scanBS]) // 63,64,65 (piece boundary at 64)
	clear(d.data[10*scanBS : 11*scanBS])         // zeroed
	clear(d.data[11*scanBS : 12*scanBS])         // zeroed, adjacent: merged
	d.data[size-1] ^= 1                          // last partial block
	d.sync(t)
	want = []changedBlock{{3, false}, {7, false}, {10, true}, {11, true}, {63, false}, {64, false}, {65, false}, {nBlocks - 1, false}}

	got, st = runPass(t, s, d, replica)
	if !slices.Equal(got, want) {
		t.Fatalf("second pass changed %v, want %v", got, want)
	}
	if st.ChangedBytes != int64(len(want)-1)*scanBS+int64(size%scanBS) {
		t.Fatalf("ChangedBytes = %d", st.ChangedBytes)
	}
	// No commit: the far end may not have it, so the next pass says it again.
	if got, _ := runPass(t, s, d, replica); !slices.Equal(got, want) {
		t.Fatalf("pass without commit changed %v, want %v", got, want)
	}
	// Also after a restart of the agent.
	s, err = OpenScanner(state, size, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := runPass(t, s, d, replica); !slices.Equal(got, want) {
		t.Fatalf("after reopen changed %v, want %v", got, want)
	}
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenScanner(state, size, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := runPass(t, s, d, replica); len(got) != 0 {
		t.Fatalf("after commit and reopen: %d blocks reported", len(got))
	}
}

func TestScannerAbortedPassCannotCommit(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	d := newScanDisk(t, 1<<20, rnd)
	state := filepath.Join(t.TempDir(), "fp")
	s, err := OpenScanner(state, 1<<20, ScanOptions{BlockSize: scanBS, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("link down")
	calls := 0
	_, err = s.Pass(context.Background(), d.open(t), func(Change) error {
		calls++
		return boom
	})
	if !errors.Is(err, boom) || calls != 1 {
		t.Fatalf("Pass = %v after %d calls, want the callback's error after 1", err, calls)
	}
	if err := s.Commit(); err == nil {
		t.Fatal("Commit after a failed pass succeeded")
	}
	if _, err := os.Stat(state + ".pending"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pending file left behind: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Pass(ctx, d.open(t), func(Change) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Pass with cancelled context = %v", err)
	}
	// Short disk: a read error, not a silent short pass.
	short := bytes.NewReader(d.data[:1<<19])
	if _, err := s.Pass(context.Background(), short, func(Change) error { return nil }); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Pass over a short disk = %v", err)
	}
}

func TestScannerCorruptFingerprints(t *testing.T) {
	rnd := rand.New(rand.NewPCG(5, 6))
	const size = 8 << 20
	d := newScanDisk(t, size, rnd)
	state := filepath.Join(t.TempDir(), "fp")
	opts := ScanOptions{BlockSize: scanBS, Logger: quietLogger()}
	s, _ := OpenScanner(state, size, opts)
	runPass(t, s, d, make([]byte, size))
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(state)

	bad := slices.Clone(good)
	bad[scanHeaderSize+32*50+3] ^= 1 // a fingerprint
	os.WriteFile(state, bad, 0o644)
	s, err := OpenScanner(state, size, opts)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Pass(context.Background(), d.open(t), func(Change) error { return nil })
	if !errors.Is(err, ErrCorruptState) {
		t.Fatalf("Pass over damaged fingerprints = %v, want ErrCorruptState", err)
	}

	os.WriteFile(state, good[:len(good)-1], 0o644)
	if _, err := OpenScanner(state, size, opts); !errors.Is(err, ErrCorruptState) {
		t.Fatalf("truncated fingerprints: %v", err)
	}
	bad = slices.Clone(good)
	bad[20] ^= 1
	os.WriteFile(state, bad, 0o644)
	if _, err := OpenScanner(state, size, opts); !errors.Is(err, ErrCorruptState) {
		t.Fatalf("damaged header: %v", err)
	}
	os.WriteFile(state, good, 0o644)
	if _, err := OpenScanner(state, size+1, opts); !errors.Is(err, ErrSizeMismatch) {
		t.Fatalf("other disk size: %v", err)
	}
}

func TestFingerprints(t *testing.T) {
	rnd := rand.New(rand.NewPCG(7, 8))
	data := make([]byte, 9<<20+77)
	fillRandom(rnd, data[:5<<20])
	const bs = 128 << 10
	var offs []int64
	err := Fingerprints(context.Background(), bytes.NewReader(data), int64(len(data)), bs, func(off int64, sum [32]byte) error {
		if sum != sha256.Sum256(data[off:min(off+bs, int64(len(data)))]) {
			return fmt.Errorf("wrong sum at %d", off)
		}
		offs = append(offs, off)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := (len(data) + bs - 1) / bs; len(offs) != want || !slices.IsSorted(offs) {
		t.Fatalf("%d fingerprints, want %d in order", len(offs), want)
	}
}

func TestCompare(t *testing.T) {
	rnd := rand.New(rand.NewPCG(9, 10))
	const size = 13<<20 + 1000
	const bs = 4096
	a := make([]byte, size)
	fillRandom(rnd, a)
	b := slices.Clone(a)
	b[0] ^= 1                                // block 0
	b[5*bs+7] ^= 1                           // blocks 5..6 coalesced
	b[6*bs+4095] ^= 1                        //
	for o := 4<<20 - bs; o < 4<<20+bs; o++ { // across a piece boundary
		b[o] ^= 0x80
	}
	b[size-1] ^= 1 // the partial last block
	want := []Range{{0, bs}, {5 * bs, 2 * bs}, {4<<20 - bs, 2 * bs}, {size / bs * bs, size % bs}}
	got, err := Compare(context.Background(), bytes.NewReader(a), bytes.NewReader(b), size, bs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Compare = %v, want %v", got, want)
	}
	if got, _ := Compare(context.Background(), bytes.NewReader(a), bytes.NewReader(a), size, bs); len(got) != 0 {
		t.Fatalf("identical disks: %v", got)
	}
	if _, err := Compare(context.Background(), bytes.NewReader(a), bytes.NewReader(b[:100]), size, bs); err == nil {
		t.Fatal("Compare with a short disk succeeded")
	}
}
