package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// Error is an error reply from the server to one request.
type Error struct {
	Errno   syscall.Errno
	Message string // set when the server sent a structured error message
}

func (e *Error) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("nbd: server error %v: %s", e.Errno, e.Message)
	}
	return fmt.Sprintf("nbd: server error %v", e.Errno)
}

// Unwrap lets callers test errors.Is(err, syscall.ENOSPC).
func (e *Error) Unwrap() error { return e.Errno }

// Client is a small NBD client: fixed newstyle, NBD_OPT_GO, structured
// replies when the server offers them. It is safe for concurrent use, and
// concurrent calls are pipelined on the one connection.
type Client struct {
	nc         net.Conn
	size       int64
	flags      uint16
	structured bool
	maxPayload int

	wmu sync.Mutex
	bw  *bufio.Writer
	hdr [requestHeaderSize]byte

	mu      sync.Mutex
	pending map[uint64]*call
	next    uint64
	err     error // why the connection is unusable; guarded by mu

	readerDone chan struct{}
}

type call struct {
	typ  uint16
	off  uint64
	buf  []byte // READ destination
	err  error
	done chan struct{}
}

var errClientClosed = errors.New("nbd: client closed")

// Dial connects to an NBD server and opens export ("" for the default).
// ctx bounds the connection and handshake only.
func Dial(ctx context.Context, network, addr, export string) (*Client, error) {
	return dial(ctx, network, addr, export, dialOptions{})
}

// dialOptions lets tests drive the server down paths a normal client
// avoids.
type dialOptions struct {
	noStructured bool   // skip NBD_OPT_STRUCTURED_REPLY: simple replies only
	exportName   bool   // use NBD_OPT_EXPORT_NAME instead of NBD_OPT_GO
	metaContext  string // select this meta context before going
}

func dial(ctx context.Context, network, addr, export string, o dialOptions) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dialing %s %s: %w", network, addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Now()) })
	c := &Client{
		nc:         nc,
		bw:         bufio.NewWriterSize(nc, socketBufSize),
		pending:    make(map[uint64]*call),
		maxPayload: MaxPayload,
		readerDone: make(chan struct{}),
	}
	br := bufio.NewReaderSize(nc, socketBufSize)
	err = c.handshake(br, export, o)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	go c.readLoop(br)
	return c, nil
}

func (c *Client) handshake(br *bufio.Reader, export string, o dialOptions) error {
	var greet [18]byte
	if _, err := io.ReadFull(br, greet[:]); err != nil {
		return fmt.Errorf("nbd: reading server greeting: %w", err)
	}
	if binary.BigEndian.Uint64(greet[0:8]) != magicNBD || binary.BigEndian.Uint64(greet[8:16]) != magicOpt {
		return fmt.Errorf("nbd: server does not speak newstyle negotiation: %w", errBadMagic)
	}
	hflags := binary.BigEndian.Uint16(greet[16:18])
	if hflags&flagFixedNewstyle == 0 {
		return errors.New("nbd: server does not support fixed newstyle negotiation")
	}
	cflags := uint32(flagCFixedNewstyle)
	noZeroes := hflags&flagNoZeroes != 0
	if noZeroes {
		cflags |= flagCNoZeroes
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], cflags)
	if _, err := c.bw.Write(b[:]); err != nil {
		return fmt.Errorf("nbd: sending client flags: %w", err)
	}

	if !o.noStructured {
		typ, _, err := c.option(br, optStructuredReply, nil)
		if err != nil {
			return err
		}
		c.structured = typ == repAck
	}
	if o.metaContext != "" {
		if err := c.sendOption(optSetMetaContext, appendMetaRequest(nil, export, o.metaContext)); err != nil {
			return err
		}
		for {
			typ, data, err := c.readOptionReply(br, optSetMetaContext)
			if err != nil {
				return err
			}
			if typ == repAck {
				break
			}
			if typ != repMetaContext {
				return fmt.Errorf("nbd: NBD_OPT_SET_META_CONTEXT: reply %#x: %s", typ, data)
			}
		}
	}
	if o.exportName {
		return c.exportName(br, export, noZeroes)
	}

	if err := c.sendOption(optGo, appendInfoRequest(nil, export, infoBlockSize)); err != nil {
		return err
	}
	gotExport := false
	for {
		typ, data, err := c.readOptionReply(br, optGo)
		if err != nil {
			return err
		}
		switch {
		case typ == repInfo && len(data) >= 2:
			switch binary.BigEndian.Uint16(data) {
			case infoExport:
				if len(data) != 12 {
					return fmt.Errorf("nbd: NBD_INFO_EXPORT of %d bytes", len(data))
				}
				c.size = int64(binary.BigEndian.Uint64(data[2:10]))
				c.flags = binary.BigEndian.Uint16(data[10:12])
				gotExport = true
			case infoBlockSize:
				if len(data) == 14 {
					if m := int(binary.BigEndian.Uint32(data[10:14])); m > 0 && m < c.maxPayload {
						c.maxPayload = m
					}
				}
			}
			continue
		case typ == repAck:
			if !gotExport {
				return errors.New("nbd: server finished NBD_OPT_GO without NBD_INFO_EXPORT")
			}
			return nil
		case typ == repErrUnsup:
			return c.exportName(br, export, noZeroes)
		case typ&(1<<31) != 0:
			return fmt.Errorf("nbd: opening export %q: server replied %#x: %s", export, typ, data)
		default:
			return fmt.Errorf("nbd: unexpected reply %#x to NBD_OPT_GO", typ)
		}
	}
}

