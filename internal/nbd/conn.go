package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"standby/internal/bufpool"
)

// conn is one connection in the transmission phase. A single goroutine reads
// requests (and WRITE payloads, which must be consumed in order); each
// request then runs on its own goroutine so a slow flush does not hold up
// reads queued behind it, and replies are serialised onto the socket.
type conn struct {
	nc      net.Conn
	br      *bufio.Reader
	bw      *bufio.Writer
	sess    *session
	backend Backend
	size    uint64
	bufs    *bufpool.Pool
	sem     chan struct{}
	log     *slog.Logger
	ctx     context.Context
	wg      sync.WaitGroup
	// alone counts consecutive requests that arrived with nothing else in
	// flight and nothing more sent: read loop only.
	alone int
	// readerGen hands the read loop over when a request it handles itself
	// stalls (handleInline): whoever moves it on from the value the read
	// loop set owns the loop.
	readerGen atomic.Uint64
	// stallTimer hands the read loop over (takeOverReading) if the
	// request it handles itself takes inlineStall; stallGen is the
	// readerGen it may move on. Used by the goroutine that reads.
	stallTimer *time.Timer
	stallGen   atomic.Uint64
	// readDone carries the read loop's end to transmit once the loop has
	// moved to another goroutine.
	readDone chan error

	// unreplied counts quick requests (isQuick) read and not yet answered
	// (every request but DISC gets exactly one reply). A quick request's
	// reply is held in the buffer while other quick ones are still being
	// handled: the last of them flushes it with its own, so one write to
	// the socket carries a burst of replies at high queue depth. Each
	// write wakes the client, and on the development VM (a PVM guest,
	// where a context switch is a hypervisor call) a flush per reply cost
	// a third of the 4 KiB qd32 write rate. A lone reply still goes out
	// at once.
	unreplied atomic.Int32
	// waiting counts repliers queued on wmu.
	waiting atomic.Int32

	wmu       sync.Mutex
	werr      error                         // first write error; guarded by wmu
	scratch   [structuredReplySize + 8]byte // reply header space; guarded by wmu
	unflushed int                           // replies in bw since the last flush; guarded by wmu
	// holdTimer flushes held replies after replyHold, so that a slow
	// request (a FLUSH, a write waiting for queue room) does not hold up
	// the answers to fast ones; guarded by wmu.
	holdTimer *time.Timer
	holding   bool // holdTimer is armed; guarded by wmu
}

// isQuick reports whether req is expected to be answered within
// microseconds: a small read, write, trim or zeroing without FUA, or a
// block-status query. The read loop counts such requests in unreplied and
// their replies count them out: both sides ask isQuick of the same
// request. (A write refused for its size is never counted, and is never
// quick.)
func isQuick(req request) bool {
	switch req.typ {
	case cmdRead, cmdWrite, cmdTrim, cmdWriteZeroes:
		return req.length <= quickMax && req.flags&cmdFlagFUA == 0
	case cmdBlockStatus:
		return true
	}
	return false
}

// quickMax is the largest read or write whose reply may wait for others.
const quickMax = 64 << 10

// replyHold bounds how long a reply waits in the buffer for the replies of
// other requests in flight, and maxHeldReplies how many wait.
const (
	replyHold      = 200 * time.Microsecond
	maxHeldReplies = 16
)

// errDisconnect reports a clean NBD_CMD_DISC.
var errDisconnect = errors.New("nbd: client sent NBD_CMD_DISC")

// errHangup reports a client that closed the connection between requests
// without NBD_CMD_DISC. The spec calls that a hard disconnect, but libnbd
// tools (nbdfuse, nbdcopy) routinely exit this way, so it is not worth a
// warning.
var errHangup = errors.New("nbd: client closed the connection without NBD_CMD_DISC")

