// Package wire is the data-plane framing between agent, process server and
// master target: a small framed stream (not HTTP) because bulk data must not
// pay for chunked encoding, and every frame carries its own checksums so a
// corrupted or truncated frame is refused before any of it is used.
package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Frame header layout (little-endian), 24 bytes:
//
//	0  magic   u32  "SBW1"
//	4  version u8   1
//	5  type    u8
//	6  codec   u8   Codec of the payload
//	7  -       u8   reserved, zero
//	8  length  u32  payload bytes on the wire
//	12 rawLen  u32  payload bytes after decompression
//	16 pcrc    u32  CRC-32C of the wire payload
//	20 hcrc    u32  CRC-32C of bytes 0..19
const (
	HeaderSize = 24
	Magic      = 0x31574253 // "SBW1"
	Version    = 1
	// MaxPayload bounds a frame so a corrupt length can never make a peer
	// allocate without limit.
	MaxPayload = 64 << 20
)

// Type says what a frame holds.
type Type uint8

const (
	TypeHello   Type = 1 // JSON Hello, first frame from the connecting side
	TypeWelcome Type = 2 // JSON Welcome, the answer
	TypeBatch   Type = 3 // binary Batch
	TypeAck     Type = 4 // binary Ack
	TypeError   Type = 5 // JSON ErrorMsg; the sender closes after it
	TypeStatus  Type = 6 // JSON status request/answer
	TypePing    Type = 7 // keepalive, empty
)

func (t Type) String() string {
	switch t {
	case TypeHello:
		return "hello"
	case TypeWelcome:
		return "welcome"
	case TypeBatch:
		return "batch"
	case TypeAck:
		return "ack"
	case TypeError:
		return "error"
	case TypeStatus:
		return "status"
	case TypePing:
		return "ping"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Codec is the compression of a frame payload.
type Codec uint8

const (
	CodecNone Codec = 0
	CodecZstd Codec = 1
	CodecS2   Codec = 2
)

func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecZstd:
		return "zstd"
	case CodecS2:
		return "s2"
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

// ParseCodec maps a policy name to a codec.
func ParseCodec(s string) (Codec, error) {
	switch s {
	case "", "none", "off":
		return CodecNone, nil
	case "zstd":
		return CodecZstd, nil
	case "s2":
		return CodecS2, nil
	}
	return 0, fmt.Errorf("unknown compression %q (want none, zstd, s2 or adaptive)", s)
}

// ErrCorrupt marks frames that fail validation: the connection must be
// dropped, nothing in the frame may be used.
var ErrCorrupt = errors.New("corrupt frame")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header is a decoded frame header.
type Header struct {
	Type   Type
	Codec  Codec
	Length uint32
	RawLen uint32
	PCRC   uint32
}

// DecodeHeader validates and decodes a frame header.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: short header (%d bytes)", ErrCorrupt, len(b))
	}
	if m := binary.LittleEndian.Uint32(b[0:]); m != Magic {
		return Header{}, fmt.Errorf("%w: bad magic %#08x (not a standby peer?)", ErrCorrupt, m)
	}
	if got, want := binary.LittleEndian.Uint32(b[20:]), crc32.Checksum(b[:20], castagnoli); got != want {
		return Header{}, fmt.Errorf("%w: header checksum %#08x, computed %#08x", ErrCorrupt, got, want)
	}
	if b[4] != Version {
		return Header{}, fmt.Errorf("%w: unsupported version %d (this build speaks %d)", ErrCorrupt, b[4], Version)
	}
	h := Header{
		Type:   Type(b[5]),
		Codec:  Codec(b[6]),
		Length: binary.LittleEndian.Uint32(b[8:]),
		RawLen: binary.LittleEndian.Uint32(b[12:]),
		PCRC:   binary.LittleEndian.Uint32(b[16:]),
	}
	if h.Length > MaxPayload || h.RawLen > MaxPayload {
		return Header{}, fmt.Errorf("%w: payload %d/%d bytes exceeds limit %d", ErrCorrupt, h.Length, h.RawLen, MaxPayload)
	}
	if h.Codec > CodecS2 {
		return Header{}, fmt.Errorf("%w: unknown codec %d", ErrCorrupt, h.Codec)
	}
	if h.Codec == CodecNone && h.Length != h.RawLen {
		return Header{}, fmt.Errorf("%w: uncompressed payload with length %d != raw length %d", ErrCorrupt, h.Length, h.RawLen)
	}
	return h, nil
}