// exportName is the fallback for servers without NBD_OPT_GO.
func (c *Client) exportName(br *bufio.Reader, export string, noZeroes bool) error {
	if err := c.sendOption(optExportName, []byte(export)); err != nil {
		return err
	}
	n := 10
	if !noZeroes {
		n += 124
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(br, b); err != nil {
		return fmt.Errorf("nbd: reading NBD_OPT_EXPORT_NAME reply: %w", err)
	}
	c.size = int64(binary.BigEndian.Uint64(b[0:8]))
	c.flags = binary.BigEndian.Uint16(b[8:10])
	return nil
}

func (c *Client) sendOption(code uint32, data []byte) error {
	var h [optionHeaderSize]byte
	binary.BigEndian.PutUint64(h[0:8], magicOpt)
	binary.BigEndian.PutUint32(h[8:12], code)
	binary.BigEndian.PutUint32(h[12:16], uint32(len(data)))
	c.bw.Write(h[:])
	c.bw.Write(data)
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("nbd: sending option %d: %w", code, err)
	}
	return nil
}

func (c *Client) readOptionReply(br *bufio.Reader, code uint32) (uint32, []byte, error) {
	var h [optionReplySize]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, fmt.Errorf("nbd: reading reply to option %d: %w", code, err)
	}
	if binary.BigEndian.Uint64(h[0:8]) != magicRep {
		return 0, nil, fmt.Errorf("nbd: reply to option %d: %w", code, errBadMagic)
	}
	if got := binary.BigEndian.Uint32(h[8:12]); got != code {
		return 0, nil, fmt.Errorf("nbd: reply for option %d while waiting for %d", got, code)
	}
	typ := binary.BigEndian.Uint32(h[12:16])
	n := binary.BigEndian.Uint32(h[16:20])
	if n > maxOptionData {
		return 0, nil, fmt.Errorf("nbd: reply to option %d has %d bytes", code, n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(br, data); err != nil {
		return 0, nil, fmt.Errorf("nbd: reading reply to option %d: %w", code, err)
	}
	return typ, data, nil
}

func (c *Client) option(br *bufio.Reader, code uint32, data []byte) (uint32, []byte, error) {
	if err := c.sendOption(code, data); err != nil {
		return 0, nil, err
	}
	return c.readOptionReply(br, code)
}

// Size is the export size in bytes.
func (c *Client) Size() int64 { return c.size }

// ReadOnly reports whether the server marked the export read-only.
func (c *Client) ReadOnly() bool { return c.flags&flagReadOnly != 0 }

// StructuredReplies reports whether structured replies were negotiated.
func (c *Client) StructuredReplies() bool { return c.structured }

// readLoop dispatches replies to waiting calls until the connection ends,
// then fails everything still pending.
func (c *Client) readLoop(br *bufio.Reader) {
	defer close(c.readerDone)
	var err error
	for err == nil {
		err = c.readReply(br)
	}
	c.mu.Lock()
	if c.err == nil {
		c.err = fmt.Errorf("nbd: connection lost: %w", err)
	}
	for h, cl := range c.pending {
		cl.err = c.err
		close(cl.done)
		delete(c.pending, h)
	}
	c.mu.Unlock()
	c.nc.Close()
}

func (c *Client) lookup(handle uint64, remove bool) (*call, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl, ok := c.pending[handle]
	if !ok {
		return nil, fmt.Errorf("nbd: reply for unknown handle %#x", handle)
	}
	if remove {
		delete(c.pending, handle)
	}
	return cl, nil
}

func (c *Client) readReply(br *bufio.Reader) error {
	var h [structuredReplySize]byte
	if _, err := io.ReadFull(br, h[:4]); err != nil {
		return err
	}
	switch binary.BigEndian.Uint32(h[:4]) {
	case magicSimpleReply:
		if _, err := io.ReadFull(br, h[4:simpleReplySize]); err != nil {
			return err
		}
		errno := binary.BigEndian.Uint32(h[4:8])
		cl, err := c.lookup(binary.BigEndian.Uint64(h[8:16]), true)
		if err != nil {
			return err
		}
		if errno == 0 && cl.typ == cmdRead {
			if _, err := io.ReadFull(br, cl.buf); err != nil {
				cl.err = err
				close(cl.done)
				return err
			}
		}
		if errno != 0 {
			cl.err = &Error{Errno: syscall.Errno(errno)}
		}
		close(cl.done)
		return nil
	case magicStructuredReply:
		if _, err := io.ReadFull(br, h[4:]); err != nil {
			return err
		}
		flags := binary.BigEndian.Uint16(h[4:6])
		typ := binary.BigEndian.Uint16(h[6:8])
		length := binary.BigEndian.Uint32(h[16:20])
		done := flags&replyFlagDone != 0
		cl, err := c.lookup(binary.BigEndian.Uint64(h[8:16]), done)
		if err != nil {
			return err
		}
		if err := c.readChunk(br, cl, typ, length); err != nil {
			if done {
				// No longer pending, so readLoop will not fail it.
				cl.err = err
				close(cl.done)
			}
			return err
		}
		if done {
			close(cl.done)
		}
		return nil
	default:
		return fmt.Errorf("nbd: reply: %w", errBadMagic)
	}
}

func (c *Client) readChunk(br *bufio.Reader, cl *call, typ uint16, length uint32) error {
	var b [12]byte
	inRange := func(off, n uint64) bool {
		return cl.typ == cmdRead && off >= cl.off && n <= uint64(len(cl.buf)) && off-cl.off <= uint64(len(cl.buf))-n
	}
	switch {
	case typ == replyTypeNone:
		if length != 0 {
			return fmt.Errorf("nbd: NBD_REPLY_TYPE_NONE with %d bytes", length)
		}
	case typ == replyTypeOffsetData:
		if length < 9 {
			return fmt.Errorf("nbd: data chunk of %d bytes", length)
		}
		if _, err := io.ReadFull(br, b[:8]); err != nil {
			return err
		}
		off, n := binary.BigEndian.Uint64(b[:8]), uint64(length-8)
		if !inRange(off, n) {
			return fmt.Errorf("nbd: data chunk %d+%d outside request", off, n)
		}
		if _, err := io.ReadFull(br, cl.buf[off-cl.off:off-cl.off+n]); err != nil {
			return err
		}
	case typ == replyTypeOffsetHole:
		if length != 12 {
			return fmt.Errorf("nbd: hole chunk of %d bytes", length)
		}
		if _, err := io.ReadFull(br, b[:12]); err != nil {
			return err
		}
		off, n := binary.BigEndian.Uint64(b[:8]), uint64(binary.BigEndian.Uint32(b[8:12]))
		if !inRange(off, n) {
			return fmt.Errorf("nbd: hole chunk %d+%d outside request", off, n)
		}
		clear(cl.buf[off-cl.off : off-cl.off+n])
	case typ&replyTypeErrorCategory != 0:
		if length < 6 || length > maxOptionData {
			return fmt.Errorf("nbd: error chunk of %d bytes", length)
		}
		p := make([]byte, length)
		if _, err := io.ReadFull(br, p); err != nil {
			return err
		}
		errno := binary.BigEndian.Uint32(p[0:4])
		ml := int(binary.BigEndian.Uint16(p[4:6]))
		if ml > len(p)-6 {
			return fmt.Errorf("nbd: error message of %d bytes in %d-byte chunk", ml, length)
		}
		if cl.err == nil {
			cl.err = &Error{Errno: syscall.Errno(errno), Message: string(p[6 : 6+ml])}
		}
	case typ == replyTypeBlockStatus:
		// We never select meta contexts, but skipping is harmless.
		if _, err := io.CopyN(io.Discard, br, int64(length)); err != nil {
			return err
		}
	default:
		return fmt.Errorf("nbd: unknown reply chunk type %d", typ)
	}
	return nil
}

// do sends one request and waits for its reply.
func (c *Client) do(typ, flags uint16, off uint64, length uint32, payload, readBuf []byte) error {
	cl := &call{typ: typ, off: off, buf: readBuf, done: make(chan struct{})}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	handle := c.next
	c.next++
	c.pending[handle] = cl
	c.mu.Unlock()

	c.wmu.Lock()
	putRequestHeader(c.hdr[:], request{flags: flags, typ: typ, handle: handle, offset: off, length: length})
	_, err := c.bw.Write(c.hdr[:])
	if err == nil && len(payload) > 0 {
		_, err = c.bw.Write(payload)
	}
	if err == nil {
		err = c.bw.Flush()
	}
	c.wmu.Unlock()
	if err != nil {
		// The stream may hold half a request; nothing after it can be
		// trusted, so tear the connection down.
		c.fail(fmt.Errorf("nbd: sending request: %w", err))
	}
	<-cl.done
	return cl.err
}

func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	c.nc.Close()
}