// transmit runs the request loop until the client disconnects, the
// connection fails or ctx is done. It returns nil for a clean disconnect
// and always waits for in-flight requests before returning.
func (c *conn) transmit(ctx context.Context) error {
	// Backend calls do not inherit ctx's cancellation: on shutdown
	// in-flight requests are completed and answered, as the spec asks.
	// They are cancelled only when the client has gone and nobody is
	// left to answer.
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	c.ctx = bctx

	c.readDone = make(chan error, 1)
	err := c.readLoop()
	if errors.Is(err, errHandedOff) {
		err = <-c.readDone
	}
	if err != nil && !errors.Is(err, errDisconnect) && ctx.Err() == nil {
		// The client is gone or broke the protocol: nobody will read
		// the replies, so let the backend give up early, and let replies
		// the client does not read fail soon instead of pinning the
		// connection's goroutines and buffers (the spec allows a hard
		// disconnect here).
		cancel()
		_ = c.nc.SetWriteDeadline(time.Now().Add(unreadReplyGrace))
	}
	c.wg.Wait()
	c.wmu.Lock()
	if c.werr == nil {
		c.werr = c.flushLocked()
	}
	c.stopHoldLocked()
	werr := c.werr
	c.wmu.Unlock()
	switch {
	case errors.Is(err, errDisconnect):
		if werr != nil {
			return fmt.Errorf("nbd: sending final replies: %w", werr)
		}
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	default:
		return err
	}
}

func (c *conn) readLoop() error {
	var hdr [requestHeaderSize]byte
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			if err == io.EOF {
				return errHangup
			}
			return fmt.Errorf("nbd: reading request header: %w", err)
		}
		req, err := parseRequestHeader(hdr[:])
		if err != nil {
			// Without a valid magic we cannot find the next request.
			return err
		}
		var buf *[]byte
		switch req.typ {
		case cmdDisc:
			return errDisconnect
		case cmdWrite:
			if req.length > MaxPayload {
				// The length is known, so skipping the payload keeps the
				// stream in sync and the connection usable.
				if _, err := io.CopyN(io.Discard, c.br, int64(req.length)); err != nil {
					return fmt.Errorf("nbd: skipping oversized write payload: %w", err)
				}
				c.replyError(req, errnoInval, "write of %d bytes exceeds the maximum payload of %d", req.length, MaxPayload)
				continue
			}
			buf = c.bufs.Get(int(req.length))
			if _, err := io.ReadFull(c.br, (*buf)[:req.length]); err != nil {
				c.bufs.Put(buf)
				return fmt.Errorf("nbd: reading %d-byte write payload: %w", req.length, err)
			}
		}
		w := c.weight(req)
		for range w {
			c.sem <- struct{}{}
		}
		if isQuick(req) {
			c.unreplied.Add(1)
		}
		c.wg.Add(1)
		if len(c.sem) == w && c.br.Buffered() == 0 {
			c.alone++
		} else {
			c.alone = 0
		}
		if c.alone >= aloneInline {
			// A client at queue depth 1: handled here, because handing each
			// request to a new goroutine wakes another thread, which cost a
			// third of the 4 KiB qd1 write rate on the development VM. Only
			// after a run of lone requests, so that a pipelining client
			// that happens to drain now and then keeps its concurrency
			// (handling those inline cost a fifth of the qd32 rate).
			if !c.handleInline(req, buf, w) {
				return errHandedOff
			}
			continue
		}
		// A goroutine per request grows a fresh stack on its way into the
		// backend (runtime.newstack, 6 % of the agent's CPU at 4 KiB
		// qd32), yet handing requests to waiting workers over a channel
		// instead measured slower: 10.6–11.2 against 9.0–9.3 µs per write
		// in BenchmarkWrite4KParallel.
		go c.handle(req, buf, w)
	}
}

// aloneInline is how many lone requests in a row make the read loop handle
// requests itself.
const aloneInline = 8

// inlineStall is how long a request handled by the read loop may take
// before another goroutine takes the read loop over.
const inlineStall = time.Millisecond

// unreadReplyGrace bounds how long replies wait for a client that broke
// the protocol or hung up.
const unreadReplyGrace = time.Second

// errHandedOff ends a read loop whose role another goroutine took over.
var errHandedOff = errors.New("nbd: read loop handed over")

