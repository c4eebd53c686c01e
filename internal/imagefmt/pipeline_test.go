package imagefmt

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
)

// memSource is a disk in memory with the extents a test chooses; reads
// outside them fail.
type memSource struct {
	disk []byte
	ext  [][2]int64
}

func (m *memSource) Size() int64 { return int64(len(m.disk)) }

func (m *memSource) ReadAt(p []byte, off int64) (int, error) {
	for _, e := range m.ext {
		if off >= e[0] && off+int64(len(p)) <= e[0]+e[1] {
			return copy(p, m.disk[off:]), nil
		}
	}
	return 0, fmt.Errorf("read [%d, +%d) outside the extents", off, len(p))
}

func (m *memSource) Extents(_ context.Context, fn func(off, n int64) error) error {
	for _, e := range m.ext {
		if err := fn(e[0], e[1]); err != nil {
			return err
		}
	}
	return nil
}

// rebuild is an imageWriter that rebuilds the disk from the non-zero runs
// and checks the chunks' invariants.
type rebuild struct {
	t       *testing.T
	gran    int
	disk    []byte
	lastEnd int64
}

func (r *rebuild) put(c *chunk) (int64, error) {
	if c.off%int64(r.gran) != 0 || c.n%r.gran != 0 || c.n > len(c.buf) || c.off < r.lastEnd {
		r.t.Fatalf("chunk off %d n %d after %d: not aligned to %d, too big or out of order", c.off, c.n, r.lastEnd, r.gran)
	}
	r.lastEnd = c.off + int64(c.n)
	prev := -1
	for _, s := range c.runs {
		if s.start%r.gran != 0 || s.end%r.gran != 0 || s.start <= prev || s.end <= s.start || s.end > c.n {
			r.t.Fatalf("bad run %+v (previous end %d, n %d)", s, prev, c.n)
		}
		prev = s.end
		end := min(c.off+int64(s.end), int64(len(r.disk)))
		copy(r.disk[c.off+int64(s.start):end], c.buf[s.start:])
	}
	// Whatever is not in a run must be zeros.
	at := 0
	for _, s := range c.runs {
		if z := c.buf[at:s.start]; bytes.Count(z, []byte{0}) != len(z) {
			r.t.Fatalf("chunk at %d: bytes [%d, %d) outside runs are not zero", c.off, at, s.start)
		}
		at = s.end
	}
	return 0, nil
}

func (r *rebuild) finish(context.Context) error { return nil }

// TestReaderChunks feeds the reader awkward extents — tiny, unaligned,
// adjacent, across chunk boundaries, gaps just under and over maxGap — and
// checks that the chunks rebuild the disk exactly.
func TestReaderChunks(t *testing.T) {
	for seed := range uint64(4) {
		rng := rand.New(rand.NewPCG(seed, 1))
		var seedBytes [32]byte
		seedBytes[0] = byte(seed)
		fill := rand.NewChaCha8(seedBytes)
		size := int64(18<<20 + rng.IntN(1<<20))
		disk := make([]byte, size)
		src := &memSource{disk: disk}
		for off := int64(rng.IntN(5000)); off < size; {
			var n int64
			switch rng.IntN(4) {
			case 0:
				n = 1 + rng.Int64N(600) // tiny
			case 1:
				n = 1 + rng.Int64N(64<<10)
			case 2:
				n = 1 + rng.Int64N(12<<20) // longer than a chunk
			default:
				n = int64(chunkSize) - off%chunkSize // up to a chunk boundary
			}
			n = min(n, size-off)
			fill.Read(disk[off : off+n])
			// Zero stretches inside extents, aligned and not.
			for z := off; z < off+n; z += 1 + rng.Int64N(256<<10) {
				clear(disk[z:min(z+rng.Int64N(128<<10), off+n)])
			}
			src.ext = append(src.ext, [2]int64{off, n})
			off += n
			switch rng.IntN(5) {
			case 0: // adjacent
			case 1:
				off += maxGap - 1 - rng.Int64N(4096)
			case 2:
				off += maxGap + rng.Int64N(3*4096)
			default:
				off += rng.Int64N(200 << 10)
			}
		}
		for _, gran := range []int{512, 4096, 64 << 10, 2 << 20} {
			w := &rebuild{t: t, gran: gran, disk: make([]byte, size)}
			if _, err := pump(context.Background(), src, size, gran, w, func(int64) {}); err != nil {
				t.Fatalf("seed %d granule %d: %v", seed, gran, err)
			}
			if !bytes.Equal(w.disk, disk) {
				t.Fatalf("seed %d granule %d: rebuilt disk differs", seed, gran)
			}
		}
	}
}

func TestQcow2RefcountLayout(t *testing.T) {
	for _, cs := range []int64{512, 4096, 64 << 10} {
		perBlock := cs / 2
		for _, used := range []int64{1, 2, perBlock - 2, perBlock - 1, perBlock, perBlock + 1, 5 * perBlock, perBlock * cs / 8, perBlock*cs/8 + 7, 1 << 30} {
			b, tc := qcow2RefcountLayout(used, cs)
			if b*perBlock < used+b+tc || tc*cs/8 < b {
				t.Fatalf("cs %d used %d: %d blocks, %d table clusters do not cover", cs, used, b, tc)
			}
			// One block fewer must not do.
			if b > 1 && (b-1)*perBlock >= used+b-1+(b-1+cs/8-1)/(cs/8) {
				t.Fatalf("cs %d used %d: %d blocks is not the least", cs, used, b)
			}
		}
	}
}

func TestQcow2HeaderBytes(t *testing.T) {
	h := qcow2Header{clusterBits: 16, size: 1 << 30, l1Size: 2, l1Offset: 0x30000, refcountTableOffset: 0x50000, refcountTableClusters: 1}
	b := h.marshal()
	want := []byte{
		'Q', 'F', 'I', 0xfb, 0, 0, 0, 3, // magic, version
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // backing file offset, size
		0, 0, 0, 16, // cluster_bits
		0, 0, 0, 0, 0x40, 0, 0, 0, // size
		0, 0, 0, 0, 0, 0, 0, 2, // crypt_method, l1_size
		0, 0, 0, 0, 0, 3, 0, 0, // l1_table_offset
		0, 0, 0, 0, 0, 5, 0, 0, // refcount_table_offset
		0, 0, 0, 1, 0, 0, 0, 0, // refcount_table_clusters, nb_snapshots
		0, 0, 0, 0, 0, 0, 0, 0, // snapshots_offset
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // features
		0, 0, 0, 4, 0, 0, 0, 104, // refcount_order, header_length
		0, 0, 0, 0, 0, 0, 0, 0, // end of header extensions
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("header\n got %x\nwant %x", b, want)
	}
}
