package imagefmt

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// rawGranule is the unit in which raw images and VMDK flat extents are
// checked for zeros and left as holes: the block size of common file
// systems, so every zero block found is a block not allocated.
const rawGranule = 4096

// Progress is reported while an image is written.
type Progress struct {
	Done  int64   // bytes of the disk passed, holes included
	Total int64   // the disk's size
	Rate  float64 // Done per second since the start
}

// Options tune Write. The zero value is ready to use.
type Options struct {
	// Progress, if set, is called from one goroutine at most about five
	// times a second and once at the end, when the image is durable.
	Progress func(Progress)
	// ClusterSize is the qcow2 cluster size: a power of two from 512 bytes
	// to 2 MiB, default 64 KiB. Zero clusters are not allocated, so smaller
	// clusters make sparser images with larger tables.
	ClusterSize int64
	// VMDKAdapterType is written into a VMDK descriptor's ddb.adapterType:
	// "ide", "buslogic", "lsilogic" (the default) or "legacyESX".
	VMDKAdapterType string
	// Logger receives a line per image; nil means slog.Default().
	Logger *slog.Logger
}

// Result describes a written image.
type Result struct {
	Path   string   // what was asked for: the image, or the VMDK descriptor
	Files  []string // every file written: for vmdk the descriptor, then the flat extent
	Format Format
	// Size is the virtual size of the image: the source's size, rounded up
	// to a multiple of 512 bytes for qcow2 and vmdk (whose sizes are counted
	// in sectors), the padding reading as zeros.
	Size int64
	// DataBytes is how much of the disk is stored as data; the rest was
	// holes or zero blocks and takes no space.
	DataBytes int64
	Duration  time.Duration
}

// Write materialises src as an image of the given format at path. For vmdk,
// path is the descriptor ("disk.vmdk") and the flat extent is written beside
// it ("disk-flat.vmdk").
//
// Write never replaces an existing file: it fails with an error matching
// fs.ErrExist. The image is written under a temporary name in the same
// directory, synced, and only then given its name, so after a crash or a
// cancelled ctx there is either a complete image or none (a leftover
// ".NAME.partial-*" file at worst). Zero blocks within the source's extents
// are not allocated: holes in raw images and VMDK extents, unallocated
// clusters in qcow2.
func Write(ctx context.Context, src Source, format Format, path string, opts Options) (Result, error) {
	start := time.Now()
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	format, err := ParseFormat(string(format))
	if err != nil {
		return Result{}, err
	}
	size := src.Size()
	if size < 0 {
		return Result{}, fmt.Errorf("imagefmt: source has negative size %d", size)
	}

	virt, gran := size, int64(rawGranule)
	files := []string{path}
	var desc string // the VMDK descriptor
	cs := opts.ClusterSize
	adapter := opts.VMDKAdapterType
	switch format {
	case FormatQcow2:
		virt = alignUp(size, 512)
		if cs == 0 {
			cs = qcow2DefaultClust
		}
		if err := qcow2Check(virt, cs); err != nil {
			return Result{}, err
		}
		gran = cs
	case FormatVMDK:
		virt = alignUp(size, 512)
		if virt == 0 {
			// An extent of 0 sectors is not valid (qemu-img itself
			// crashes on one).
			return Result{}, errors.New("imagefmt: a VMDK image needs a disk of at least one sector")
		}
		if adapter == "" {
			adapter = VMDKAdapterLSILogic
		}
		if err := vmdkCheckAdapter(adapter); err != nil {
			return Result{}, err
		}
		files = append(files, vmdkFlatPath(path))
		// Made before any data is written, so a name the descriptor
		// cannot hold fails at once.
		if desc, err = vmdkDescriptor(filepath.Base(files[1]), virt/512, adapter); err != nil {
			return Result{}, err
		}
	}
	if virt != size {
		log.Warn("disk size is not a multiple of 512 bytes: the image is padded with zeros",
			"path", path, "size", size, "image_size", virt)
	}
	for _, f := range files {
		if _, err := os.Lstat(f); err == nil {
			return Result{}, fmt.Errorf("imagefmt: write %s image %s: %w", format, f, fs.ErrExist)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return Result{}, fmt.Errorf("imagefmt: write %s image: %w", format, err)
		}
	}

	tmps := make([]*os.File, 0, len(files))
	committed := false
	defer func() {
		if committed {
			return
		}
		for _, t := range tmps {
			t.Close()
			os.Remove(t.Name())
		}
	}()
	for _, f := range files {
		// Same directory, so the final rename stays within one file system.
		t, err := os.CreateTemp(filepath.Dir(f), "."+filepath.Base(f)+".partial-*")
		if err != nil {
			return Result{}, fmt.Errorf("imagefmt: create temporary file for %s: %w", f, err)
		}
		tmps = append(tmps, t)
	}
	dataFile := tmps[len(tmps)-1]

	var w imageWriter
	switch format {
	case FormatQcow2:
		w = newQcow2Writer(dataFile, virt, cs)
	default:
		w = &rawWriter{f: dataFile, size: virt, wb: newWriteBehind(dataFile)}
	}

	last := start
	report := func(done int64, final bool) {
		if opts.Progress == nil {
			return
		}
		now := time.Now()
		if !final && now.Sub(last) < progressEvery {
			return
		}
		last = now
		var rate float64
		if el := now.Sub(start).Seconds(); el > 0 {
			rate = float64(done) / el
		}
		opts.Progress(Progress{Done: done, Total: size, Rate: rate})
	}

	data, err := pump(ctx, src, size, int(gran), w, func(done int64) { report(done, false) })
	if err != nil {
		return Result{}, fmt.Errorf("imagefmt: write %s image %s: %w", format, path, err)
	}
	if err := w.finish(ctx); err != nil {
		return Result{}, fmt.Errorf("imagefmt: write %s image %s: %w", format, path, err)
	}
	if format == FormatVMDK {
		if _, err := tmps[0].WriteString(desc); err != nil {
			return Result{}, fmt.Errorf("imagefmt: write VMDK descriptor %s: %w", path, err)
		}
	}
	for _, t := range tmps {
		if err := t.Sync(); err != nil {
			return Result{}, fmt.Errorf("imagefmt: sync %s: %w", t.Name(), err)
		}
	}
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("imagefmt: write %s image %s: %w", format, path, err)
	}
	if err := commit(tmps, files); err != nil {
		return Result{}, fmt.Errorf("imagefmt: write %s image: %w", format, err)
	}
	committed = true

	res := Result{Path: path, Files: files, Format: format, Size: virt, DataBytes: data, Duration: time.Since(start)}
	report(size, true)
	log.Info("image written", "path", path, "format", format, "size", virt, "data_bytes", data,
		"duration", res.Duration.Round(time.Millisecond), "mib_per_s", float64(size)/(1<<20)/max(res.Duration.Seconds(), 1e-9))
	return res, nil
}

// commit gives each synced temporary file its final name without replacing
// anything, data files before the descriptor that points at them, and makes
// the names durable. On failure the names it already created are removed
// again, so a failed Write leaves nothing under a final name.
func commit(tmps []*os.File, files []string) error {
	for _, t := range tmps {
		if err := t.Close(); err != nil {
			return fmt.Errorf("close %s: %w", t.Name(), err)
		}
	}
	var done []string
	for i := len(files) - 1; i >= 0; i-- {
		if err := renameNoReplace(tmps[i].Name(), files[i]); err != nil {
			for _, d := range done {
				os.Remove(d)
			}
			return err
		}
		done = append(done, files[i])
	}
	if err := syncDir(filepath.Dir(files[0])); err != nil {
		return err
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory to sync it: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
