package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
)

// session is what option haggling settled on.
type session struct {
	export     *Export
	structured bool
	// baseAlloc is set when the client selected "base:allocation" for the
	// export it went on to use, enabling NBD_CMD_BLOCK_STATUS.
	baseAlloc bool
	flags     uint16 // transmission flags sent to the client
}

// errAbort ends a negotiation the client gave up on with NBD_OPT_ABORT; it is
// a clean end, not a failure.
var errAbort = errors.New("nbd: client sent NBD_OPT_ABORT")

// negotiator runs the fixed-newstyle handshake on one connection. It only
// touches the buffered reader and writer, so the fuzzer can drive it over a
// pipe.
type negotiator struct {
	br      *bufio.Reader
	bw      *bufio.Writer
	exports func() []*Export
	log     *slog.Logger

	hdr        [optionReplySize]byte
	structured bool
	// metaFor is the export a SET_META_CONTEXT selected base:allocation
	// for; the selection is void if the client then goes to another one.
	metaFor *Export
}

func transmissionFlags(e *Export, structured bool) uint16 {
	f := uint16(flagHasFlags | flagSendFlush | flagSendFUA | flagCanMultiConn)
	if e.ReadOnly {
		f |= flagReadOnly
	} else {
		f |= flagSendTrim | flagSendWriteZeroes
	}
	if structured {
		// A READ reply is always a single chunk, so "don't fragment"
		// costs nothing to honour.
		f |= flagSendDF
	}
	return f
}

func (n *negotiator) lookup(name string) *Export {
	exports := n.exports()
	if name == "" {
		if len(exports) > 0 {
			return exports[0]
		}
		return nil
	}
	for _, e := range exports {
		if e != nil && e.Name == name {
			return e
		}
	}
	return nil
}

// run performs the handshake. It returns a session when the client entered
// transmission, errAbort on a soft disconnect, or another error when the
// connection must be dropped.
func (n *negotiator) run() (*session, error) {
	var greet [18]byte
	binary.BigEndian.PutUint64(greet[0:8], magicNBD)
	binary.BigEndian.PutUint64(greet[8:16], magicOpt)
	binary.BigEndian.PutUint16(greet[16:18], flagFixedNewstyle|flagNoZeroes)
	if _, err := n.bw.Write(greet[:]); err != nil {
		return nil, fmt.Errorf("nbd: sending greeting: %w", err)
	}
	if err := n.bw.Flush(); err != nil {
		return nil, fmt.Errorf("nbd: sending greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(n.br, cf[:]); err != nil {
		return nil, fmt.Errorf("nbd: reading client flags: %w", err)
	}
	cflags := binary.BigEndian.Uint32(cf[:])
	if cflags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		// The spec requires dropping clients that set flags we did not offer.
		return nil, fmt.Errorf("nbd: client flags %#x include unknown bits", cflags)
	}
	noZeroes := cflags&flagCNoZeroes != 0

	var oh [optionHeaderSize]byte
	for {
		if err := n.bw.Flush(); err != nil {
			return nil, fmt.Errorf("nbd: sending option reply: %w", err)
		}
		if _, err := io.ReadFull(n.br, oh[:]); err != nil {
			return nil, fmt.Errorf("nbd: reading option header: %w", err)
		}
		code, length, err := parseOptionHeader(oh[:])
		if err != nil {
			return nil, err
		}
		if length > maxOptionData {
			// Skipping keeps the stream in sync without buffering a
			// hostile length; EXPORT_NAME cannot be answered with an
			// error, so that one ends the session.
			if _, err := io.CopyN(io.Discard, n.br, int64(length)); err != nil {
				return nil, fmt.Errorf("nbd: skipping %d bytes of option %d: %w", length, code, err)
			}
			if code == optExportName {
				return nil, fmt.Errorf("nbd: export name of %d bytes", length)
			}
			if code == optAbort {
				// The spec: the server "MUST reply with NBD_REP_ACK" and
				// "SHOULD ignore any data".
				return n.option(code, nil, noZeroes)
			}
			if err := n.replyErr(code, repErrTooBig, "option data of %d bytes is too large", length); err != nil {
				return nil, err
			}
			continue
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(n.br, data); err != nil {
			return nil, fmt.Errorf("nbd: reading %d bytes of option %d: %w", length, code, err)
		}
		sess, err := n.option(code, data, noZeroes)
		if err != nil || sess != nil {
			if ferr := n.bw.Flush(); err == nil && ferr != nil {
				return nil, fmt.Errorf("nbd: sending final option reply: %w", ferr)
			}
			return sess, err
		}
	}
}

// option handles one option. A non-nil session means transmission starts.
func (n *negotiator) option(code uint32, data []byte, noZeroes bool) (*session, error) {
	switch code {
	case optExportName:
		if err := checkString(data); err != nil {
			return nil, fmt.Errorf("nbd: NBD_OPT_EXPORT_NAME: %w", err)
		}
		e := n.lookup(string(data))
		if e == nil {
			// No error reply exists for this option: the spec says drop.
			return nil, fmt.Errorf("nbd: NBD_OPT_EXPORT_NAME: no export named %q", data)
		}
		sess := n.session(e)
		var b [8 + 2 + 124]byte
		binary.BigEndian.PutUint64(b[0:8], uint64(e.Backend.Size()))
		binary.BigEndian.PutUint16(b[8:10], sess.flags)
		out := b[:]
		if noZeroes {
			out = b[:10]
		}
		if _, err := n.bw.Write(out); err != nil {
			return nil, fmt.Errorf("nbd: replying to NBD_OPT_EXPORT_NAME: %w", err)
		}
		return sess, nil

	case optAbort:
		// Best effort: the client may already have hung up.
		_ = n.reply(code, repAck, nil)
		_ = n.bw.Flush()
		return nil, errAbort

	case optList:
		if len(data) != 0 {
			return nil, n.replyErr(code, repErrInvalid, "NBD_OPT_LIST takes no data")
		}
		for _, e := range n.exports() {
			if e == nil {
				continue
			}
			p := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(e.Name)+len(e.Description)), uint32(len(e.Name)))
			p = append(p, e.Name...)
			p = append(p, e.Description...)
			if err := n.reply(code, repServer, p); err != nil {
				return nil, err
			}
		}
		return nil, n.reply(code, repAck, nil)

	case optStartTLS:
		// The NBD export is the local hop between a workload and the agent
		// on the same host (unix socket, or loopback for a local
		// hypervisor). Data leaving the host is protected on the
		// replication links, not here, and TLS on this hop would only add
		// latency to every guest write. So we run in NOTLS mode.
		return nil, n.replyErr(code, repErrPolicy, "TLS is not offered on this export")

	case optInfo, optGo:
		return n.infoOrGo(code, data)

	case optStructuredReply:
		if len(data) != 0 {
			return nil, n.replyErr(code, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		}
		n.structured = true
		return nil, n.reply(code, repAck, nil)

	case optListMetaContext, optSetMetaContext:
		return nil, n.metaContext(code, data)

	default:
		return nil, n.replyErr(code, repErrUnsup, "option %d is not supported", code)
	}
}

