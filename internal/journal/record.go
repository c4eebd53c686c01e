package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
)

// On-disk layout, little-endian; docs/formats.md ("Undo journal") is the
// reference and must change with this file.
//
// Segment header, at offset 0 of every segment file:
//
//	off size field
//	  0    4 magic    "SBUS"
//	  4    1 version  1
//	  5    1 shift    log2 of the block size
//	  6    2 flags    bit 0 genesis (the journal's first segment)
//	  8    8 base     seq of the segment's first record (the file name)
//	 16    8 prev     base of the previous segment (0 for a genesis segment)
//	 24    4 reserved 0
//	 28    4 crc32c   of bytes 0..27
//
// Record (one run of contiguous blocks of one disk, all preserved for one seq):
//
//	off size field
//	  0    4 magic    "SBUJ"
//	  4    1 version  1
//	  5    1 flags    bit 0 final (last record of its Preserve call)
//	  6    2 disk
//	  8    8 seq
//	 16    8 first    first block number
//	 24    4 count    blocks in the run, 1..maxRunBlocks
//	 28    4 crc32c   of bytes 0..27 and the zero bitmap
//	 32    - zero bitmap, ceil(count/8) bytes, bit i set = block first+i is all zero
//	  -    - for each non-zero block in order: crc32c (4 bytes) + the block
//
// Each stored block carries its own checksum, seeded with (seq, disk,
// block number), so a view can verify the 4 KiB it reads without reading the
// rest of the record, and a block served from the wrong place fails the check.
const (
	segMagic      uint32 = 0x53554253 // "SBUS" stored little-endian
	recMagic      uint32 = 0x4a554253 // "SBUJ" stored little-endian
	formatVersion uint8  = 1

	segHeaderSize = 32
	recHeaderSize = 32
	blockCRCSize  = 4

	segFlagGenesis uint16 = 1 << 0
	segFlagsKnown         = segFlagGenesis

	recFlagFinal  uint8 = 1 << 0
	recFlagsKnown       = recFlagFinal

	// maxRunBlocks bounds one record, so a record is at most about 256
	// blocks plus headers: small enough to hold in memory while scanning,
	// large enough that per-record overhead is noise for big writes.
	maxRunBlocks = 256

	minBlockShift = 9  // 512 bytes
	maxBlockShift = 20 // 1 MiB

	// maxBlockNumber keeps first+count and block*blockSize far from
	// overflowing int64 for any accepted block size.
	maxBlockNumber = 1 << 43
)

// castagnoli is read-only after package initialisation.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errShort means the buffer ends before the structure does: at the tail of
// the last segment that is a torn write, anywhere else corruption.
var errShort = errors.New("journal: incomplete record")

type segHeader struct {
	shift uint8
	flags uint16
	base  uint64
	prev  uint64
}

func putSegHeader(b []byte, h segHeader) {
	binary.LittleEndian.PutUint32(b[0:], segMagic)
	b[4] = formatVersion
	b[5] = h.shift
	binary.LittleEndian.PutUint16(b[6:], h.flags)
	binary.LittleEndian.PutUint64(b[8:], h.base)
	binary.LittleEndian.PutUint64(b[16:], h.prev)
	binary.LittleEndian.PutUint32(b[24:], 0)
	binary.LittleEndian.PutUint32(b[28:], crc32.Checksum(b[:28], castagnoli))
}

func parseSegHeader(b []byte) (segHeader, error) {
	if len(b) < segHeaderSize {
		return segHeader{}, errShort
	}
	if m := binary.LittleEndian.Uint32(b[0:]); m != segMagic {
		return segHeader{}, fmt.Errorf("%w: bad segment magic %#08x", ErrCorrupt, m)
	}
	if got, want := crc32.Checksum(b[:28], castagnoli), binary.LittleEndian.Uint32(b[28:]); got != want {
		return segHeader{}, fmt.Errorf("%w: segment header checksum %#08x, header says %#08x", ErrCorrupt, got, want)
	}
	h := segHeader{shift: b[5], flags: binary.LittleEndian.Uint16(b[6:]),
		base: binary.LittleEndian.Uint64(b[8:]), prev: binary.LittleEndian.Uint64(b[16:])}
	switch {
	case b[4] != formatVersion:
		return segHeader{}, fmt.Errorf("%w: unknown segment version %d", ErrCorrupt, b[4])
	case h.shift < minBlockShift || h.shift > maxBlockShift:
		return segHeader{}, fmt.Errorf("%w: block shift %d outside %d..%d", ErrCorrupt, h.shift, minBlockShift, maxBlockShift)
	case h.flags&^segFlagsKnown != 0:
		return segHeader{}, fmt.Errorf("%w: unknown segment flags %#x", ErrCorrupt, h.flags)
	case binary.LittleEndian.Uint32(b[24:]) != 0:
		return segHeader{}, fmt.Errorf("%w: reserved segment header bytes not zero", ErrCorrupt)
	case h.flags&segFlagGenesis != 0 && h.prev != 0:
		return segHeader{}, fmt.Errorf("%w: genesis segment names a previous segment %d", ErrCorrupt, h.prev)
	}
	return h, nil
}