func encodeHeader(b []byte, h Header) {
	binary.LittleEndian.PutUint32(b[0:], Magic)
	b[4] = Version
	b[5] = byte(h.Type)
	b[6] = byte(h.Codec)
	b[7] = 0
	binary.LittleEndian.PutUint32(b[8:], h.Length)
	binary.LittleEndian.PutUint32(b[12:], h.RawLen)
	binary.LittleEndian.PutUint32(b[16:], h.PCRC)
	binary.LittleEndian.PutUint32(b[20:], crc32.Checksum(b[:20], castagnoli))
}

// Conn frames a byte stream. Reads and writes may run in two goroutines;
// several writers are serialised by a mutex.
type Conn struct {
	rw io.ReadWriter
	br *bufio.Reader

	wmu  sync.Mutex
	bw   *bufio.Writer
	zenc *zstd.Encoder
	wbuf []byte
	hdr  [HeaderSize]byte

	dmu    sync.Mutex // guards zdec and closed: Close may come from another goroutine
	zdec   *zstd.Decoder
	closed bool
	rbuf   []byte
	dbuf   []byte
	// lastDecoded says the last payload ReadFrame returned lives in dbuf
	// (it was compressed), not in rbuf.
	lastDecoded bool
	// lastSum is the checksum the last frame read arrived with; it covers
	// the payload ReadFrame returned unless that was decoded.
	lastSum uint32

	// Counters for reporting compression ratio; guarded by wmu.
	rawOut, wireOut uint64

	pool *BufferPool // where the read buffer comes from after Keep; may be nil

	flusher interface{ Flush() error } // rw, when it buffers below us; else nil
}

// SetPool makes the connection take its read buffer from p when it needs a
// new one (after Keep handed the last one over, or for a larger frame).
// Call it before the first ReadFrame.
func (c *Conn) SetPool(p *BufferPool) { c.pool = p }

// NewConn wraps a stream (normally a *tls.Conn). A stream with a Flush
// method is flushed at the end of every frame.
func NewConn(rw io.ReadWriter) *Conn {
	c := &Conn{rw: rw, br: bufio.NewReaderSize(rw, 1<<20), bw: bufio.NewWriterSize(rw, 1<<20)}
	c.flusher, _ = rw.(interface{ Flush() error })
	return c
}

// WriteFrame sends one frame, compressing the payload with codec. If
// compression does not shrink the payload it is sent raw, so incompressible
// data costs only the attempt.
func (c *Conn) WriteFrame(t Type, payload []byte, codec Codec) error {
	return c.writeFrame(t, payload, codec, 0, false)
}

// writeFrame is WriteFrame with the payload's CRC-32C when known.
func (c *Conn) writeFrame(t Type, payload []byte, codec Codec, sum uint32, known bool) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("wire: %s frame of %d bytes exceeds limit %d", t, len(payload), MaxPayload)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	body := payload
	used := CodecNone
	switch codec {
	case CodecZstd:
		if c.zenc == nil {
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
			if err != nil {
				return fmt.Errorf("wire: creating zstd encoder: %w", err)
			}
			c.zenc = enc
		}
		c.wbuf = c.zenc.EncodeAll(payload, c.wbuf[:0])
		if len(c.wbuf) < len(payload) {
			body, used = c.wbuf, CodecZstd
		}
	case CodecS2:
		n := s2.MaxEncodedLen(len(payload))
		if cap(c.wbuf) < n {
			c.wbuf = make([]byte, n)
		}
		c.wbuf = s2.Encode(c.wbuf[:n], payload)
		if len(c.wbuf) < len(payload) {
			body, used = c.wbuf, CodecS2
		}
	}
	crc := sum
	if used != CodecNone || !known {
		crc = crc32.Checksum(body, castagnoli)
	}
	return c.writeLocked(Header{Type: t, Codec: used, Length: uint32(len(body)), RawLen: uint32(len(payload)), PCRC: crc}, body)
}

