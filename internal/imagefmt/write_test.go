package imagefmt_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"standby/internal/imagefmt"
	"standby/internal/imagefmt/imagefmttest"
)

// mainSize is a multiple of 512 that is neither a multiple of 4 KiB nor of
// a qcow2 cluster, so the last cluster and the last raw block are partial.
const mainSize = 100<<20 + 12800

var formats = imagefmt.Formats()

func ext(f imagefmt.Format) string {
	if f == imagefmt.FormatRaw {
		return "img"
	}
	return string(f)
}

// sources are the three ways the same disk reaches Write: a sparse file
// (extents from SEEK_DATA), an in-memory view that knows its extents
// exactly (and fails any read outside them), and a reader that knows
// nothing (one extent; zero detection does all the work).
func sources(t *testing.T, path string, layout imagefmttest.Layout, disk []byte) map[string]imagefmt.Source {
	t.Helper()
	fileSrc, err := imagefmt.OpenFileSource(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fileSrc.Close() })
	view := &imagefmttest.ExtentSource{Disk: disk}
	for _, r := range layout.Regions {
		if r.Kind != imagefmttest.Hole {
			view.Ranges = append(view.Ranges, [2]int64{r.Off, r.Len})
		}
	}
	return map[string]imagefmt.Source{
		"file":  fileSrc,
		"view":  view,
		"whole": imagefmt.ReaderSource{R: fileSrc, N: int64(len(disk))},
	}
}

func TestWriteFormats(t *testing.T) {
	dir := t.TempDir()
	srcPath, layout, disk := makeDisk(t, dir, imagefmttest.Spec{Size: mainSize, DataFraction: 0.5, Seed: 1})
	var holes int64
	for _, r := range layout.Regions {
		if r.Kind == imagefmttest.Hole {
			holes += r.Len
		}
	}
	if holes == 0 || layout.DataBytes() == 0 || holes+layout.DataBytes() == mainSize {
		t.Fatalf("generated disk lacks holes, data or written zeros: %+v", layout)
	}
	for _, format := range formats {
		for name, src := range sources(t, srcPath, layout, disk) {
			t.Run(fmt.Sprintf("%s/%s", format, name), func(t *testing.T) {
				out := filepath.Join(t.TempDir(), "disk."+ext(format))
				res, err := imagefmt.Write(context.Background(), src, format, out, opts(t))
				if err != nil {
					t.Fatal(err)
				}
				verifyWithQemu(t, res, srcPath, disk)
				checkSparse(t, res, disk)
			})
		}
	}
}

