package imagefmt_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"standby/internal/imagefmt"
	"standby/internal/imagefmt/imagefmttest"
)

// qemuImg runs qemu-img and returns its combined output and exit code. A
// machine without qemu-img fails the test: these checks are the point.
func qemuImg(t testing.TB, args ...string) (string, int) {
	t.Helper()
	path, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Fatalf("qemu-img is required (apt-get install qemu-utils): %v", err)
	}
	out, err := exec.Command(path, args...).CombinedOutput()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	case err != nil:
		t.Fatalf("qemu-img %v: %v", args, err)
	}
	return string(out), 0
}

// makeDisk writes a generated raw disk into dir and returns its path, its
// layout and its bytes.
func makeDisk(t testing.TB, dir string, spec imagefmttest.Spec) (string, imagefmttest.Layout, []byte) {
	t.Helper()
	path := filepath.Join(dir, "source.raw")
	layout, err := imagefmttest.MakeRawFile(path, spec)
	if err != nil {
		t.Fatal(err)
	}
	disk, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, layout, disk
}

// nonZeroBytes is how much of disk is in gran-sized blocks that are not all
// zeros: what an exporter with that zero-detection granule stores.
func nonZeroBytes(disk []byte, gran int) int64 {
	var n int64
	zero := make([]byte, gran)
	for off := 0; off < len(disk); off += gran {
		b := disk[off:min(off+gran, len(disk))]
		if !bytes.Equal(b, zero[:len(b)]) {
			n += int64(len(b))
		}
	}
	return n
}

// allocated is the space a file takes on disk.
func allocated(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		t.Fatalf("no block count for %s on this platform", path)
	}
	return st.Blocks * 512
}

// qemuFormat is the -f name qemu-img uses for a format.
func qemuFormat(f imagefmt.Format) string { return string(f) }

// verifyWithQemu is the acceptance check of an image against the raw disk
// it was made from, by the tool everyone else will open it with.
func verifyWithQemu(t *testing.T, res imagefmt.Result, sourceRaw string, disk []byte) {
	t.Helper()
	img := res.Path
	f := qemuFormat(res.Format)

	if res.Format == imagefmt.FormatQcow2 {
		out, code := qemuImg(t, "check", "-f", "qcow2", img)
		if code != 0 || !strings.Contains(out, "No errors were found") {
			t.Fatalf("qemu-img check: exit %d\n%s", code, out)
		}
	}

	out, code := qemuImg(t, "info", "--output=json", "-f", f, img)
	if code != 0 {
		t.Fatalf("qemu-img info: exit %d\n%s", code, out)
	}
	var info struct {
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	// qemu counts sizes in sectors: it reads a raw file's partial last
	// sector as zeros.
	qsize := (res.Size + 511) / 512 * 512
	if info.Format != f || info.VirtualSize != qsize {
		t.Fatalf("qemu-img info says format %q size %d, want %q %d", info.Format, info.VirtualSize, f, qsize)
	}

	out, code = qemuImg(t, "compare", "-f", f, "-F", "raw", img, sourceRaw)
	if code != 0 || !strings.Contains(out, "Images are identical") {
		t.Fatalf("qemu-img compare: exit %d\n%s", code, out)
	}

	back := filepath.Join(t.TempDir(), "back.raw")
	if out, code := qemuImg(t, "convert", "-f", f, "-O", "raw", img, back); code != 0 {
		t.Fatalf("qemu-img convert: exit %d\n%s", code, out)
	}
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got)) != qsize {
		t.Fatalf("converted image is %d bytes, want %d", len(got), qsize)
	}
	if i := firstDiff(got[:len(disk)], disk); i >= 0 {
		t.Fatalf("converted image differs from the source at byte %d", i)
	}
	if pad := got[len(disk):]; !bytes.Equal(pad, make([]byte, len(pad))) {
		t.Fatalf("padding after the source's %d bytes is not zero", len(disk))
	}
}

func firstDiff(a, b []byte) int {
	for off := 0; off < len(a); off += 1 << 20 {
		end := min(off+1<<20, len(a))
		if !bytes.Equal(a[off:end], b[off:end]) {
			for i := off; i < end; i++ {
				if a[i] != b[i] {
					return i
				}
			}
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// dirEntries lists the names in dir.
func dirEntries(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// failingReader is a Source whose reads fail after limit bytes.
type failingReader struct {
	imagefmt.Source
	limit int64
	err   error
	read  int64
}

func (f *failingReader) ReadAt(p []byte, off int64) (int, error) {
	if f.read+int64(len(p)) > f.limit {
		return 0, f.err
	}
	f.read += int64(len(p))
	return f.Source.ReadAt(p, off)
}

var _ io.ReaderAt = (*failingReader)(nil)

// opts are the Options tests use: Write's log lines go to the test's log.
func opts(t testing.TB) imagefmt.Options {
	return imagefmt.Options{Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