// WriteFrameSum sends one uncompressed frame whose payload's CRC-32C the
// caller already has: the checksum a frame arrived with, when the payload
// is forwarded unchanged. Passing it on instead of computing it again saves
// a pass over the data and makes the check end to end: a payload damaged in
// memory between the two links is refused by the next peer.
func (c *Conn) WriteFrameSum(t Type, payload []byte, sum uint32) error {
	return c.writeFrame(t, payload, CodecNone, sum, true)
}

// WriteFrameParts sends one uncompressed frame whose payload is the
// concatenation of parts, without joining them first: a batch of large
// copies goes from the buffers it was read into straight to the stream.
func (c *Conn) WriteFrameParts(t Type, parts [][]byte) error {
	n := 0
	var crc uint32
	for _, p := range parts {
		n += len(p)
		crc = crc32.Update(crc, castagnoli, p)
	}
	if n > MaxPayload {
		return fmt.Errorf("wire: %s frame of %d bytes exceeds limit %d", t, n, MaxPayload)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(Header{Type: t, Codec: CodecNone, Length: uint32(n), RawLen: uint32(n), PCRC: crc}, parts...)
}

// directWrite is the part size from which a part goes to the stream itself
// rather than through the frame buffer: copying megabytes into the buffer
// only to hand them on costs a pass over memory, while a small part alone
// would become a record of its own on a TLS stream.
const directWrite = 64 << 10

// writeLocked sends a frame header and its payload parts. Caller holds wmu.
func (c *Conn) writeLocked(h Header, parts ...[]byte) error {
	encodeHeader(c.hdr[:], h)
	c.rawOut += uint64(h.RawLen) + HeaderSize
	c.wireOut += uint64(h.Length) + HeaderSize
	if _, err := c.bw.Write(c.hdr[:]); err != nil {
		return fmt.Errorf("wire: writing %s header: %w", h.Type, err)
	}
	for _, p := range parts {
		if len(p) < directWrite {
			if _, err := c.bw.Write(p); err != nil {
				return fmt.Errorf("wire: writing %s payload: %w", h.Type, err)
			}
			continue
		}
		if err := c.bw.Flush(); err != nil {
			return fmt.Errorf("wire: writing %s payload: %w", h.Type, err)
		}
		if _, err := c.rw.Write(p); err != nil {
			return fmt.Errorf("wire: writing %s payload: %w", h.Type, err)
		}
	}
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("wire: flushing %s frame: %w", h.Type, err)
	}
	if c.flusher != nil {
		if err := c.flusher.Flush(); err != nil {
			return fmt.Errorf("wire: flushing %s frame: %w", h.Type, err)
		}
	}
	return nil
}

// Counters reports bytes before and after compression sent so far.
func (c *Conn) Counters() (raw, onWire uint64) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.rawOut, c.wireOut
}

// ReadFrame reads the next frame and returns its decompressed payload. The
// payload is valid until the next ReadFrame call.
func (c *Conn) ReadFrame() (Type, []byte, error) {
	var hb [HeaderSize]byte
	if _, err := io.ReadFull(c.br, hb[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, fmt.Errorf("wire: %w: truncated header", ErrCorrupt)
		}
		return 0, nil, err
	}
	h, err := DecodeHeader(hb[:])
	if err != nil {
		return 0, nil, fmt.Errorf("wire: %w", err)
	}
	if cap(c.rbuf) < int(h.Length) {
		c.pool.Put(c.rbuf)
		c.rbuf = c.pool.Get(int(h.Length))
	}
	body := c.rbuf[:h.Length]
	if n, err := c.readBody(body); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return 0, nil, fmt.Errorf("wire: %w: %s frame truncated (wanted %d payload bytes, got %d)", ErrCorrupt, h.Type, h.Length, n)
		}
		// A peer that closes mid-frame with data of ours unread resets
		// the connection instead of ending it: the frame is just as cut
		// short, and the log should say so whichever way it ended.
		return 0, nil, fmt.Errorf("wire: reading %s payload: frame truncated after %d of %d bytes: %w", h.Type, n, h.Length, err)
	}
	payload, err := c.decodeBody(h, body)
	if err != nil {
		return 0, nil, err
	}
	c.lastDecoded = h.Codec != CodecNone
	c.lastSum = h.PCRC
	return h.Type, payload, nil
}

// readBody fills body from what the read buffer holds and, for a large
// remainder, from the stream itself: the buffer serves the small frames
// and headers, and passing megabytes through it would copy them once more.
// It returns how many bytes it read.
func (c *Conn) readBody(body []byte) (int, error) {
	n := 0
	if k := min(c.br.Buffered(), len(body)); k > 0 {
		n, _ = c.br.Read(body[:k]) // k bytes are buffered: no error, no short read
	}
	rest := body[n:]
	var m int
	var err error
	if len(rest) < directWrite {
		m, err = io.ReadFull(c.br, rest)
	} else {
		m, err = io.ReadFull(c.rw, rest) // the buffer is empty
	}
	return n + m, err
}

// LastSum is the CRC-32C of the last payload ReadFrame returned, for
// WriteFrameSum; ok is false when that payload was decompressed (the
// frame's checksum covered the compressed bytes).
func (c *Conn) LastSum() (sum uint32, ok bool) { return c.lastSum, !c.lastDecoded }

// Keep returns data as a buffer the connection will not reuse, for a
// payload that must outlive the next read (copies relayed in memory): the
// last ReadFrame's payload is handed over without a copy (the connection
// reads the next frame into a new buffer); anything else is copied.
func (c *Conn) Keep(data []byte) []byte {
	last := c.rbuf
	if c.lastDecoded {
		last = c.dbuf
	}
	if len(data) == 0 || len(last) == 0 || &data[0] != &last[0] {
		return append([]byte(nil), data...)
	}
	if c.lastDecoded {
		c.dbuf = nil
	} else {
		c.rbuf = nil
	}
	return data
}

func (c *Conn) decodeBody(h Header, body []byte) ([]byte, error) {
	if got := crc32.Checksum(body, castagnoli); got != h.PCRC {
		return nil, fmt.Errorf("wire: %w: %s payload checksum %#08x, header says %#08x", ErrCorrupt, h.Type, got, h.PCRC)
	}
	switch h.Codec {
	case CodecNone:
		return body, nil
	case CodecZstd:
		out, err := c.decodeZstd(body)
		if err != nil {
			return nil, err
		}
		c.dbuf = out
	case CodecS2:
		n, err := s2.DecodedLen(body)
		if err != nil || n != int(h.RawLen) {
			return nil, fmt.Errorf("wire: %w: s2 length %d, header says %d (%v)", ErrCorrupt, n, h.RawLen, err)
		}
		if cap(c.dbuf) < n {
			c.dbuf = make([]byte, n)
		}
		out, err := s2.Decode(c.dbuf[:n], body)
		if err != nil {
			return nil, fmt.Errorf("wire: %w: s2: %v", ErrCorrupt, err)
		}
		c.dbuf = out
	}
	if len(c.dbuf) != int(h.RawLen) {
		return nil, fmt.Errorf("wire: %w: decompressed %d bytes, header says %d", ErrCorrupt, len(c.dbuf), h.RawLen)
	}
	return c.dbuf, nil
}

// decodeZstd decompresses a zstd payload into dbuf's storage, holding dmu
// so that Close from another goroutine does not free the decoder under it.
func (c *Conn) decodeZstd(body []byte) ([]byte, error) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.closed {
		return nil, errors.New("wire: connection closed")
	}
	if c.zdec == nil {
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxPayload))
		if err != nil {
			return nil, fmt.Errorf("wire: creating zstd decoder: %w", err)
		}
		c.zdec = d
	}
	out, err := c.zdec.DecodeAll(body, c.dbuf[:0])
	if err != nil {
		return nil, fmt.Errorf("wire: %w: zstd: %v", ErrCorrupt, err)
	}
	return out, nil
}

// Buffered is how many received bytes wait in the read buffer: a receiver
// uses it to append several frames under one fsync (group commit) when the
// sender is ahead.
func (c *Conn) Buffered() int { return c.br.Buffered() }

// Close releases codec state. It may be called more than once, and from
// another goroutine than the reader's (a session's watcher and its own
// defer both close): the decoder is closed once, never under a decode.
func (c *Conn) Close() {
	c.wmu.Lock()
	if c.zenc != nil {
		c.zenc.Close()
		c.zenc = nil
	}
	c.wmu.Unlock()
	c.dmu.Lock()
	if c.zdec != nil {
		c.zdec.Close()
		c.zdec = nil
	}
	c.closed = true
	c.dmu.Unlock()
}