// checkSparse asserts that zero blocks and holes took no space.
func checkSparse(t *testing.T, res imagefmt.Result, disk []byte) {
	t.Helper()
	switch res.Format {
	case imagefmt.FormatRaw, imagefmt.FormatVMDK:
		want := nonZeroBytes(disk, 4096)
		if res.DataBytes != want {
			t.Errorf("DataBytes %d, want %d (non-zero 4 KiB blocks)", res.DataBytes, want)
		}
		data := res.Files[len(res.Files)-1]
		if a := allocated(t, data); a < want || a > want+1<<20 {
			t.Errorf("%s allocates %d bytes for %d bytes of data (size %d)", data, a, want, res.Size)
		}
		if fi, err := os.Stat(data); err != nil || fi.Size() != res.Size {
			t.Errorf("%s: size %v, want %d (%v)", data, fi.Size(), res.Size, err)
		}
	case imagefmt.FormatQcow2:
		const cs = 64 << 10
		want := nonZeroBytes(disk, cs)
		if res.DataBytes != want {
			t.Errorf("DataBytes %d, want %d (non-zero clusters)", res.DataBytes, want)
		}
		fi, err := os.Stat(res.Path)
		if err != nil {
			t.Fatal(err)
		}
		// Header, one L2 table per 512 MiB, L1, one refcount block and
		// one refcount table cluster: five clusters of metadata here.
		dataClusters := (want + cs - 1) / cs
		if meta := fi.Size() - dataClusters*cs; meta != 5*cs {
			t.Errorf("qcow2 file is %d bytes: %d bytes beyond its %d data clusters, want %d", fi.Size(), meta, dataClusters, 5*cs)
		}
		if a := allocated(t, res.Path); a > fi.Size() {
			t.Errorf("qcow2 allocates %d bytes, more than its size %d", a, fi.Size())
		}
	}
	if len(res.Files) != map[imagefmt.Format]int{imagefmt.FormatVMDK: 2}[res.Format]+boolInt(res.Format != imagefmt.FormatVMDK) {
		t.Errorf("Files %v", res.Files)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestUnalignedSizeAndExtents: a disk whose size is not a multiple of 512
// and whose extents start and end anywhere. qcow2 and vmdk pad the image to
// whole sectors with zeros.
func TestUnalignedSizeAndExtents(t *testing.T) {
	dir := t.TempDir()
	const size = 5<<20 + 12345
	srcPath, layout, disk := makeDisk(t, dir, imagefmttest.Spec{Size: size, DataFraction: 0.5, Seed: 2, Align: 1, MaxRegion: 300 << 10})
	for _, format := range formats {
		for name, src := range sources(t, srcPath, layout, disk) {
			t.Run(fmt.Sprintf("%s/%s", format, name), func(t *testing.T) {
				out := filepath.Join(t.TempDir(), "disk."+ext(format))
				res, err := imagefmt.Write(context.Background(), src, format, out, opts(t))
				if err != nil {
					t.Fatal(err)
				}
				wantSize := int64(size)
				if format != imagefmt.FormatRaw {
					wantSize = (size + 511) / 512 * 512
				}
				if res.Size != wantSize {
					t.Fatalf("Size %d, want %d", res.Size, wantSize)
				}
				verifyWithQemu(t, res, srcPath, disk)
			})
		}
	}
}

// TestQcow2ClusterSizes covers the smallest and largest clusters qemu
// accepts. With 512-byte clusters an L2 table maps only 32 KiB, so one chunk
// spans many tables.
func TestQcow2ClusterSizes(t *testing.T) {
	dir := t.TempDir()
	srcPath, layout, disk := makeDisk(t, dir, imagefmttest.Spec{Size: 12<<20 + 1536, DataFraction: 0.6, Seed: 3, Align: 512, MaxRegion: 256 << 10})
	src := sources(t, srcPath, layout, disk)["view"]
	for _, cs := range []int64{512, 4096, 2 << 20} {
		t.Run(fmt.Sprint(cs), func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "disk.qcow2")
			res, err := imagefmt.Write(context.Background(), src, imagefmt.FormatQcow2, out, withCluster(opts(t), cs))
			if err != nil {
				t.Fatal(err)
			}
			verifyWithQemu(t, res, srcPath, disk)
			info, _ := qemuImg(t, "info", out)
			if !strings.Contains(info, fmt.Sprintf("cluster_size: %d", cs)) {
				t.Fatalf("qemu-img info does not show cluster size %d:\n%s", cs, info)
			}
			if want := nonZeroBytes(disk, int(cs)); res.DataBytes != want {
				t.Fatalf("DataBytes %d, want %d", res.DataBytes, want)
			}
		})
	}
	for _, cs := range []int64{256, 3000, 4 << 20} {
		_, err := imagefmt.Write(context.Background(), src, imagefmt.FormatQcow2, filepath.Join(dir, "bad.qcow2"), withCluster(opts(t), cs))
		if err == nil {
			t.Errorf("cluster size %d accepted", cs)
		}
	}
	if names := dirEntries(t, dir); len(names) != 1 {
		t.Fatalf("rejected writes left files: %v", names)
	}
}

// sparseSource is a huge disk with a few blocks of data.
type sparseSource struct {
	size   int64
	blocks []sparseBlock // ascending
}

type sparseBlock struct {
	off  int64
	data []byte
}

func (s *sparseSource) Size() int64 { return s.size }

func (s *sparseSource) ReadAt(p []byte, off int64) (int, error) {
	for _, b := range s.blocks {
		if off >= b.off && off+int64(len(p)) <= b.off+int64(len(b.data)) {
			return copy(p, b.data[off-b.off:]), nil
		}
	}
	return 0, fmt.Errorf("read [%d, +%d) outside the data", off, len(p))
}