// handleInline handles req on the read loop's goroutine. If it takes
// longer than inlineStall (a FLUSH, a write waiting for room in the
// agent's queue), a new goroutine takes the read loop over, so a stuck
// request holds up no other request, and handleInline reports false: the
// caller is then an ordinary handler and must leave the loop.
func (c *conn) handleInline(req request, buf *[]byte, w int) bool {
	// Add, not Load: the taker's CompareAndSwap then observes everything
	// the read loop wrote before (its buffered reader, alone).
	gen := c.readerGen.Add(1)
	c.stallGen.Store(gen)
	if c.stallTimer == nil {
		c.stallTimer = time.AfterFunc(inlineStall, c.takeOverReading)
	} else {
		c.stallTimer.Reset(inlineStall)
	}
	c.handle(req, buf, w)
	// Exactly one of this and the timer's swap succeeds. Lost: the timer
	// is the new reader's now, not to be touched.
	if !c.readerGen.CompareAndSwap(gen, gen+1) {
		return false
	}
	c.stallTimer.Stop()
	return true
}

// takeOverReading runs when a request handled by the read loop stalled.
// A late run from an earlier request may hand over during a later one
// before inlineStall: harmless, the handover is correct at any time.
func (c *conn) takeOverReading() {
	if gen := c.stallGen.Load(); c.readerGen.CompareAndSwap(gen, gen+1) {
		go c.resumeReading()
	}
}

// resumeReading runs the read loop on a new goroutine after a handover.
func (c *conn) resumeReading() {
	// The client sent something while a request was stalled: it is not at
	// queue depth 1 now.
	c.alone = 0
	if err := c.readLoop(); !errors.Is(err, errHandedOff) {
		c.readDone <- err
	}
}

// weight is how many in-flight slots a request takes: one, plus one per MiB
// of payload, so the slots bound buffered payload memory as well as request
// count. Only the read loop acquires slots, so taking several one at a time
// cannot deadlock.
func (c *conn) weight(req request) int {
	w := 1
	if req.typ == cmdRead || req.typ == cmdWrite {
		w += int(min(req.length, MaxPayload) >> 20)
	}
	return min(w, cap(c.sem))
}

// check validates a request against the negotiated session. It returns an
// errno and message for requests that must be refused.
func (c *conn) check(req request) (uint32, string) {
	var allowed uint16 = cmdFlagFUA // valid on every command once SEND_FUA is set
	write := false
	switch req.typ {
	case cmdRead:
		if c.sess.structured {
			allowed |= cmdFlagDF
		}
		if req.length > MaxPayload {
			return errnoInval, "read larger than the maximum payload"
		}
	case cmdWrite:
		write = true
	case cmdFlush:
	case cmdTrim:
		write = true
	case cmdWriteZeroes:
		write = true
		allowed |= cmdFlagNoHole
	case cmdBlockStatus:
		allowed |= cmdFlagReqOne
		if !c.sess.baseAlloc {
			return errnoInval, "no meta context was negotiated"
		}
		if req.length == 0 {
			return errnoInval, "block status of zero length"
		}
	default:
		return errnoInval, "unknown command"
	}
	if req.flags&^allowed != 0 {
		return errnoInval, "command flags not valid for this command"
	}
	if write && c.sess.export.ReadOnly {
		return errnoPerm, "export is read-only"
	}
	if req.typ != cmdFlush && (req.offset > c.size || uint64(req.length) > c.size-req.offset) {
		if req.typ == cmdWrite || req.typ == cmdWriteZeroes {
			// The spec's choice for writes past the end of the device.
			return errnoNoSpc, "request extends beyond the end of the export"
		}
		return errnoInval, "request extends beyond the end of the export"
	}
	return 0, ""
}

func (c *conn) handle(req request, buf *[]byte, weight int) {
	defer func() {
		c.bufs.Put(buf)
		for range weight {
			<-c.sem
		}
		c.wg.Done()
	}()
	if errno, msg := c.check(req); errno != 0 {
		c.replyError(req, errno, "%s", msg)
		return
	}
	ctx := c.ctx
	off, n := int64(req.offset), int64(req.length)
	fua := req.flags&cmdFlagFUA != 0
	var err error
	switch req.typ {
	case cmdRead:
		c.read(req)
		return
	case cmdWrite:
		if k, ok := c.backend.(BufferKeeper); ok {
			b := buf
			buf = nil // the backend's now, whatever it returns
			err = k.WriteAtKeep(ctx, b, int(n), off, fua)
			break
		}
		err = c.backend.WriteAt(ctx, (*buf)[:n], off, fua)
	case cmdFlush:
		err = c.backend.Flush(ctx)
	case cmdTrim:
		if n > 0 {
			err = c.backend.Trim(ctx, off, n, fua)
		}
	case cmdWriteZeroes:
		if n > 0 {
			err = c.backend.WriteZeroes(ctx, off, n, fua, req.flags&cmdFlagNoHole != 0)
		}
	case cmdBlockStatus:
		c.blockStatus(req)
		return
	}
	if err != nil {
		c.log.Warn("nbd: request failed", "cmd", req.typ, "offset", off, "length", n, "err", err)
		c.replyError(req, errnoFor(err), "%v", err)
		return
	}
	c.replySimple(req, 0, nil)
}

