package blockdev

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

func newFile(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := Create(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

func openT(t *testing.T, p string, ro bool) *Disk {
	t.Helper()
	d, err := Open(p, ro)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func fill(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func allocatedBytes(t *testing.T, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestCreate(t *testing.T) {
	p := newFile(t, 10<<20)
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 10<<20 {
		t.Fatalf("size %d", st.Size())
	}
	if a := allocatedBytes(t, p); a != 0 {
		t.Fatalf("new image not sparse: %d bytes allocated", a)
	}
	if err := Create(p, 10<<20); err != nil {
		t.Fatalf("re-create with same size: %v", err)
	}
	if err := Create(p, 5<<20); !errors.Is(err, os.ErrExist) {
		t.Fatalf("re-create with other size: got %v, want ErrExist", err)
	}
	if err := Create(filepath.Join(t.TempDir(), "x"), -1); err == nil {
		t.Fatal("negative size accepted")
	}
}

func TestOpenRejectsOtherFiles(t *testing.T) {
	if _, err := Open(t.TempDir(), false); err == nil {
		t.Fatal("opened a directory")
	}
	if _, err := Open("/dev/null", false); err == nil {
		t.Fatal("opened a character device")
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing"), false); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestFileReadWrite(t *testing.T) {
	const size = 4 << 20
	p := newFile(t, size)
	d := openT(t, p, false)
	if d.Size() != size || d.IsBlockDevice() || d.Path() != p {
		t.Fatalf("size=%d blockdev=%v path=%s", d.Size(), d.IsBlockDevice(), d.Path())
	}
	model := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200; i++ {
		off := r.Int64N(size)
		n := r.Int64N(min(size-off, 70000)) + 1
		if off+n > size {
			n = size - off
		}
		data := fill(uint64(i), int(n))
		if _, err := d.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], data)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("read back differs from model")
	}
	onDisk, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, model) {
		t.Fatal("file contents differ from model")
	}
}

func TestOutOfRange(t *testing.T) {
	p := newFile(t, 1<<20)
	d := openT(t, p, false)
	buf := make([]byte, 4096)
	cases := []struct {
		name string
		err  error
	}{
		{"read past end", func() error { _, err := d.ReadAt(buf, 1<<20-100); return err }()},
		{"read negative", func() error { _, err := d.ReadAt(buf, -1); return err }()},
		{"write past end", func() error { _, err := d.WriteAt(buf, 1<<20-100); return err }()},
		{"punch past end", d.PunchHole(1<<20-100, 4096)},
		{"zero past end", d.ZeroRange(1<<20, 1, true)},
		{"extents past end", d.Extents(0, 1<<20+1, func(int64, int64, bool) error { return nil })},
	}
	for _, c := range cases {
		if !errors.Is(c.err, ErrOutOfRange) {
			t.Errorf("%s: got %v, want ErrOutOfRange", c.name, c.err)
		}
	}
	// The image must not have grown.
	st, _ := os.Stat(p)
	if st.Size() != 1<<20 {
		t.Fatalf("image grew to %d", st.Size())
	}
	// Reading exactly up to the end is fine, and an empty read at the end too.
	if _, err := d.ReadAt(buf, 1<<20-4096); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ReadAt(nil, 1<<20); err != nil {
		t.Fatal(err)
	}
}

func TestReadOnly(t *testing.T) {
	p := newFile(t, 1<<20)
	d := openT(t, p, true)
	if _, err := d.WriteAt([]byte{1}, 0); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write: %v", err)
	}
	if err := d.PunchHole(0, 4096); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("punch: %v", err)
	}
	if err := d.ZeroRange(0, 4096, false); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("zero: %v", err)
	}
}

