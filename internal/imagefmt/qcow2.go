package imagefmt

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/bits"
	"os"
)

// qcow2 constants from qemu's docs/interop/qcow2.txt.
const (
	qcow2Magic        = 0x514649fb // "QFI\xfb"
	qcow2Version      = 3
	qcow2HeaderLen    = 104 // version 3 header without optional fields
	qcow2RefcountOrd  = 4   // 16-bit refcounts
	qcow2Copied       = uint64(1) << 63
	qcow2MaxL1Bytes   = 32 << 20 // qemu's limit on the L1 table
	qcow2MaxRTBytes   = 8 << 20  // qemu's limit on the refcount table
	qcow2MinCluster   = 512
	qcow2MaxCluster   = 2 << 20
	qcow2DefaultClust = 64 << 10
)

// qcow2Writer appends: cluster 0 is the header, then data clusters in disk
// order with each L2 table right after the data it maps, then the L1 table,
// the refcount blocks and the refcount table; the header is written last.
// Every cluster of the file is used exactly once, so the refcounts are all 1
// and can be computed at the end, and nothing written is ever rewritten.
type qcow2Writer struct {
	f         *os.File
	cs        int64 // cluster size
	size      int64 // virtual size
	l2Entries int64
	l1        []uint64

	next    int64  // file offset of the next free cluster
	l2      []byte // L2 table being filled
	l2Index int64  // its index in L1, -1 before the first

	iov      [][]byte // clusters to append at iovStart, back to back
	iovStart int64
	wb       *writeBehind
}

// qcow2Check validates a cluster size and the tables a disk of size bytes
// needs, before anything is written.
func qcow2Check(size, cs int64) error {
	if cs < qcow2MinCluster || cs > qcow2MaxCluster || cs&(cs-1) != 0 {
		return fmt.Errorf("imagefmt: qcow2 cluster size %d is not a power of two between %d and %d", cs, qcow2MinCluster, qcow2MaxCluster)
	}
	if l1 := qcow2L1Entries(size, cs); l1*8 > qcow2MaxL1Bytes {
		return fmt.Errorf("imagefmt: a %d-byte disk needs a %d-entry qcow2 L1 table with %d-byte clusters, more than qemu accepts: use larger clusters", size, l1, cs)
	}
	// The worst case is every cluster of the disk allocated.
	l1 := qcow2L1Entries(size, cs)
	maxClusters := 1 + ceilDiv(size, cs) + l1 + ceilDiv(l1*8, cs)
	if _, table := qcow2RefcountLayout(maxClusters, cs); table*cs > qcow2MaxRTBytes {
		return fmt.Errorf("imagefmt: a %d-byte disk may need a qcow2 refcount table larger than qemu accepts with %d-byte clusters: use larger clusters", size, cs)
	}
	return nil
}

func newQcow2Writer(f *os.File, size, cs int64) *qcow2Writer {
	return &qcow2Writer{
		f:         f,
		cs:        cs,
		size:      size,
		l2Entries: cs / 8,
		l1:        make([]uint64, qcow2L1Entries(size, cs)),
		next:      cs,
		l2Index:   -1,
		iovStart:  cs,
		wb:        newWriteBehind(f),
	}
}

func qcow2L1Entries(size, cs int64) int64 { return ceilDiv(ceilDiv(size, cs), cs/8) }

func (w *qcow2Writer) put(c *chunk) (int64, error) {
	var data int64
	for _, r := range c.runs {
		seg := r.start
		for pos := r.start; pos < r.end; pos += int(w.cs) {
			guest := c.off + int64(pos)
			gc := guest / w.cs
			if idx := gc / w.l2Entries; idx != w.l2Index {
				// The previous table is complete (chunks come in disk
				// order): append it behind the data already placed.
				w.iov = append(w.iov, c.buf[seg:pos])
				seg = pos
				w.closeL2()
				w.l2Index = idx
				w.l2 = make([]byte, w.cs)
			}
			binary.BigEndian.PutUint64(w.l2[(gc%w.l2Entries)*8:], uint64(w.next)|qcow2Copied)
			w.next += w.cs
			data += min(guest+w.cs, w.size) - guest
		}
		w.iov = append(w.iov, c.buf[seg:r.end])
	}
	// The chunk's buffer goes back to the reader after put returns.
	return data, w.flush()
}

// closeL2 places the current L2 table at the next free cluster.
func (w *qcow2Writer) closeL2() {
	if w.l2Index < 0 {
		return
	}
	w.l1[w.l2Index] = uint64(w.next) | qcow2Copied
	w.iov = append(w.iov, w.l2)
	w.next += w.cs
}