func (c *conn) read(req request) {
	if req.length == 0 {
		if c.sess.structured {
			c.replyNone(req)
		} else {
			c.replySimple(req, 0, nil)
		}
		return
	}
	buf := c.bufs.Get(int(req.length))
	defer c.bufs.Put(buf)
	p := (*buf)[:req.length]
	if err := c.backend.ReadAt(c.ctx, p, int64(req.offset)); err != nil {
		c.log.Warn("nbd: read failed", "offset", req.offset, "length", req.length, "err", err)
		c.replyError(req, errnoFor(err), "%v", err)
		return
	}
	if c.sess.structured {
		c.replyData(req, p)
	} else {
		c.replySimple(req, 0, p)
	}
}

// maxDescriptors caps one block-status reply; the spec lets a server answer
// less than the requested range, and the client then asks again.
const maxDescriptors = 1024

var errEnoughExtents = errors.New("enough extents")

func (c *conn) blockStatus(req request) {
	one := req.flags&cmdFlagReqOne != 0
	descs := make([]byte, 0, 64)
	var lastFlags uint32
	// add appends a descriptor, merging it into the previous one when the
	// status is the same (the spec asks for distinct consecutive
	// statuses). The request length is 32 bits, so sums cannot overflow.
	add := func(n uint64, flags uint32) bool {
		if k := len(descs); k > 0 && lastFlags == flags {
			binary.BigEndian.PutUint32(descs[k-8:], binary.BigEndian.Uint32(descs[k-8:])+uint32(n))
			return true
		}
		if len(descs)/8 >= maxDescriptors || (one && len(descs) > 0) {
			return false
		}
		descs = binary.BigEndian.AppendUint32(descs, uint32(n))
		descs = binary.BigEndian.AppendUint32(descs, flags)
		lastFlags = flags
		return true
	}
	if ext, ok := c.backend.(Extenter); ok {
		err := ext.Extents(c.ctx, int64(req.offset), int64(req.length), func(_, n int64, hole bool) error {
			var flags uint32
			if hole {
				flags = stateHole | stateZero
			}
			if n <= 0 || !add(uint64(n), flags) {
				return errEnoughExtents
			}
			return nil
		})
		if err != nil && !errors.Is(err, errEnoughExtents) {
			// Status 0 ("allocated, contents unknown") is always a
			// truthful answer, so a failed lookup need not fail the
			// request.
			c.log.Debug("nbd: extent lookup failed, reporting data", "offset", req.offset, "err", err)
		}
	}
	if len(descs) == 0 {
		// No backend information: everything is data.
		add(uint64(req.length), 0)
	}
	c.replyBlockStatus(req, descs)
}

// lockWriter/unlockWriter bracket writing a request's reply. lockWriter
// returns false, without the lock, when the reply stream has already
// failed. unlockWriter flushes unless the reply can wait for others (see
// unreplied).
func (c *conn) lockWriter(req request) bool {
	c.waiting.Add(1)
	c.wmu.Lock()
	c.waiting.Add(-1)
	if c.werr != nil {
		if isQuick(req) {
			c.unreplied.Add(-1)
		}
		c.wmu.Unlock()
		return false
	}
	return true
}

func (c *conn) unlockWriter(req request, err error) {
	quick := isQuick(req)
	var left int32
	if quick {
		left = c.unreplied.Add(-1)
	}
	if err == nil {
		c.unflushed++
		// Only a quick request's reply waits, and only for quick ones:
		// a large read or write, a FUA write or a FLUSH gains nothing
		// from sharing a write to the socket and would wait longer.
		if quick && (left > 0 || c.waiting.Load() > 0) && c.unflushed < maxHeldReplies {
			c.holdLocked()
		} else {
			err = c.flushLocked()
		}
	}
	c.failLocked(err)
	c.wmu.Unlock()
}