// recHead is a record's header and zero bitmap: everything needed to index
// it without reading its blocks.
type recHead struct {
	seq     uint64
	disk    uint16
	first   uint64
	count   int
	final   bool
	zero    []byte // the bitmap; aliases the buffer it was parsed from
	nonzero int
}

func (h *recHead) isZero(i int) bool { return h.zero[i>>3]&(1<<(i&7)) != 0 }

// headLen is the length of the header plus the zero bitmap.
func headLen(count int) int { return recHeaderSize + (count+7)/8 }

// length is the whole record's length for a block size.
func (h *recHead) length(bs int) int {
	return headLen(h.count) + h.nonzero*(blockCRCSize+bs)
}

// parseRecHead checks a record's header and zero bitmap. b must start at the
// record; it may end anywhere (errShort if before the bitmap does).
func parseRecHead(b []byte) (recHead, error) {
	if len(b) < recHeaderSize {
		return recHead{}, errShort
	}
	if m := binary.LittleEndian.Uint32(b[0:]); m != recMagic {
		return recHead{}, fmt.Errorf("%w: bad record magic %#08x", ErrCorrupt, m)
	}
	h := recHead{
		seq:   binary.LittleEndian.Uint64(b[8:]),
		disk:  binary.LittleEndian.Uint16(b[6:]),
		first: binary.LittleEndian.Uint64(b[16:]),
		final: b[5]&recFlagFinal != 0,
	}
	count := binary.LittleEndian.Uint32(b[24:])
	switch {
	case b[4] != formatVersion:
		return recHead{}, fmt.Errorf("%w: unknown record version %d", ErrCorrupt, b[4])
	case b[5]&^recFlagsKnown != 0:
		return recHead{}, fmt.Errorf("%w: unknown record flags %#x", ErrCorrupt, b[5])
	case count == 0 || count > maxRunBlocks:
		return recHead{}, fmt.Errorf("%w: block count %d outside 1..%d", ErrCorrupt, count, maxRunBlocks)
	case h.first > maxBlockNumber:
		return recHead{}, fmt.Errorf("%w: first block %d above limit", ErrCorrupt, h.first)
	}
	h.count = int(count)
	hl := headLen(h.count)
	if len(b) < hl {
		return recHead{}, errShort
	}
	if got, want := crc32.Update(crc32.Checksum(b[:28], castagnoli), castagnoli, b[recHeaderSize:hl]), binary.LittleEndian.Uint32(b[28:]); got != want {
		return recHead{}, fmt.Errorf("%w: record header checksum %#08x, header says %#08x", ErrCorrupt, got, want)
	}
	h.zero = b[recHeaderSize:hl:hl]
	// Bits past count must be clear so that one record has one encoding.
	if rem := h.count & 7; rem != 0 && h.zero[len(h.zero)-1]>>rem != 0 {
		return recHead{}, fmt.Errorf("%w: zero bitmap has bits past block count %d", ErrCorrupt, h.count)
	}
	zeros := 0
	for _, x := range h.zero {
		zeros += bits.OnesCount8(x)
	}
	h.nonzero = h.count - zeros
	return h, nil
}

// blockCRC checksums one stored block together with its identity.
func blockCRC(seq uint64, disk uint16, block uint64, data []byte) uint32 {
	var id [18]byte
	binary.LittleEndian.PutUint64(id[0:], seq)
	binary.LittleEndian.PutUint16(id[8:], disk)
	binary.LittleEndian.PutUint64(id[10:], block)
	return crc32.Update(crc32.Checksum(id[:], castagnoli), castagnoli, data)
}