func (n *negotiator) session(e *Export) *session {
	return &session{
		export:     e,
		structured: n.structured,
		baseAlloc:  n.structured && n.metaFor == e,
		flags:      transmissionFlags(e, n.structured),
	}
}

func (n *negotiator) infoOrGo(code uint32, data []byte) (*session, error) {
	req, err := parseInfoRequest(data)
	if err != nil {
		return nil, n.replyErr(code, repErrInvalid, "%v", err)
	}
	e := n.lookup(req.name)
	if e == nil {
		return nil, n.replyErr(code, repErrUnknown, "no export named %q", req.name)
	}
	sess := n.session(e)
	var b [14]byte
	binary.BigEndian.PutUint16(b[0:2], infoExport)
	binary.BigEndian.PutUint64(b[2:10], uint64(e.Backend.Size()))
	binary.BigEndian.PutUint16(b[10:12], sess.flags)
	if err := n.reply(code, repInfo, b[:12]); err != nil {
		return nil, err
	}
	// Block size constraints go out whether asked or not: the maximum
	// tells clients how to split large requests, and minimum 1 cannot
	// make a client that ignores the info misbehave.
	binary.BigEndian.PutUint16(b[0:2], infoBlockSize)
	binary.BigEndian.PutUint32(b[2:6], MinBlockSize)
	binary.BigEndian.PutUint32(b[6:10], PreferredBlockSize)
	binary.BigEndian.PutUint32(b[10:14], MaxPayload)
	if err := n.reply(code, repInfo, b[:14]); err != nil {
		return nil, err
	}
	var sentName, sentDesc bool
	for _, info := range req.infos {
		switch {
		case info == infoName && !sentName:
			sentName = true
			if err := n.reply(code, repInfo, append([]byte{0, infoName}, e.Name...)); err != nil {
				return nil, err
			}
		case info == infoDescription && !sentDesc && e.Description != "":
			sentDesc = true
			if err := n.reply(code, repInfo, append([]byte{0, infoDescription}, e.Description...)); err != nil {
				return nil, err
			}
		}
	}
	if err := n.reply(code, repAck, nil); err != nil {
		return nil, err
	}
	if code == optGo {
		return sess, nil
	}
	return nil, nil
}

func (n *negotiator) metaContext(code uint32, data []byte) error {
	list := code == optListMetaContext
	if !list {
		// SET replaces the previous selection, even with an empty one and
		// "including when this command fails" (the spec).
		n.metaFor = nil
	}
	if !n.structured {
		return n.replyErr(code, repErrInvalid, "meta contexts need structured replies first")
	}
	req, err := parseMetaRequest(data)
	if err != nil {
		return n.replyErr(code, repErrInvalid, "%v", err)
	}
	e := n.lookup(req.export)
	if e == nil {
		return n.replyErr(code, repErrUnknown, "no export named %q", req.export)
	}
	for _, name := range metaContextsFor(req.queries, list) {
		id := uint32(0)
		if !list {
			id = metaContextBaseAllocation
			n.metaFor = e
		}
		p := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(name)), id)
		p = append(p, name...)
		if err := n.reply(code, repMetaContext, p); err != nil {
			return err
		}
	}
	return n.reply(code, repAck, nil)
}

func (n *negotiator) reply(opt, typ uint32, data []byte) error {
	putOptionReplyHeader(n.hdr[:], opt, typ, uint32(len(data)))
	if _, err := n.bw.Write(n.hdr[:]); err != nil {
		return fmt.Errorf("nbd: replying to option %d: %w", opt, err)
	}
	if _, err := n.bw.Write(data); err != nil {
		return fmt.Errorf("nbd: replying to option %d: %w", opt, err)
	}
	return nil
}

// replyErr sends an error reply with a human-readable message, which
// clients such as nbdinfo print.
func (n *negotiator) replyErr(opt, typ uint32, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > maxString {
		msg = msg[:maxString]
	}
	n.log.Debug("nbd: refusing option", "option", opt, "reply", typ&^(1<<31), "reason", msg)
	return n.reply(opt, typ, []byte(msg))
}