// holdLocked arms the timer that bounds how long held replies wait.
func (c *conn) holdLocked() {
	if c.holding {
		return
	}
	c.holding = true
	if c.holdTimer == nil {
		c.holdTimer = time.AfterFunc(replyHold, c.flushHeld)
		return
	}
	c.holdTimer.Reset(replyHold)
}

// flushHeld runs when replies were held for replyHold: the requests they
// waited for are slow.
func (c *conn) flushHeld() {
	c.wmu.Lock()
	c.holding = false
	if c.werr == nil && c.unflushed > 0 {
		c.failLocked(c.flushLocked())
	}
	c.wmu.Unlock()
}

// flushLocked sends what the buffer holds. Caller holds wmu.
func (c *conn) flushLocked() error {
	c.unflushed = 0
	c.stopHoldLocked()
	return c.bw.Flush()
}

// stopHoldLocked disarms the hold timer. Caller holds wmu.
func (c *conn) stopHoldLocked() {
	if c.holding {
		c.holdTimer.Stop()
		c.holding = false
	}
}

// failLocked records the first write error. The reply stream is then
// unrecoverable; closing wakes the reader so the connection winds down.
// Caller holds wmu.
func (c *conn) failLocked(err error) {
	if err != nil && c.werr == nil {
		c.werr = err
		c.nc.Close()
	}
}

func (c *conn) replySimple(req request, errno uint32, data []byte) {
	if !c.lockWriter(req) {
		return
	}
	putSimpleReply(c.scratch[:simpleReplySize], errno, req.handle)
	_, err := c.bw.Write(c.scratch[:simpleReplySize])
	if err == nil && len(data) > 0 {
		_, err = c.bw.Write(data)
	}
	c.unlockWriter(req, err)
}

func (c *conn) replyData(req request, data []byte) {
	if !c.lockWriter(req) {
		return
	}
	putStructuredHeader(c.scratch[:], replyFlagDone, replyTypeOffsetData, req.handle, uint32(8+len(data)))
	binary.BigEndian.PutUint64(c.scratch[structuredReplySize:], req.offset)
	_, err := c.bw.Write(c.scratch[:structuredReplySize+8])
	if err == nil {
		_, err = c.bw.Write(data)
	}
	c.unlockWriter(req, err)
}

func (c *conn) replyNone(req request) {
	if !c.lockWriter(req) {
		return
	}
	putStructuredHeader(c.scratch[:], replyFlagDone, replyTypeNone, req.handle, 0)
	_, err := c.bw.Write(c.scratch[:structuredReplySize])
	c.unlockWriter(req, err)
}

func (c *conn) replyBlockStatus(req request, descs []byte) {
	if !c.lockWriter(req) {
		return
	}
	putStructuredHeader(c.scratch[:], replyFlagDone, replyTypeBlockStatus, req.handle, uint32(4+len(descs)))
	binary.BigEndian.PutUint32(c.scratch[structuredReplySize:], metaContextBaseAllocation)
	_, err := c.bw.Write(c.scratch[:structuredReplySize+4])
	if err == nil {
		_, err = c.bw.Write(descs)
	}
	c.unlockWriter(req, err)
}

// replyError answers req with an error: a structured error chunk carrying
// the message when structured replies were negotiated (a READ must be
// answered that way then), else a simple reply with just the errno.
func (c *conn) replyError(req request, errno uint32, format string, args ...any) {
	if !c.sess.structured {
		c.replySimple(req, errno, nil)
		return
	}
	msg := fmt.Sprintf(format, args...)
	if len(msg) > maxString {
		msg = msg[:maxString]
	}
	if !c.lockWriter(req) {
		return
	}
	putStructuredHeader(c.scratch[:], replyFlagDone, replyTypeError, req.handle, uint32(6+len(msg)))
	binary.BigEndian.PutUint32(c.scratch[structuredReplySize:], errno)
	binary.BigEndian.PutUint16(c.scratch[structuredReplySize+4:], uint16(len(msg)))
	_, err := c.bw.Write(c.scratch[:structuredReplySize+6])
	if err == nil {
		_, err = c.bw.WriteString(msg)
	}
	c.unlockWriter(req, err)
}