// appendRecord appends a record holding blocks first..first+len(zero)-1 to
// dst. data holds len(zero) blocks back to back; blocks with zero[i] set are
// not stored.
func appendRecord(dst []byte, seq uint64, disk uint16, first uint64, final bool, zero []bool, data []byte, bs int) []byte {
	count := len(zero)
	start := len(dst)
	hl := headLen(count)
	dst = append(dst, make([]byte, hl)...)
	h := dst[start:]
	binary.LittleEndian.PutUint32(h[0:], recMagic)
	h[4] = formatVersion
	if final {
		h[5] = recFlagFinal
	}
	binary.LittleEndian.PutUint16(h[6:], disk)
	binary.LittleEndian.PutUint64(h[8:], seq)
	binary.LittleEndian.PutUint64(h[16:], first)
	binary.LittleEndian.PutUint32(h[24:], uint32(count))
	for i, z := range zero {
		if z {
			h[recHeaderSize+(i>>3)] |= 1 << (i & 7)
		}
	}
	binary.LittleEndian.PutUint32(h[28:], crc32.Update(crc32.Checksum(h[:28], castagnoli), castagnoli, h[recHeaderSize:hl]))
	for i, z := range zero {
		if z {
			continue
		}
		blk := data[i*bs : (i+1)*bs]
		dst = binary.LittleEndian.AppendUint32(dst, blockCRC(seq, disk, first+uint64(i), blk))
		dst = append(dst, blk...)
	}
	return dst
}

// Record is one decoded undo record: the before-images of a run of
// contiguous blocks of one disk, preserved for one sequence number.
type Record struct {
	Seq        uint64
	Disk       int
	FirstBlock int64
	// Final is set on the last record of one Preserve call: a call whose
	// final record is missing was interrupted.
	Final bool
	// Blocks holds one entry per block of the run: nil for a block that was
	// all zero, else the block (aliasing the decoded buffer).
	Blocks [][]byte
}

// DecodeRecord decodes the record at the start of buf, verifying the header
// and every block checksum. It returns the record and its encoded length.
// The error wraps ErrCorrupt when the bytes can never become a valid record,
// and is errShort (not ErrCorrupt) when buf merely ends too early. Pure, so
// it can be fuzzed.
func DecodeRecord(buf []byte, blockSize int) (Record, int, error) {
	if blockSize < 1<<minBlockShift || blockSize > 1<<maxBlockShift || blockSize&(blockSize-1) != 0 {
		return Record{}, 0, fmt.Errorf("journal: block size %d is not a power of two in %d..%d", blockSize, 1<<minBlockShift, 1<<maxBlockShift)
	}
	h, err := parseRecHead(buf)
	if err != nil {
		return Record{}, 0, err
	}
	n := h.length(blockSize)
	if len(buf) < n {
		return Record{}, 0, errShort
	}
	r := Record{Seq: h.seq, Disk: int(h.disk), FirstBlock: int64(h.first), Final: h.final, Blocks: make([][]byte, h.count)}
	p := headLen(h.count)
	for i := range h.count {
		if h.isZero(i) {
			continue
		}
		want := binary.LittleEndian.Uint32(buf[p:])
		blk := buf[p+blockCRCSize : p+blockCRCSize+blockSize : p+blockCRCSize+blockSize]
		if got := blockCRC(h.seq, h.disk, h.first+uint64(i), blk); got != want {
			return Record{}, 0, fmt.Errorf("%w: block %d of record (seq %d disk %d) checksum %#08x, stored %#08x", ErrCorrupt, h.first+uint64(i), h.seq, h.disk, got, want)
		}
		r.Blocks[i] = blk
		p += blockCRCSize + blockSize
	}
	return r, n, nil
}

// CorruptError locates damage in a segment file. It unwraps to an error
// wrapping ErrCorrupt.
type CorruptError struct {
	Segment string // path of the segment file
	Offset  int64  // byte offset of the damaged record or block
	Err     error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("journal: segment %s offset %d: %v", e.Segment, e.Offset, e.Err)
}

func (e *CorruptError) Unwrap() error { return e.Err }