// collectExtents returns the walk as a compact string like "D0+4096 H4096+..."
// and checks the runs are contiguous and cover the range.
func collectExtents(t *testing.T, d *Disk, off, n int64) []string {
	t.Helper()
	var out []string
	pos := off
	err := d.Extents(off, n, func(o, l int64, data bool) error {
		if o != pos || l <= 0 {
			t.Fatalf("extent %d+%d not contiguous with %d", o, l, pos)
		}
		pos = o + l
		k := "H"
		if data {
			k = "D"
		}
		// Merge adjacent runs of the same kind; file systems may split them.
		if len(out) > 0 && out[len(out)-1][0] == k[0] {
			var po, pl int64
			parseExtent(out[len(out)-1], &po, &pl)
			out[len(out)-1] = fmtExtent(k, po, pl+l)
			return nil
		}
		out = append(out, fmtExtent(k, o, l))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if pos != off+n {
		t.Fatalf("extents ended at %d, want %d", pos, off+n)
	}
	return out
}

func fmtExtent(k string, o, l int64) string {
	return k + strconv.FormatInt(o, 10) + "+" + strconv.FormatInt(l, 10)
}

func parseExtent(s string, o, l *int64) {
	s = s[1:]
	i := strings.IndexByte(s, '+')
	*o, _ = strconv.ParseInt(s[:i], 10, 64)
	*l, _ = strconv.ParseInt(s[i+1:], 10, 64)
}

func TestPunchHoleAndExtents(t *testing.T) {
	const size = 8 << 20
	p := newFile(t, size)
	d := openT(t, p, false)
	data := fill(7, size)
	if _, err := d.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	before := allocatedBytes(t, p)
	if err := d.PunchHole(1<<20, 2<<20); err != nil {
		t.Fatal(err)
	}
	after := allocatedBytes(t, p)
	if before-after < 2<<20 {
		t.Fatalf("punch hole freed only %d bytes", before-after)
	}
	copy(data[1<<20:3<<20], make([]byte, 2<<20))
	got := make([]byte, size)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("contents after punch hole differ")
	}
	ext := collectExtents(t, d, 0, size)
	want := []string{"D0+1048576", "H1048576+2097152", "D3145728+5242880"}
	if strings.Join(ext, " ") != strings.Join(want, " ") {
		t.Fatalf("extents %v, want %v", ext, want)
	}
	// A sub-range starting inside the hole.
	ext = collectExtents(t, d, 2<<20, 2<<20)
	want = []string{"H2097152+1048576", "D3145728+1048576"}
	if strings.Join(ext, " ") != strings.Join(want, " ") {
		t.Fatalf("sub-range extents %v, want %v", ext, want)
	}
	// An unaligned punch: the partial blocks are zeroed, contents exact.
	if err := d.PunchHole(5<<20+100, 10000); err != nil {
		t.Fatal(err)
	}
	copy(data[5<<20+100:], make([]byte, 10000))
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("contents after unaligned punch hole differ")
	}
}

func TestExtentsAllHoleAndTail(t *testing.T) {
	p := newFile(t, 3<<20)
	d := openT(t, p, false)
	if ext := collectExtents(t, d, 0, 3<<20); len(ext) != 1 || ext[0] != "H0+3145728" {
		t.Fatalf("empty image extents %v", ext)
	}
	if _, err := d.WriteAt([]byte{1}, 3<<20-1); err != nil {
		t.Fatal(err)
	}
	ext := collectExtents(t, d, 0, 3<<20)
	if len(ext) != 2 || ext[0][0] != 'H' || ext[1][0] != 'D' {
		t.Fatalf("extents %v", ext)
	}
	if ext := collectExtents(t, d, 0, 0); len(ext) != 0 {
		t.Fatalf("empty range extents %v", ext)
	}
}

func TestZeroRange(t *testing.T) {
	const size = 4 << 20
	for _, mayUnmap := range []bool{false, true} {
		p := newFile(t, size)
		d := openT(t, p, false)
		data := fill(3, size)
		if _, err := d.WriteAt(data, 0); err != nil {
			t.Fatal(err)
		}
		if err := d.Sync(); err != nil {
			t.Fatal(err)
		}
		before := allocatedBytes(t, p)
		if err := d.ZeroRange(1<<20, 1<<20, mayUnmap); err != nil {
			t.Fatal(err)
		}
		if err := d.ZeroRange(3<<20+7, 5000, mayUnmap); err != nil {
			t.Fatal(err)
		}
		copy(data[1<<20:2<<20], make([]byte, 1<<20))
		copy(data[3<<20+7:], make([]byte, 5000))
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("mayUnmap=%v: contents differ", mayUnmap)
		}
		freed := before - allocatedBytes(t, p)
		if mayUnmap && freed < 1<<20 {
			t.Fatalf("mayUnmap zero freed only %d bytes", freed)
		}
		if !mayUnmap && freed != 0 {
			t.Fatalf("no-unmap zero freed %d bytes", freed)
		}
	}
}

func TestIsZero(t *testing.T) {
	for _, n := range []int{0, 1, 2, 7, 8, 15, 16, 17, 4095, 4096, 65537} {
		b := make([]byte, n)
		if !IsZero(b) {
			t.Fatalf("len %d zero buffer not zero", n)
		}
		for i := 0; i < n; i++ {
			b[i] = 1
			if IsZero(b) {
				t.Fatalf("len %d with byte %d set reported zero", n, i)
			}
			b[i] = 0
		}
	}
	b := make([]byte, 100)
	b[50] = 0x80
	if IsZero(b) {
		t.Fatal("high bit missed")
	}
}

func BenchmarkIsZero1M(b *testing.B) {
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if !IsZero(buf) {
			b.Fatal("not zero")
		}
	}
}