func (s *sparseSource) Extents(ctx context.Context, fn func(off, n int64) error) error {
	for _, b := range s.blocks {
		if err := fn(b.off, int64(len(b.data))); err != nil {
			return err
		}
	}
	return nil
}

// TestHugeSparseDisk: a 2 TiB disk with data at the start, across an L2
// table boundary, and in its last sector. Only the data is read and written,
// so it takes no longer than a small disk.
func TestHugeSparseDisk(t *testing.T) {
	const size = 2<<40 + 512
	src := &sparseSource{size: size}
	for i, off := range []int64{0, 512<<20 - 4096, 1 << 40, size - 512} {
		data := make([]byte, min(1<<20, size-off))
		for j := range data {
			data[j] = byte(i*31 + j*7 + 1)
		}
		src.blocks = append(src.blocks, sparseBlock{off, data})
	}
	dir := t.TempDir()
	raw := filepath.Join(dir, "source.raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range src.blocks {
		if _, err := f.WriteAt(b.data, b.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, format := range formats {
		t.Run(string(format), func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "disk."+ext(format))
			start := time.Now()
			res, err := imagefmt.Write(context.Background(), src, format, out, opts(t))
			if err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d > 30*time.Second {
				t.Errorf("writing %d bytes of data took %v", res.DataBytes, d)
			}
			gran := int64(4096)
			if format == imagefmt.FormatQcow2 {
				gran = 64 << 10
			}
			// Whole granules (4 KiB blocks, clusters) are stored.
			var want int64
			for _, b := range src.blocks {
				start := b.off / gran * gran
				end := min((b.off+int64(len(b.data))+gran-1)/gran*gran, size)
				want += end - start
			}
			if res.DataBytes != want || res.Size != size {
				t.Fatalf("DataBytes %d Size %d, want %d %d", res.DataBytes, res.Size, want, size)
			}
			if format == imagefmt.FormatQcow2 {
				if out, code := qemuImg(t, "check", "-f", "qcow2", out); code != 0 || !strings.Contains(out, "No errors were found") {
					t.Fatalf("qemu-img check: exit %d\n%s", code, out)
				}
			}
			if out, code := qemuImg(t, "compare", "-f", qemuFormat(format), "-F", "raw", out, raw); code != 0 {
				t.Fatalf("qemu-img compare: exit %d\n%s", code, out)
			}
			if a := allocated(t, res.Files[len(res.Files)-1]); a > want+8<<20 {
				t.Fatalf("image allocates %d bytes for %d bytes of data", a, want)
			}
		})
	}
}

