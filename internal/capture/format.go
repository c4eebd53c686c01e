package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
)

// Tracker state file layout (all integers little endian; see
// docs/capture.md for the reasoning):
//
//	[0, 4096)               superblock: geometry, written once at creation
//	[4096, +slotSize)       slot 0 \ full state: AL bitmap + dirty bitmap,
//	[.., +slotSize)         slot 1 / alternating, newest valid seq wins
//	[.., +journalSize)      activity-log journal: records appended after
//	                        the newest slot, each naming extents that
//	                        became active

// ErrCorruptState means the state file cannot be trusted. The agent must not
// treat the disk as clean: ResetAllDirty starts over with a full resync.
var ErrCorruptState = errors.New("capture state file corrupt")

// ErrSizeMismatch means the state file was made for a disk of another size.
var ErrSizeMismatch = errors.New("capture state file is for a different disk size")

const (
	superMagic = "STBYCAP1"
	slotMagic  = "STBYSLOT"
	// recordMagic is "ALJR" read as a little-endian uint32.
	recordMagic = 0x524a4c41

	formatVersion = 1

	superSize      = 4096
	superUsed      = 44
	slotHeaderSize = 24
	recordHeader   = 20 // magic, count, base seq, index
	// defaultJournalSize holds ~37000 single-extent commits between two
	// slot writes; Clean and the periodic Persist reset it long before.
	defaultJournalSize = 1 << 20
	minJournalSize     = 4096
	maxJournalSize     = 64 << 20

	// maxBlocks bounds the dirty bitmap to 16 MiB (two of them in memory:
	// dirty and in-flight); larger disks get larger blocks.
	maxBlocks = 1 << 27
	// maxExtents bounds the per-extent counters to 32 MiB.
	maxExtents = 1 << 22

	minBlockShift = 9
	maxShift      = 50
	maxDiskSize   = 1 << 60

	flagClean = 1 << 0 // written by Close
	flagFresh = 1 << 1 // written at creation / reset: nothing was ever synced

	// maxRecordExtents keeps one record well inside the journal.
	maxRecordExtents = 4096
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type geometry struct {
	diskSize    int64
	blockShift  uint
	extentShift uint
	journalSize int64
}

func (g geometry) blockSize() int64  { return 1 << g.blockShift }
func (g geometry) extentSize() int64 { return 1 << g.extentShift }
func (g geometry) nBlocks() int64    { return (g.diskSize + g.blockSize() - 1) >> g.blockShift }
func (g geometry) nExtents() int64   { return (g.diskSize + g.extentSize() - 1) >> g.extentShift }
func (g geometry) alWords() int64    { return wordsFor(g.nExtents()) }
func (g geometry) bmWords() int64    { return wordsFor(g.nBlocks()) }

// blocksPerExtentShift is log2(blocks per extent).
func (g geometry) blocksPerExtentShift() uint { return g.extentShift - g.blockShift }

func (g geometry) slotSize() int64 {
	n := slotHeaderSize + 8*(g.alWords()+g.bmWords())
	return (n + 4095) &^ 4095
}
func (g geometry) slotOff(i int) int64 { return superSize + int64(i)*g.slotSize() }
func (g geometry) journalOff() int64   { return superSize + 2*g.slotSize() }
func (g geometry) fileSize() int64     { return g.journalOff() + g.journalSize }

func (g geometry) validate() error {
	switch {
	case g.diskSize <= 0 || g.diskSize > maxDiskSize:
		return fmt.Errorf("disk size %d out of range", g.diskSize)
	case g.blockShift < minBlockShift || g.blockShift > maxShift:
		return fmt.Errorf("block shift %d out of range", g.blockShift)
	case g.extentShift < g.blockShift || g.extentShift > maxShift:
		return fmt.Errorf("extent shift %d out of range", g.extentShift)
	case g.nBlocks() > maxBlocks:
		return fmt.Errorf("%d blocks exceed the limit of %d", g.nBlocks(), maxBlocks)
	case g.nExtents() > maxExtents:
		return fmt.Errorf("%d extents exceed the limit of %d", g.nExtents(), maxExtents)
	case g.journalSize < minJournalSize || g.journalSize > maxJournalSize || g.journalSize%4096 != 0:
		return fmt.Errorf("journal size %d out of range", g.journalSize)
	}
	return nil
}

// newGeometry picks block and extent sizes: the requested ones, scaled up
// (doubling) until the bitmaps fit their limits, so that any disk size works
// at the cost of coarser tracking on huge disks.
func newGeometry(diskSize, blockSize, extentSize, journalSize int64) (geometry, error) {
	if diskSize <= 0 || diskSize > maxDiskSize {
		return geometry{}, fmt.Errorf("disk size %d out of range (1..%d)", diskSize, int64(maxDiskSize))
	}
	if blockSize < 1<<minBlockShift || blockSize&(blockSize-1) != 0 {
		return geometry{}, fmt.Errorf("block size %d: want a power of two >= 512", blockSize)
	}
	if extentSize < blockSize || extentSize&(extentSize-1) != 0 {
		return geometry{}, fmt.Errorf("extent size %d: want a power of two >= block size %d", extentSize, blockSize)
	}
	g := geometry{
		diskSize:    diskSize,
		blockShift:  uint(bits.TrailingZeros64(uint64(blockSize))),
		extentShift: uint(bits.TrailingZeros64(uint64(extentSize))),
		journalSize: journalSize,
	}
	for g.nBlocks() > maxBlocks {
		g.blockShift++
	}
	if g.extentShift < g.blockShift {
		g.extentShift = g.blockShift
	}
	for g.nExtents() > maxExtents {
		g.extentShift++
	}
	return g, g.validate()
}

func encodeSuper(g geometry) []byte {
	b := make([]byte, superSize)
	copy(b, superMagic)
	binary.LittleEndian.PutUint32(b[8:], formatVersion)
	binary.LittleEndian.PutUint32(b[12:], uint32(g.blockShift))
	binary.LittleEndian.PutUint32(b[16:], uint32(g.extentShift))
	binary.LittleEndian.PutUint64(b[24:], uint64(g.diskSize))
	binary.LittleEndian.PutUint64(b[32:], uint64(g.journalSize))
	binary.LittleEndian.PutUint32(b[40:], crc32.Checksum(b[:40], castagnoli))
	return b
}

func decodeSuper(b []byte) (geometry, error) {
	if len(b) < superUsed {
		return geometry{}, fmt.Errorf("%w: %d bytes, too short for a superblock", ErrCorruptState, len(b))
	}
	if string(b[:8]) != superMagic {
		return geometry{}, fmt.Errorf("%w: bad superblock magic", ErrCorruptState)
	}
	if crc32.Checksum(b[:40], castagnoli) != binary.LittleEndian.Uint32(b[40:]) {
		return geometry{}, fmt.Errorf("%w: superblock checksum mismatch", ErrCorruptState)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != formatVersion {
		return geometry{}, fmt.Errorf("%w: unsupported format version %d", ErrCorruptState, v)
	}
	bs := binary.LittleEndian.Uint32(b[12:])
	es := binary.LittleEndian.Uint32(b[16:])
	ds := binary.LittleEndian.Uint64(b[24:])
	js := binary.LittleEndian.Uint64(b[32:])
	if bs > maxShift || es > maxShift || ds > maxDiskSize || js > maxJournalSize {
		return geometry{}, fmt.Errorf("%w: superblock geometry out of range", ErrCorruptState)
	}
	g := geometry{diskSize: int64(ds), blockShift: uint(bs), extentShift: uint(es), journalSize: int64(js)}
	if err := g.validate(); err != nil {
		return geometry{}, fmt.Errorf("%w: superblock: %v", ErrCorruptState, err)
	}
	return g, nil
}

// encodeSlotHeader starts a slot image in buf; the caller fills the payload
// straight from its live bitmaps (avoiding a second copy of up to 16 MiB)
// and then calls sealSlot.
func encodeSlotHeader(buf []byte, seq uint64, flags uint32) {
	copy(buf, slotMagic)
	binary.LittleEndian.PutUint64(buf[8:], seq)
	binary.LittleEndian.PutUint32(buf[16:], flags)
}

// sealSlot computes the checksum of a filled slot image.
func sealSlot(buf []byte, g geometry) []byte {
	n := slotHeaderSize + 8*(g.alWords()+g.bmWords())
	c := crc32.Update(0, castagnoli, buf[:20])
	c = crc32.Update(c, castagnoli, buf[slotHeaderSize:n])
	binary.LittleEndian.PutUint32(buf[20:], c)
	return buf[:n]
}

type slotImage struct {
	seq   uint64
	flags uint32
	al    []uint64
	dirty []uint64
}

func decodeSlot(b []byte, g geometry) (slotImage, error) {
	n := slotHeaderSize + 8*(g.alWords()+g.bmWords())
	if int64(len(b)) < n {
		return slotImage{}, fmt.Errorf("truncated slot: %d of %d bytes", len(b), n)
	}
	if string(b[:8]) != slotMagic {
		return slotImage{}, errors.New("bad slot magic (never written or overwritten)")
	}
	c := crc32.Update(0, castagnoli, b[:20])
	c = crc32.Update(c, castagnoli, b[slotHeaderSize:n])
	if c != binary.LittleEndian.Uint32(b[20:]) {
		return slotImage{}, errors.New("slot checksum mismatch (torn or damaged write)")
	}
	s := slotImage{
		seq:   binary.LittleEndian.Uint64(b[8:]),
		flags: binary.LittleEndian.Uint32(b[16:]),
	}
	if s.seq == 0 {
		return slotImage{}, errors.New("slot sequence number 0")
	}
	if s.flags&^(flagClean|flagFresh) != 0 {
		return slotImage{}, fmt.Errorf("unknown slot flags %#x", s.flags)
	}
	p := b[slotHeaderSize:n]
	var err error
	if s.al, err = decodeWords(p[:8*g.alWords()], g.nExtents()); err != nil {
		return slotImage{}, fmt.Errorf("activity log: %w", err)
	}
	if s.dirty, err = decodeWords(p[8*g.alWords():], g.nBlocks()); err != nil {
		return slotImage{}, fmt.Errorf("dirty bitmap: %w", err)
	}
	return s, nil
}

func decodeWords(b []byte, nbits int64) ([]uint64, error) {
	w := make([]uint64, len(b)/8)
	for i := range w {
		w[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	if len(w) > 0 && w[len(w)-1]&^tailMask(nbits) != 0 {
		return nil, errors.New("bits set beyond the end of the disk")
	}
	return w, nil
}

// appendRecord appends one journal record naming extents to buf.
func appendRecord(buf []byte, base uint64, index uint32, extents []uint32) []byte {
	start := len(buf)
	buf = binary.LittleEndian.AppendUint32(buf, recordMagic)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(extents)))
	buf = binary.LittleEndian.AppendUint64(buf, base)
	buf = binary.LittleEndian.AppendUint32(buf, index)
	for _, e := range extents {
		buf = binary.LittleEndian.AppendUint32(buf, e)
	}
	return binary.LittleEndian.AppendUint32(buf, crc32.Checksum(buf[start:], castagnoli))
}

func recordLen(nExtents int) int64 { return recordHeader + 4*int64(nExtents) + 4 }

// replayJournal returns the extents named by the valid records for the slot
// with sequence base, and the offset just past the last valid record. It
// stops at the first record that is not a valid continuation: that is
// either the torn tail of an unacknowledged append or a leftover from an
// older slot generation, and neither was ever relied upon.
func replayJournal(j []byte, base uint64, nExtents int64) (extents []uint32, end int64, records uint32, err error) {
	pos := int64(0)
	for {
		rest := j[pos:]
		if len(rest) < recordHeader+4 || binary.LittleEndian.Uint32(rest) != recordMagic {
			return extents, pos, records, nil
		}
		count := binary.LittleEndian.Uint32(rest[4:])
		if count == 0 || count > maxRecordExtents || int64(len(rest)) < recordLen(int(count)) {
			return extents, pos, records, nil
		}
		n := recordLen(int(count))
		if crc32.Checksum(rest[:n-4], castagnoli) != binary.LittleEndian.Uint32(rest[n-4:]) {
			return extents, pos, records, nil
		}
		if binary.LittleEndian.Uint64(rest[8:]) != base || binary.LittleEndian.Uint32(rest[16:]) != records {
			return extents, pos, records, nil
		}
		for i := uint32(0); i < count; i++ {
			e := binary.LittleEndian.Uint32(rest[recordHeader+4*int64(i):])
			if int64(e) >= nExtents {
				// A checksummed record we wrote cannot name such an extent:
				// the file is not what we think it is.
				return nil, 0, 0, fmt.Errorf("%w: journal record %d names extent %d of %d", ErrCorruptState, records, e, nExtents)
			}
			extents = append(extents, e)
		}
		records++
		pos += n
	}
}

// decodedState is everything recovery needs from a state file.
type decodedState struct {
	geo   geometry
	seq   uint64
	flags uint32
	slot  int
	// al is the slot's activity log with the journal's extents added.
	al    []uint64
	dirty []uint64
	// journalEnd and journalRecords locate the append point after replay.
	journalEnd     int64
	journalRecords uint32
	// slotErr explains why the other slot was not used (nil if it was
	// valid but older); for logging.
	slotErr error
}

// decodeState parses a whole state file image. It is pure (no I/O) so it can
// be fuzzed; every length is checked against len(b) before allocating.
func decodeState(b []byte) (*decodedState, error) {
	g, err := decodeSuper(b)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) < g.fileSize() {
		return nil, fmt.Errorf("%w: file truncated: %d bytes, want %d", ErrCorruptState, len(b), g.fileSize())
	}
	var slots [2]slotImage
	var errs [2]error
	for i := range slots {
		off := g.slotOff(i)
		slots[i], errs[i] = decodeSlot(b[off:off+g.slotSize()], g)
	}
	pick := -1
	switch {
	case errs[0] == nil && errs[1] == nil:
		pick = 0
		if slots[1].seq > slots[0].seq {
			pick = 1
		}
	case errs[0] == nil:
		pick = 0
	case errs[1] == nil:
		pick = 1
	default:
		return nil, fmt.Errorf("%w: both state slots invalid: slot 0: %v; slot 1: %v", ErrCorruptState, errs[0], errs[1])
	}
	s := slots[pick]
	extents, end, recs, err := replayJournal(b[g.journalOff():g.fileSize()], s.seq, g.nExtents())
	if err != nil {
		return nil, err
	}
	for _, e := range extents {
		s.al[e>>6] |= 1 << (e & 63)
	}
	return &decodedState{
		geo:            g,
		seq:            s.seq,
		flags:          s.flags,
		slot:           pick,
		al:             s.al,
		dirty:          s.dirty,
		journalEnd:     end,
		journalRecords: recs,
		slotErr:        errs[1-pick],
	}, nil
}

// encodeFreshState builds a complete state file with every block dirty,
// the activity log empty, and flags.
func encodeFreshState(g geometry, flags uint32) []byte {
	b := make([]byte, g.fileSize())
	copy(b, encodeSuper(g))
	slot := b[g.slotOff(1) : g.slotOff(1)+g.slotSize()]
	encodeSlotHeader(slot, 1, flags)
	bm := slot[slotHeaderSize+8*g.alWords():]
	nw := g.bmWords()
	for i := int64(0); i < nw; i++ {
		w := ^uint64(0)
		if i == nw-1 {
			w = tailMask(g.nBlocks())
		}
		binary.LittleEndian.PutUint64(bm[8*i:], w)
	}
	sealSlot(slot, g)
	return b
}
