package imagefmttest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"standby/internal/imagefmt"
)

// CompareOptions tune Compare.
type CompareOptions struct {
	Rounds      int    // runs of each side, the best counts; 1 if 0
	Dir         string // where the images go; a new temporary directory if ""
	Cold        bool   // evict the source from the page cache before every run
	ClusterSize int64  // qcow2 cluster size for both sides; imagefmt's default if 0
}

// Comparison is imagefmt.Write against qemu-img convert on the same raw
// file, in the same run.
type Comparison struct {
	Format    imagefmt.Format
	Size      int64 // virtual size of the disk
	DataBytes int64 // what imagefmt stored as data
	Cold      bool  // whether the source was evicted before each run
	// Ours is imagefmt.Write, which syncs the image before it returns.
	Ours time.Duration
	// QemuImg is qemu-img convert -t writeback, which syncs the image at
	// the end too: the fair peer.
	QemuImg time.Duration
	// QemuImgUnsafe is qemu-img convert's default (-t unsafe), which leaves
	// the image in the page cache unsynced. For information.
	QemuImgUnsafe time.Duration
}

func mibps(size int64, d time.Duration) float64 {
	return float64(size) / (1 << 20) / max(d.Seconds(), 1e-9)
}

// OursMiBps is imagefmt's throughput over the virtual size, in MiB/s.
func (c Comparison) OursMiBps() float64 { return mibps(c.Size, c.Ours) }

// QemuImgMiBps is qemu-img's (synced) throughput, in MiB/s.
func (c Comparison) QemuImgMiBps() float64 { return mibps(c.Size, c.QemuImg) }

// Ratio is imagefmt's throughput over qemu-img's (synced); above 1 is faster.
func (c Comparison) Ratio() float64 { return c.QemuImg.Seconds() / max(c.Ours.Seconds(), 1e-9) }

// String is one line for a log or a results table.
func (c Comparison) String() string {
	cache := "warm"
	if c.Cold {
		cache = "cold"
	}
	return fmt.Sprintf("%s %d MiB (%d MiB data, %s source): imagefmt %.3fs %.0f MiB/s, qemu-img convert -t writeback %.3fs %.0f MiB/s, ratio %.2fx (qemu-img unsynced %.3fs)",
		c.Format, c.Size>>20, c.DataBytes>>20, cache, c.Ours.Seconds(), c.OursMiBps(),
		c.QemuImg.Seconds(), c.QemuImgMiBps(), c.Ratio(), c.QemuImgUnsafe.Seconds())
}

// Compare writes the raw disk at src as format with imagefmt.Write and with
// qemu-img convert, alternating which goes first, and reports the best time
// of each. It needs qemu-img and room for every run's image, all deleted
// at the end.
func Compare(ctx context.Context, src string, format imagefmt.Format, opts CompareOptions) (Comparison, error) {
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		return Comparison{}, fmt.Errorf("imagefmttest: compare needs qemu-img (apt-get install qemu-utils): %w", err)
	}
	rounds := max(opts.Rounds, 1)
	dir := opts.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "imagefmt-compare-"); err != nil {
			return Comparison{}, fmt.Errorf("imagefmttest: %w", err)
		}
		defer os.RemoveAll(dir)
	}
	cs := opts.ClusterSize
	if cs == 0 {
		cs = 64 << 10
	}
	c := Comparison{Format: format, Cold: opts.Cold}
	// Every run writes a new file and all are deleted at the end: deleting
	// one between runs would time the next run against the clean-up (on a
	// file system mounted with -o discard that takes seconds).
	var outputs []string
	defer func() {
		for _, o := range outputs {
			os.Remove(o)
		}
	}()
	next := func() string {
		out := filepath.Join(dir, fmt.Sprintf("compare-%d.%s", len(outputs), format))
		outputs = append(outputs, out)
		if format == imagefmt.FormatVMDK {
			outputs = append(outputs, filepath.Join(dir, fmt.Sprintf("compare-%d-flat.vmdk", len(outputs)-1)))
		}
		return out
	}
	if err := settle(dir); err != nil {
		return c, err
	}
	prepare := func() error {
		if opts.Cold {
			return evict(src)
		}
		return nil
	}
	ours := func() (time.Duration, error) {
		s, err := imagefmt.OpenFileSource(src)
		if err != nil {
			return 0, err
		}
		defer s.Close()
		res, err := imagefmt.Write(ctx, s, format, next(), imagefmt.Options{ClusterSize: cs, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return 0, err
		}
		c.Size, c.DataBytes = res.Size, res.DataBytes
		return res.Duration, nil
	}
	qemu := func(cache string) (time.Duration, error) {
		args := []string{"convert", "-f", "raw", "-O", string(format), "-t", cache}
		switch format {
		case imagefmt.FormatQcow2:
			args = append(args, "-o", fmt.Sprintf("cluster_size=%d", cs))
		case imagefmt.FormatVMDK:
			args = append(args, "-o", "subformat=monolithicFlat")
		}
		args = append(args, src, next())
		start := time.Now()
		if b, err := exec.CommandContext(ctx, qemuImg, args...).CombinedOutput(); err != nil {
			return 0, fmt.Errorf("imagefmttest: qemu-img %v: %w: %s", args, err, b)
		}
		return time.Since(start), nil
	}
	best := func(d *time.Duration, run func() (time.Duration, error)) error {
		if err := prepare(); err != nil {
			return err
		}
		t, err := run()
		if err != nil {
			return err
		}
		if *d == 0 || t < *d {
			*d = t
		}
		return nil
	}
	for i := range rounds {
		steps := []func() error{
			func() error { return best(&c.Ours, ours) },
			func() error { return best(&c.QemuImg, func() (time.Duration, error) { return qemu("writeback") }) },
		}
		if i%2 == 1 {
			steps[0], steps[1] = steps[1], steps[0]
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return c, err
			}
		}
	}
	if err := best(&c.QemuImgUnsafe, func() (time.Duration, error) { return qemu("unsafe") }); err != nil {
		return c, err
	}
	if c.Ours == 0 || c.QemuImg == 0 {
		return c, errors.New("imagefmttest: compare measured nothing")
	}
	return c, nil
}