// TestLoopDevice exercises the block-device paths (BLKGETSIZE64, BLKDISCARD,
// BLKZEROOUT with unaligned edges) on a real loop device.
func TestLoopDevice(t *testing.T) {
	const size = 16 << 20
	p := newFile(t, size)
	dev := losetup(t, p)
	d := openT(t, dev, false)
	if !d.IsBlockDevice() || d.Size() != size {
		t.Fatalf("blockdev=%v size=%d", d.IsBlockDevice(), d.Size())
	}
	data := fill(11, size)
	if _, err := d.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.PunchHole(2<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	copy(data[2<<20:3<<20], make([]byte, 1<<20))
	if err := d.ZeroRange(5<<20+123, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	copy(data[5<<20+123:], make([]byte, 1<<20))
	if err := d.ZeroRange(9<<20, 100, true); err != nil {
		t.Fatal(err)
	}
	copy(data[9<<20:], make([]byte, 100))
	if err := d.PunchHole(10<<20+1, 511); err != nil {
		t.Fatal(err)
	}
	copy(data[10<<20+1:], make([]byte, 511))
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("device contents differ from model")
	}
	if _, err := d.WriteAt(make([]byte, 512), size); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("write past device end: %v", err)
	}
	ext := collectExtents(t, d, 0, size)
	if len(ext) != 1 || ext[0] != "D0+16777216" {
		t.Fatalf("block device extents %v", ext)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	onDisk, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, data) {
		t.Fatal("backing file differs from model")
	}
}

func losetup(t *testing.T, file string) string {
	t.Helper()
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Fatalf("losetup is required: %v", err)
	}
	out, err := exec.Command("losetup", "-f", "--show", file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup -f --show %s: %v: %s", file, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// An uncached read must see buffered writes not yet written back, and
// unaligned requests must still be served (through the cache).
func TestReadDirectSeesBufferedWrites(t *testing.T) {
	d := openT(t, newFile(t, 8<<20), false)
	want := bytes.Repeat([]byte("standby!"), 64<<10/8)
	if _, err := d.WriteAt(want, 1<<20); err != nil {
		t.Fatal(err)
	}
	got := AlignedBuffer(len(want))
	if uintptr(unsafe.Pointer(&got[0]))%DirectAlign != 0 {
		t.Fatal("AlignedBuffer is not aligned")
	}
	if _, err := d.ReadDirect(got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("uncached read missed a buffered write")
	}
	odd := make([]byte, 1000)
	if _, err := d.ReadDirect(odd, 1<<20+8); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(odd, want[8:1008]) {
		t.Fatal("unaligned read returned wrong data")
	}
	if _, err := d.ReadDirect(make([]byte, 4096), 8<<20); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("read past the end: %v", err)
	}
}

// An uncached write must replace what buffered writes left in the page
// cache, from an unaligned buffer too; unaligned ranges go through the
// cache; and the data is there after a reopen.
func TestWriteDirectCoherentWithCache(t *testing.T) {
	p := newFile(t, 8<<20)
	d := openT(t, p, false)
	old := bytes.Repeat([]byte("old-data"), 128<<10/8)
	if _, err := d.WriteAt(old, 1<<20); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(old))
	if _, err := d.ReadAt(got, 1<<20); err != nil { // cached now
		t.Fatal(err)
	}
	backing := make([]byte, 64<<10+1)
	src := backing[1:] // never 4 KiB-aligned
	for i := range src {
		src[i] = byte(i*7 + 3)
	}
	var scratch []byte
	if _, err := d.WriteDirect(src, 1<<20+4096, &scratch); err != nil {
		t.Fatal(err)
	}
	if cap(scratch) < len(src) {
		t.Fatal("an unaligned buffer was not staged in the scratch buffer")
	}
	oddSrc := []byte("unaligned range")
	if _, err := d.WriteDirect(oddSrc, 3<<20+5, &scratch); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteDirect(make([]byte, 4096), 8<<20, &scratch); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("write past the end: %v", err)
	}
	check := func(d *Disk) {
		t.Helper()
		if _, err := d.ReadAt(got, 1<<20); err != nil {
			t.Fatal(err)
		}
		want := append(append(append([]byte(nil), old[:4096]...), src...), old[4096+len(src):]...)
		if !bytes.Equal(got, want) {
			t.Fatal("a cached read does not show the uncached write over it")
		}
		odd := make([]byte, len(oddSrc))
		if _, err := d.ReadAt(odd, 3<<20+5); err != nil || !bytes.Equal(odd, oddSrc) {
			t.Fatalf("unaligned write: %q, %v", odd, err)
		}
	}
	check(d)
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	d.Close()
	check(openT(t, p, false))
}