func (c *Client) checkRange(off, n int64) error {
	if off < 0 || n < 0 || off > c.size || n > c.size-off {
		return fmt.Errorf("nbd: range %d+%d outside export of %d bytes: %w", off, n, c.size, syscall.EINVAL)
	}
	return nil
}

// ReadAt fills p from offset off, splitting at the server's maximum payload.
func (c *Client) ReadAt(p []byte, off int64) error {
	if err := c.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	for len(p) > 0 {
		n := min(len(p), c.maxPayload)
		if err := c.do(cmdRead, 0, uint64(off), uint32(n), nil, p[:n]); err != nil {
			return fmt.Errorf("nbd: reading %d bytes at %d: %w", n, off, err)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// WriteAt writes p at off; with fua the server persists it before replying.
func (c *Client) WriteAt(p []byte, off int64, fua bool) error {
	if err := c.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	var flags uint16
	if fua {
		flags = cmdFlagFUA
	}
	for len(p) > 0 {
		n := min(len(p), c.maxPayload)
		if err := c.do(cmdWrite, flags, uint64(off), uint32(n), p[:n], nil); err != nil {
			return fmt.Errorf("nbd: writing %d bytes at %d: %w", n, off, err)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// Flush asks the server to persist all completed writes.
func (c *Client) Flush() error {
	if err := c.do(cmdFlush, 0, 0, 0, nil, nil); err != nil {
		return fmt.Errorf("nbd: flush: %w", err)
	}
	return nil
}

// maxRangeRequest splits trims and zeroes, whose lengths are 32-bit on the
// wire, into aligned pieces.
const maxRangeRequest = 1 << 30

// Trim tells the server the range is no longer needed.
func (c *Client) Trim(off, n int64) error {
	return c.rangeCmd(cmdTrim, flagSendTrim, 0, off, n)
}

// WriteZeroes makes the range read as zeros; noHole asks the server to keep
// it allocated.
func (c *Client) WriteZeroes(off, n int64, noHole bool) error {
	var flags uint16
	if noHole {
		flags = cmdFlagNoHole
	}
	return c.rangeCmd(cmdWriteZeroes, flagSendWriteZeroes, flags, off, n)
}

func (c *Client) rangeCmd(typ, need, flags uint16, off, n int64) error {
	name := "trim"
	if typ == cmdWriteZeroes {
		name = "write zeroes"
	}
	if c.flags&need == 0 {
		return fmt.Errorf("nbd: %s: not supported by the server: %w", name, syscall.EOPNOTSUPP)
	}
	if err := c.checkRange(off, n); err != nil {
		return err
	}
	for n > 0 {
		k := min(n, maxRangeRequest)
		if err := c.do(typ, flags, uint64(off), uint32(k), nil, nil); err != nil {
			return fmt.Errorf("nbd: %s %d bytes at %d: %w", name, k, off, err)
		}
		off, n = off+k, n-k
	}
	return nil
}

// Close sends NBD_CMD_DISC and closes the connection. Requests still in
// flight fail.
func (c *Client) Close() error {
	c.mu.Lock()
	alive := c.err == nil
	if alive {
		c.err = errClientClosed
	}
	c.mu.Unlock()
	var err error
	if alive {
		c.wmu.Lock()
		putRequestHeader(c.hdr[:], request{typ: cmdDisc})
		if _, err = c.bw.Write(c.hdr[:]); err == nil {
			err = c.bw.Flush()
		}
		c.wmu.Unlock()
	}
	if cerr := c.nc.Close(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	<-c.readerDone
	if err != nil {
		return fmt.Errorf("nbd: closing: %w", err)
	}
	return nil
}