func (w *qcow2Writer) flush() error {
	if err := writevAt(w.f, w.iov, w.iovStart); err != nil {
		return err
	}
	clear(w.iov) // drop references to chunk buffers
	w.iov = w.iov[:0]
	w.iovStart = w.next
	return w.wb.advance(w.next)
}

func (w *qcow2Writer) finish(ctx context.Context) error {
	w.closeL2()
	w.l2Index = -1
	if err := w.flush(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	// L1 table. A disk of size 0 has none and, as qemu writes it, offset 0:
	// a cluster allocated for it would be a leak to qemu-img check.
	var l1Off int64
	if len(w.l1) > 0 {
		l1Off = w.next
		l1Clusters := ceilDiv(int64(len(w.l1))*8, w.cs)
		l1 := make([]byte, l1Clusters*w.cs)
		for i, e := range w.l1 {
			binary.BigEndian.PutUint64(l1[i*8:], e)
		}
		if _, err := w.f.WriteAt(l1, l1Off); err != nil {
			return fmt.Errorf("imagefmt: write qcow2 L1 table: %w", err)
		}
		w.next += l1Clusters * w.cs
	}

	// Refcount blocks, then the table pointing at them. They count
	// themselves: every cluster from 0 to the end of the table has
	// refcount 1.
	used := w.next / w.cs
	nBlocks, tableClusters := qcow2RefcountLayout(used, w.cs)
	total := used + nBlocks + tableClusters
	perBlock := w.cs * 8 / (1 << qcow2RefcountOrd)
	blocksOff := w.next
	table := make([]byte, tableClusters*w.cs)
	block := make([]byte, w.cs)
	for i := range nBlocks {
		n := min(perBlock, total-i*perBlock)
		clear(block)
		for j := range n {
			binary.BigEndian.PutUint16(block[j*2:], 1)
		}
		off := blocksOff + i*w.cs
		if _, err := w.f.WriteAt(block, off); err != nil {
			return fmt.Errorf("imagefmt: write qcow2 refcount block %d: %w", i, err)
		}
		binary.BigEndian.PutUint64(table[i*8:], uint64(off))
	}
	tableOff := blocksOff + nBlocks*w.cs
	if _, err := w.f.WriteAt(table, tableOff); err != nil {
		return fmt.Errorf("imagefmt: write qcow2 refcount table: %w", err)
	}
	w.next = tableOff + tableClusters*w.cs

	h := qcow2Header{
		clusterBits:           uint32(bits.TrailingZeros64(uint64(w.cs))),
		size:                  uint64(w.size),
		l1Size:                uint32(len(w.l1)),
		l1Offset:              uint64(l1Off),
		refcountTableOffset:   uint64(tableOff),
		refcountTableClusters: uint32(tableClusters),
	}
	if _, err := w.f.WriteAt(h.marshal(), 0); err != nil {
		return fmt.Errorf("imagefmt: write qcow2 header: %w", err)
	}
	return nil
}

// qcow2RefcountLayout returns how many refcount blocks and refcount table
// clusters are needed for used clusters plus those blocks and the table.
func qcow2RefcountLayout(used, cs int64) (blocks, tableClusters int64) {
	perBlock := cs * 8 / (1 << qcow2RefcountOrd)
	for {
		b := ceilDiv(used+blocks+tableClusters, perBlock)
		t := ceilDiv(b*8, cs)
		if b == blocks && t == tableClusters {
			return blocks, tableClusters
		}
		blocks, tableClusters = b, t
	}
}

// qcow2Header is the part of the version 3 header standby sets; everything
// else (backing file, encryption, snapshots, features) is zero.
type qcow2Header struct {
	clusterBits           uint32
	size                  uint64
	l1Size                uint32
	l1Offset              uint64
	refcountTableOffset   uint64
	refcountTableClusters uint32
}

// marshal returns the header followed by the end-of-extensions marker.
func (h qcow2Header) marshal() []byte {
	b := make([]byte, qcow2HeaderLen+8)
	be := binary.BigEndian
	be.PutUint32(b[0:], qcow2Magic)
	be.PutUint32(b[4:], qcow2Version)
	// 8..19: no backing file
	be.PutUint32(b[20:], h.clusterBits)
	be.PutUint64(b[24:], h.size)
	// 32: crypt_method 0
	be.PutUint32(b[36:], h.l1Size)
	be.PutUint64(b[40:], h.l1Offset)
	be.PutUint64(b[48:], h.refcountTableOffset)
	be.PutUint32(b[56:], h.refcountTableClusters)
	// 60..71: no snapshots; 72..95: no incompatible, compatible or autoclear features
	be.PutUint32(b[96:], qcow2RefcountOrd)
	be.PutUint32(b[100:], qcow2HeaderLen)
	// 104..111: header extension type 0 (end), length 0
	return b
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }
