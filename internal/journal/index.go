package journal

import (
	"math/bits"
	"sort"
	"unsafe"
)

// The index says, for each block of each disk, where its before-images are,
// in seq order. It is kept per chunk of 32 blocks rather than per block: a
// record covering many blocks costs one run per chunk it touches instead of
// one entry per block, and a 32-bit mask per run says which blocks it holds
// and which of them were zero.
//
// Chunks live in pages of 1024, allocated when first touched, so an index
// costs nothing for parts of a disk that were never overwritten, and the
// top-level slice is 8 bytes per 128 MiB of disk (at 4 KiB blocks).
const (
	chunkShift  = 5
	chunkBlocks = 1 << chunkShift
	pageShift   = 10
	pageChunks  = 1 << pageShift
)

// run is one record's share of one chunk. 24 bytes.
type run struct {
	seq   uint64
	seg   uint32 // segment id
	off   uint32 // offset in the segment of the first stored block of this run (its checksum)
	zero  uint32 // bit i: block i of the chunk was all zero (not stored)
	first uint8  // first block of the run within the chunk
	n     uint8  // blocks in the run, 1..32
}

const runSize = int64(unsafe.Sizeof(run{}))

// mask has a bit set for each block of the chunk the run covers.
func (r *run) mask() uint32 { return uint32((uint64(1)<<r.n - 1) << r.first) }

// loc is the offset in the segment of the stored block i (chunk-relative),
// which must be covered by r and not zero.
func (r *run) loc(i uint, bs int64) int64 {
	before := r.mask() &^ r.zero & (uint32(1)<<i - 1)
	return int64(r.off) + int64(bits.OnesCount32(before))*(blockCRCSize+bs)
}

type indexPage [pageChunks][]run

const pageSize = int64(unsafe.Sizeof(indexPage{}))

type diskIndex struct {
	pages []*indexPage
}

func newDiskIndex(nblocks int64) diskIndex {
	nchunks := (nblocks + chunkBlocks - 1) >> chunkShift
	return diskIndex{pages: make([]*indexPage, (nchunks+pageChunks-1)>>pageShift)}
}

func (d *diskIndex) runs(chunk int64) []run {
	p := d.pages[chunk>>pageShift]
	if p == nil {
		return nil
	}
	return p[chunk&(pageChunks-1)]
}

// add appends r to a chunk; runs arrive in seq order, so each chunk stays
// sorted by seq. It reports whether a page had to be allocated.
func (d *diskIndex) add(chunk int64, r run) bool {
	pi := chunk >> pageShift
	p := d.pages[pi]
	fresh := p == nil
	if fresh {
		p = new(indexPage)
		d.pages[pi] = p
	}
	c := &p[chunk&(pageChunks-1)]
	*c = append(*c, r)
	return fresh
}

// indexRecord adds the runs of one record whose first stored block starts at
// dataOff in segment seg. It returns the number of runs and pages added.
func (d *diskIndex) indexRecord(h *recHead, seg uint32, dataOff int64, bs int64) (runs, pages int64) {
	pos := dataOff
	b := h.first
	end := h.first + uint64(h.count)
	i := 0
	for b < end {
		chunk := int64(b >> chunkShift)
		lo := uint(b & (chunkBlocks - 1))
		hi := min(uint(chunkBlocks), lo+uint(end-b))
		r := run{seq: h.seq, seg: seg, off: uint32(pos), first: uint8(lo), n: uint8(hi - lo)}
		for k := lo; k < hi; k++ {
			if h.isZero(i) {
				r.zero |= 1 << k
			} else {
				pos += blockCRCSize + bs
			}
			i++
		}
		if r.zero == r.mask() {
			r.off = 0
		}
		if d.add(chunk, r) {
			pages++
		}
		runs++
		b += uint64(hi - lo)
	}
	return runs, pages
}

// firstAfter is the index of the first run with seq above point: the
// earliest before-images taken after the point.
func firstAfter(runs []run, point uint64) int {
	return sort.Search(len(runs), func(i int) bool { return runs[i].seq > point })
}

// resolve finds, for each block of need (a chunk-relative mask), the run
// holding its earliest before-image after point; res[i] is the run's index,
// or -1 when no image exists (the block is read from the replica). One pass
// over the chunk's runs after point serves every block of the request.
func resolve(runs []run, point uint64, need uint32, res *[chunkBlocks]int32) {
	for i := range res {
		res[i] = -1
	}
	for k := firstAfter(runs, point); k < len(runs) && need != 0; k++ {
		got := runs[k].mask() & need
		need &^= got
		for got != 0 {
			i := bits.TrailingZeros32(got)
			res[i] = int32(k)
			got &= got - 1
		}
	}
}

// storedAfter is the mask of blocks that have a non-zero before-image taken
// after point: the blocks whose point-in-time content may hold data even
// where the replica is now a hole.
func storedAfter(runs []run, point uint64) uint32 {
	var m uint32
	for k := firstAfter(runs, point); k < len(runs); k++ {
		m |= runs[k].mask() &^ runs[k].zero
	}
	return m
}

// compactPage drops the runs of segments below firstLive. Dropped segments
// are always the oldest, and runs are in seq order, so they form a prefix
// of each chunk. It returns the runs removed and whether the page is empty.
func compactPage(p *indexPage, firstLive uint32) (removed int64, empty bool) {
	empty = true
	for ci := range p {
		c := p[ci]
		k := 0
		for k < len(c) && c[k].seg < firstLive {
			k++
		}
		if k > 0 {
			removed += int64(k)
			if k == len(c) {
				c = nil
			} else {
				// Copy rather than reslice, so the dropped prefix's memory
				// is freed rather than pinned by the slice.
				c = append([]run(nil), c[k:]...)
			}
			p[ci] = c
		}
		if len(c) > 0 {
			empty = false
		}
	}
	return removed, empty
}