// TestEmptyDisks: no data at all, and no size at all.
func TestEmptyDisks(t *testing.T) {
	dir := t.TempDir()
	for _, size := range []int64{0, 64 << 20} {
		raw := filepath.Join(dir, fmt.Sprintf("empty-%d.raw", size))
		if err := os.WriteFile(raw, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(raw, size); err != nil {
			t.Fatal(err)
		}
		for _, format := range formats {
			if size == 0 && format == imagefmt.FormatVMDK {
				// A VMDK extent cannot have zero sectors.
				d := t.TempDir()
				_, err := imagefmt.Write(context.Background(), imagefmt.ReaderSource{R: zeroReader{}}, format, filepath.Join(d, "x.vmdk"), opts(t))
				if err == nil || len(dirEntries(t, d)) != 0 {
					t.Fatalf("empty VMDK: err = %v, files %v", err, dirEntries(t, d))
				}
				continue
			}
			t.Run(fmt.Sprintf("%s/%d", format, size), func(t *testing.T) {
				out := filepath.Join(t.TempDir(), "disk."+ext(format))
				src := imagefmt.ReaderSource{R: zeroReader{}, N: size}
				res, err := imagefmt.Write(context.Background(), src, format, out, opts(t))
				if err != nil {
					t.Fatal(err)
				}
				if res.DataBytes != 0 {
					t.Fatalf("DataBytes %d", res.DataBytes)
				}
				verifyWithQemu(t, res, raw, make([]byte, size))
			})
		}
	}
}

type zeroReader struct{}

func (zeroReader) ReadAt(p []byte, _ int64) (int, error) { clear(p); return len(p), nil }

func TestVMDKDescriptor(t *testing.T) {
	dir := t.TempDir()
	srcPath, layout, disk := makeDisk(t, dir, imagefmttest.Spec{Size: 3 << 20, DataFraction: 0.5, Seed: 4})
	src := sources(t, srcPath, layout, disk)["file"]
	for _, adapter := range []string{"", "ide", "buslogic", "lsilogic", "legacyESX"} {
		t.Run(adapter, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "web1 disk0.vmdk")
			res, err := imagefmt.Write(context.Background(), src, imagefmt.FormatVMDK, out, withAdapter(opts(t), adapter))
			if err != nil {
				t.Fatal(err)
			}
			flat := filepath.Join(filepath.Dir(out), "web1 disk0-flat.vmdk")
			if len(res.Files) != 2 || res.Files[0] != out || res.Files[1] != flat {
				t.Fatalf("Files %v", res.Files)
			}
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			want := adapter
			if want == "" {
				want = "lsilogic"
			}
			heads := "255"
			if want == "ide" {
				heads = "16"
			}
			for _, line := range []string{
				"# Disk DescriptorFile", "version=1", `createType="monolithicFlat"`, "parentCID=ffffffff",
				`RW 6144 FLAT "web1 disk0-flat.vmdk" 0`,
				`ddb.adapterType = "` + want + `"`, `ddb.geometry.heads = "` + heads + `"`, `ddb.geometry.sectors = "63"`,
			} {
				if !strings.Contains(string(b), line+"\n") {
					t.Errorf("descriptor lacks %q:\n%s", line, b)
				}
			}
			verifyWithQemu(t, res, srcPath, disk)
		})
	}
	if _, err := imagefmt.Write(context.Background(), src, imagefmt.FormatVMDK, filepath.Join(dir, "x.vmdk"), withAdapter(opts(t), "nvme")); err == nil {
		t.Fatal("unknown adapter type accepted")
	}
	// The extent's name goes inside quotes in the descriptor.
	if _, err := imagefmt.Write(context.Background(), src, imagefmt.FormatVMDK, filepath.Join(dir, `a"b.vmdk`), opts(t)); err == nil {
		t.Fatal(`extent name with " accepted`)
	}
	if names := dirEntries(t, dir); len(names) != 1 {
		t.Fatalf("refused writes left files: %v", names)
	}
}

func TestRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	srcPath, layout, disk := makeDisk(t, dir, imagefmttest.Spec{Size: 1 << 20, DataFraction: 0.5, Seed: 5})
	src := sources(t, srcPath, layout, disk)["view"]
	for _, format := range formats {
		t.Run(string(format), func(t *testing.T) {
			d := t.TempDir()
			out := filepath.Join(d, "disk."+ext(format))
			existing := out
			if format == imagefmt.FormatVMDK {
				existing = filepath.Join(d, "disk-flat.vmdk") // only the extent is in the way
			}
			if err := os.WriteFile(existing, []byte("precious"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := imagefmt.Write(context.Background(), src, format, out, opts(t))
			if !errors.Is(err, fs.ErrExist) {
				t.Fatalf("err = %v, want fs.ErrExist", err)
			}
			if b, _ := os.ReadFile(existing); string(b) != "precious" {
				t.Fatalf("existing file changed to %q", b)
			}
			if names := dirEntries(t, d); len(names) != 1 {
				t.Fatalf("refused write left files: %v", names)
			}
		})
	}
}

// racingSource creates a file under the image's final name in the middle
// of the export, as a second export to the same path would.
type racingSource struct {
	imagefmt.Source
	path string
	done bool
}

func (r *racingSource) ReadAt(p []byte, off int64) (int, error) {
	if !r.done && off > 0 {
		r.done = true
		if err := os.WriteFile(r.path, []byte("the other export"), 0o600); err != nil {
			return 0, err
		}
	}
	return r.Source.ReadAt(p, off)
}

// TestRefusesToOverwriteLateComer: a file that appears under the final name
// after Write has started is not replaced either.
func TestRefusesToOverwriteLateComer(t *testing.T) {
	dir := t.TempDir()
	srcPath, layout, disk := makeDisk(t, dir, imagefmttest.Spec{Size: 4 << 20, DataFraction: 0.8, Seed: 9, MaxRegion: 64 << 10})
	for _, format := range formats {
		t.Run(string(format), func(t *testing.T) {
			d := t.TempDir()
			out := filepath.Join(d, "disk."+ext(format))
			src := &racingSource{Source: sources(t, srcPath, layout, disk)["view"], path: out}
			_, err := imagefmt.Write(context.Background(), src, format, out, opts(t))
			if !errors.Is(err, fs.ErrExist) {
				t.Fatalf("err = %v, want fs.ErrExist", err)
			}
			if b, _ := os.ReadFile(out); string(b) != "the other export" {
				t.Fatalf("%s was replaced: %q", out, b)
			}
			if names := dirEntries(t, d); len(names) != 1 {
				t.Fatalf("refused write left files: %v", names)
			}
		})
	}
}

// cancellingSource cancels its context once reads pass a point, as an
// operator pressing stop in the middle of an export would.
type cancellingSource struct {
	imagefmt.Source
	after  int64
	cancel context.CancelFunc
}

func (c *cancellingSource) ReadAt(p []byte, off int64) (int, error) {
	if off >= c.after {
		c.cancel()
	}
	return c.Source.ReadAt(p, off)
}

func TestCancelLeavesNoFile(t *testing.T) {
	dir := t.TempDir()
	srcPath, layout, disk := makeDisk(t, dir, imagefmttest.Spec{Size: 64 << 20, DataFraction: 0.7, Seed: 6})
	for _, format := range formats {
		t.Run(string(format), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			src := &cancellingSource{Source: sources(t, srcPath, layout, disk)["view"], after: 32 << 20, cancel: cancel}
			d := t.TempDir()
			out := filepath.Join(d, "disk."+ext(format))
			_, err := imagefmt.Write(ctx, src, format, out, opts(t))
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			}
			if names := dirEntries(t, d); len(names) != 0 {
				t.Fatalf("cancelled write left files: %v", names)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out := filepath.Join(t.TempDir(), "disk.img")
	if _, err := imagefmt.Write(ctx, imagefmt.ReaderSource{R: zeroReader{}, N: 1 << 20}, imagefmt.FormatRaw, out, opts(t)); !errors.Is(err, context.Canceled) {
		t.Fatalf("already cancelled: err = %v", err)
	}
	if _, err := os.Stat(out); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("already cancelled: %s exists", out)
	}
}

// badExtents reports the extents it was built with, right or wrong.
type badExtents struct {
	imagefmt.Source
	ext [][2]int64
}

func (b badExtents) Extents(_ context.Context, fn func(off, n int64) error) error {
	for _, e := range b.ext {
		if err := fn(e[0], e[1]); err != nil {
			return err
		}
	}
	return nil
}

func TestSourceErrors(t *testing.T) {
	base := imagefmt.ReaderSource{R: zeroReader{}, N: 32 << 20}
	readErr := errors.New("disk on fire")
	cases := map[string]struct {
		src  imagefmt.Source
		want string
	}{
		"descending":   {badExtents{base, [][2]int64{{8 << 20, 4096}, {0, 4096}}}, "overlaps or precedes"},
		"overlapping":  {badExtents{base, [][2]int64{{0, 8192}, {4096, 4096}}}, "overlaps or precedes"},
		"past the end": {badExtents{base, [][2]int64{{32<<20 - 4096, 8192}}}, "outside the disk"},
		"negative":     {badExtents{base, [][2]int64{{0, -1}}}, "outside the disk"},
		"read fails":   {&failingReader{Source: base, limit: 20 << 20, err: readErr}, "disk on fire"},
		"short read":   {imagefmt.ReaderSource{R: shortReader{}, N: 1 << 20}, "unexpected EOF"},
	}
	for name, c := range cases {
		for _, format := range formats {
			t.Run(name+"/"+string(format), func(t *testing.T) {
				d := t.TempDir()
				_, err := imagefmt.Write(context.Background(), c.src, format, filepath.Join(d, "disk."+ext(format)), opts(t))
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("err = %v, want one saying %q", err, c.want)
				}
				if names := dirEntries(t, d); len(names) != 0 {
					t.Fatalf("failed write left files: %v", names)
				}
			})
		}
	}
}

type shortReader struct{}

func (shortReader) ReadAt(p []byte, _ int64) (int, error) { return len(p) / 2, nil }

func TestProgress(t *testing.T) {
	dir := t.TempDir()
	srcPath, layout, disk := makeDisk(t, dir, imagefmttest.Spec{Size: 32 << 20, DataFraction: 0.5, Seed: 7})
	src := &slowSource{Source: sources(t, srcPath, layout, disk)["view"], delay: 100 * time.Millisecond}
	var got []imagefmt.Progress
	start := time.Now()
	res, err := imagefmt.Write(context.Background(), src, imagefmt.FormatQcow2, filepath.Join(t.TempDir(), "d.qcow2"),
		imagefmt.Options{Progress: func(p imagefmt.Progress) { got = append(got, p) }, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	if len(got) < 2 {
		t.Fatalf("%d progress reports in %v", len(got), elapsed)
	}
	if max := int(elapsed/(200*time.Millisecond)) + 2; len(got) > max {
		t.Fatalf("%d progress reports in %v, want at most %d", len(got), elapsed, max)
	}
	for i, p := range got {
		if p.Total != int64(len(disk)) || p.Done > p.Total || p.Rate <= 0 || (i > 0 && p.Done < got[i-1].Done) {
			t.Fatalf("report %d: %+v (previous %+v)", i, p, got[max(i-1, 0)])
		}
	}
	if last := got[len(got)-1]; last.Done != last.Total {
		t.Fatalf("last report %+v is not complete", last)
	}
	if res.Duration <= 0 || res.Duration > elapsed {
		t.Fatalf("Duration %v, elapsed %v", res.Duration, elapsed)
	}
}

// slowSource delays every read, like a disk busy with something else.
type slowSource struct {
	imagefmt.Source
	delay time.Duration
}

func (s *slowSource) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(s.delay)
	return s.Source.ReadAt(p, off)
}

func TestParseFormat(t *testing.T) {
	for in, want := range map[string]imagefmt.Format{"raw": "raw", "QCOW2": "qcow2", " vmdk ": "vmdk"} {
		if got, err := imagefmt.ParseFormat(in); err != nil || got != want {
			t.Errorf("ParseFormat(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "vhd", "qcow"} {
		if _, err := imagefmt.ParseFormat(in); err == nil {
			t.Errorf("ParseFormat(%q) accepted", in)
		}
	}
	if _, err := imagefmt.Write(context.Background(), imagefmt.ReaderSource{R: zeroReader{}, N: 512}, "vhdx", filepath.Join(t.TempDir(), "x"), opts(t)); err == nil {
		t.Fatal("Write accepted format vhdx")
	}
}

func TestFileSourceExtents(t *testing.T) {
	dir := t.TempDir()
	srcPath, layout, _ := makeDisk(t, dir, imagefmttest.Spec{Size: 16 << 20, DataFraction: 0.3, Seed: 8})
	s, err := imagefmt.OpenFileSource(srcPath)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var got [][2]int64
	if err := s.Extents(context.Background(), func(off, n int64) error {
		got = append(got, [2]int64{off, n})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Every byte that is not in a hole must be inside a reported extent,
	// and the holes must mostly be skipped.
	covered := func(off, n int64) bool {
		for _, e := range got {
			if off >= e[0] && off+n <= e[0]+e[1] {
				return true
			}
		}
		return false
	}
	var reported, holes int64
	for _, e := range got {
		reported += e[1]
	}
	for _, r := range layout.Regions {
		if r.Kind == imagefmttest.Hole {
			holes += r.Len
			continue
		}
		for off := r.Off; off < r.Off+r.Len; off += 4096 {
			if !covered(off, min(4096, r.Off+r.Len-off)) {
				t.Fatalf("%s region at %d not covered by extents %v", r.Kind, off, got)
			}
		}
	}
	if reported > layout.Size-holes/2 {
		t.Fatalf("extents cover %d of %d bytes though %d are holes", reported, layout.Size, holes)
	}
}

func withCluster(o imagefmt.Options, cs int64) imagefmt.Options { o.ClusterSize = cs; return o }

func withAdapter(o imagefmt.Options, a string) imagefmt.Options { o.VMDKAdapterType = a; return o }
