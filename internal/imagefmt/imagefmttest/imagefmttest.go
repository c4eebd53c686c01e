// Package imagefmttest makes disks to export and measures imagefmt against
// qemu-img. The tests and benchmarks of imagefmt use it, and so can a
// benchmark script or a test elsewhere that needs a realistic sparse disk.
package imagefmttest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"

	"standby/internal/imagefmt"
)

// Kind is what a region of a generated disk holds.
type Kind int

// The kinds of region MakeRawFile writes.
const (
	Data  Kind = iota // random bytes, with the odd zero block inside
	Zeros             // zeros that were written: allocated in the file, no data
	Hole              // never written: a hole in the file
)

func (k Kind) String() string {
	switch k {
	case Data:
		return "data"
	case Zeros:
		return "zeros"
	case Hole:
		return "hole"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Region is a piece of a generated disk.
type Region struct {
	Kind     Kind
	Off, Len int64
}

// Layout says what a generated disk holds where.
type Layout struct {
	Size    int64
	Regions []Region // ascending, contiguous, covering [0, Size)
}

// DataBytes is the size of the Data regions.
func (l Layout) DataBytes() int64 {
	var n int64
	for _, r := range l.Regions {
		if r.Kind == Data {
			n += r.Len
		}
	}
	return n
}

// Spec describes a disk for MakeRawFile.
type Spec struct {
	Size int64
	// DataFraction of the disk is random data; the rest is split evenly
	// between written zeros and holes.
	DataFraction float64
	Seed         uint64
	// Align is the granularity of region boundaries, 4096 if 0. Use 1 for
	// regions that start and end anywhere.
	Align int64
	// MaxRegion bounds a region's length, 2 MiB if 0.
	MaxRegion int64
}

// MakeRawFile writes a new raw disk image at path as spec says: regions of
// random length that are random data (with a 4 KiB zero block here and there,
// so data clusters are not always entirely data), written zeros, or holes.
// The same spec always gives the same disk.
func MakeRawFile(path string, spec Spec) (Layout, error) {
	if spec.Align == 0 {
		spec.Align = 4096
	}
	if spec.MaxRegion == 0 {
		spec.MaxRegion = 2 << 20
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return Layout{}, fmt.Errorf("imagefmttest: create disk: %w", err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(spec.Seed, spec.Seed^0x9e3779b97f4a7c15))
	l := Layout{Size: spec.Size}
	buf := make([]byte, spec.MaxRegion)
	for off := int64(0); off < spec.Size; {
		n := (1 + rng.Int64N(spec.MaxRegion/spec.Align)) * spec.Align
		n = min(n, spec.Size-off)
		kind := Hole
		switch p := rng.Float64(); {
		case p < spec.DataFraction:
			kind = Data
		case p < spec.DataFraction+(1-spec.DataFraction)/2:
			kind = Zeros
		}
		b := buf[:n]
		switch kind {
		case Data:
			fillRandom(rng, b)
			for z := int64(0); z+4096 <= n; z += 4096 {
				if rng.IntN(16) == 0 {
					clear(b[z : z+4096])
				}
			}
			fallthrough
		case Zeros:
			if kind == Zeros {
				clear(b)
			}
			if _, err := f.WriteAt(b, off); err != nil {
				return Layout{}, fmt.Errorf("imagefmttest: write disk: %w", err)
			}
		}
		// Merge with the previous region of the same kind so that the
		// layout reads like what a file system would report.
		if k := len(l.Regions); k > 0 && l.Regions[k-1].Kind == kind {
			l.Regions[k-1].Len += n
		} else {
			l.Regions = append(l.Regions, Region{kind, off, n})
		}
		off += n
	}
	if err := f.Truncate(spec.Size); err != nil {
		return Layout{}, fmt.Errorf("imagefmttest: size disk: %w", err)
	}
	if err := f.Close(); err != nil {
		return Layout{}, fmt.Errorf("imagefmttest: close disk: %w", err)
	}
	return l, nil
}

func fillRandom(rng *rand.Rand, b []byte) {
	i := 0
	for ; i+8 <= len(b); i += 8 {
		v := rng.Uint64()
		b[i], b[i+1], b[i+2], b[i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
		b[i+4], b[i+5], b[i+6], b[i+7] = byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56)
	}
	for ; i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
}

// ExtentSource is an imagefmt.Source over an in-memory disk with extents
// chosen by the test. Reading outside the extents is an error, so a test
// learns if an exporter reads what it was told not to.
type ExtentSource struct {
	Disk   []byte
	Ranges [][2]int64 // {off, len}, ascending: what Extents reports
}

var _ imagefmt.Source = (*ExtentSource)(nil)

// Size returns len(Disk).
func (s *ExtentSource) Size() int64 { return int64(len(s.Disk)) }

// ReadAt reads Disk, refusing any read that is not inside one range.
func (s *ExtentSource) ReadAt(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	for _, e := range s.Ranges {
		if off >= e[0] && end <= e[0]+e[1] {
			return copy(p, s.Disk[off:end]), nil
		}
	}
	return 0, fmt.Errorf("read [%d, %d) is not inside one extent", off, end)
}

// Extents reports Ranges.
func (s *ExtentSource) Extents(ctx context.Context, fn func(off, n int64) error) error {
	for _, e := range s.Ranges {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(e[0], e[1]); err != nil {
			return err
		}
	}
	return nil
}
