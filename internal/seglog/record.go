package seglog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Record layout, little-endian (see docs/formats.md, "Segment log (seglog)"):
//
//	off  size  field
//	  0     4  magic    "SBLG"
//	  4     1  version  1
//	  5     1  flags    0
//	  6     2  reserved 0
//	  8     4  length   payload bytes
//	 12     8  first    first sequence number covered
//	 20     8  last     last sequence number covered
//	 28     4  crc32c   over bytes 0..27 and the payload
//	 32     -  payload
const (
	recordMagic   uint32 = 0x474c4253 // the bytes "SBLG" when stored little-endian
	recordVersion uint8  = 1
	headerSize           = 32
	crcOffset            = 28

	// MaxEntrySize bounds one entry's payload. The length field could say
	// 4 GiB, but a reader holds a whole entry in memory, and a bound lets
	// recovery call a damaged length field corrupt instead of trusting it.
	MaxEntrySize = 1 << 30
)

// castagnoli is read-only after package initialisation.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errShortRecord means buf ends before the record does. At the tail of the
// last segment that is a torn write; anywhere else the caller turns it into
// corruption.
var errShortRecord = errors.New("seglog: incomplete record")

type header struct {
	length      uint32
	first, last uint64
}

// parseHeader checks the fields that can be checked without the payload.
// b must hold at least headerSize bytes.
func parseHeader(b []byte) (header, error) {
	if m := binary.LittleEndian.Uint32(b[0:]); m != recordMagic {
		return header{}, fmt.Errorf("%w: bad magic %#08x", ErrCorrupt, m)
	}
	if v := b[4]; v != recordVersion {
		return header{}, fmt.Errorf("%w: unknown version %d", ErrCorrupt, v)
	}
	if fl, rs := b[5], binary.LittleEndian.Uint16(b[6:]); fl != 0 || rs != 0 {
		return header{}, fmt.Errorf("%w: flags %#x reserved %#x, want 0", ErrCorrupt, fl, rs)
	}
	h := header{
		length: binary.LittleEndian.Uint32(b[8:]),
		first:  binary.LittleEndian.Uint64(b[12:]),
		last:   binary.LittleEndian.Uint64(b[20:]),
	}
	if h.length > MaxEntrySize {
		return header{}, fmt.Errorf("%w: length %d above limit %d", ErrCorrupt, h.length, MaxEntrySize)
	}
	if h.first > h.last {
		return header{}, fmt.Errorf("%w: first seq %d above last %d", ErrCorrupt, h.first, h.last)
	}
	return h, nil
}

// putHeader fills b[:headerSize] for a record carrying e.
func putHeader(b []byte, e Entry) {
	binary.LittleEndian.PutUint32(b[0:], recordMagic)
	b[4] = recordVersion
	b[5] = 0
	binary.LittleEndian.PutUint16(b[6:], 0)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(e.Data)))
	binary.LittleEndian.PutUint64(b[12:], e.First)
	binary.LittleEndian.PutUint64(b[20:], e.Last)
	crc := crc32.Update(0, castagnoli, b[:crcOffset])
	crc = crc32.Update(crc, castagnoli, e.Data)
	binary.LittleEndian.PutUint32(b[crcOffset:], crc)
}

// appendRecord appends the encoding of e to dst.
func appendRecord(dst []byte, e Entry) []byte {
	n := len(dst)
	dst = append(dst, make([]byte, headerSize)...)
	putHeader(dst[n:], e)
	return append(dst, e.Data...)
}

// decodeRecord decodes the record at the start of buf. It returns the entry,
// whose Data aliases buf, and the record's total length. The error wraps
// ErrCorrupt when the bytes can never become a valid record, and is
// errShortRecord when buf merely ends too early. Pure, so it can be fuzzed.
func decodeRecord(buf []byte) (Entry, int, error) {
	if len(buf) < headerSize {
		return Entry{}, 0, errShortRecord
	}
	h, err := parseHeader(buf)
	if err != nil {
		return Entry{}, 0, err
	}
	n := headerSize + int(h.length)
	if len(buf) < n {
		return Entry{}, 0, errShortRecord
	}
	want := binary.LittleEndian.Uint32(buf[crcOffset:])
	got := crc32.Update(crc32.Update(0, castagnoli, buf[:crcOffset]), castagnoli, buf[headerSize:n])
	if got != want {
		return Entry{}, 0, fmt.Errorf("%w: checksum %#08x, header says %#08x", ErrCorrupt, got, want)
	}
	return Entry{First: h.first, Last: h.last, Data: buf[headerSize:n:n]}, n, nil
}

// CorruptError locates damage found in a segment file. It unwraps to an
// error wrapping ErrCorrupt.
type CorruptError struct {
	Segment string // path of the segment file
	Offset  int64  // byte offset of the damaged record
	Err     error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("seglog: segment %s offset %d: %v", e.Segment, e.Offset, e.Err)
}

func (e *CorruptError) Unwrap() error { return e.Err }
