package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire constants from the NBD protocol document (doc/proto.md in
// NetworkBlockDevice/nbd). Names follow the spec with the NBD_ prefix dropped.
const (
	magicNBD             = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt             = 0x49484156454F5054 // "IHAVEOPT"
	magicRep             = 0x3e889045565a9
	magicRequest         = 0x25609513
	magicSimpleReply     = 0x67446698
	magicStructuredReply = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	flagCFixedNewstyle = 1 << 0
	flagCNoZeroes      = 1 << 1
)

// Transmission flags.
const (
	flagHasFlags        = 1 << 0
	flagReadOnly        = 1 << 1
	flagSendFlush       = 1 << 2
	flagSendFUA         = 1 << 3
	flagRotational      = 1 << 4
	flagSendTrim        = 1 << 5
	flagSendWriteZeroes = 1 << 6
	flagSendDF          = 1 << 7
	flagCanMultiConn    = 1 << 8
	flagSendCache       = 1 << 10
	flagSendFastZero    = 1 << 11
)

// Options.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
	optExtendedHeaders = 11
)

// Option replies.
const (
	repAck            = 1
	repServer         = 2
	repInfo           = 3
	repMetaContext    = 4
	repErrUnsup       = 1<<31 | 1
	repErrPolicy      = 1<<31 | 2
	repErrInvalid     = 1<<31 | 3
	repErrPlatform    = 1<<31 | 4
	repErrTLSReqd     = 1<<31 | 5
	repErrUnknown     = 1<<31 | 6
	repErrShutdown    = 1<<31 | 7
	repErrBlockSzReqd = 1<<31 | 8
	repErrTooBig      = 1<<31 | 9
)

// NBD_OPT_INFO / NBD_OPT_GO information types.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Commands.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
)

// Command flags.
const (
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4
)

// Structured reply flags and types.
const (
	replyFlagDone          = 1 << 0
	replyTypeNone          = 0
	replyTypeOffsetData    = 1
	replyTypeOffsetHole    = 2
	replyTypeBlockStatus   = 5
	replyTypeError         = 1<<15 | 1
	replyTypeErrorOffset   = 1<<15 | 2
	replyTypeErrorCategory = 1 << 15
)

// base:allocation status flags.
const (
	stateHole = 1 << 0
	stateZero = 1 << 1
)

// Error values allowed on the wire.
const (
	errnoPerm     = 1
	errnoIO       = 5
	errnoNoMem    = 12
	errnoInval    = 22
	errnoNoSpc    = 28
	errnoOverflow = 75
	errnoNotSup   = 95
	errnoShutdown = 108
)

// Sizes and limits.
const (
	requestHeaderSize   = 28
	simpleReplySize     = 16
	structuredReplySize = 20
	optionHeaderSize    = 16
	optionReplySize     = 20

	// MaxPayload is the largest READ or WRITE payload we accept, advertised
	// as the maximum block size. 32 MiB is what qemu and nbdkit use, and
	// what clients already split their I/O to.
	MaxPayload = 32 << 20
	// PreferredBlockSize is advertised so clients avoid read-modify-write
	// on the page-sized blocks file systems use.
	PreferredBlockSize = 4096
	// MinBlockSize of 1 means any alignment works.
	MinBlockSize = 1

	// maxString is the spec's hard limit for names and messages.
	maxString = 4096
	// maxOptionData bounds how much option data we buffer. The largest
	// legitimate option is NBD_OPT_SET_META_CONTEXT with a few queries;
	// anything bigger is discarded unread with NBD_REP_ERR_TOO_BIG.
	maxOptionData = 64 << 10
	// metaContextBaseAllocation is the ID we hand out for
	// "base:allocation"; zero is reserved for NBD_OPT_LIST_META_CONTEXT.
	metaContextBaseAllocation = 1
)

const baseAllocation = "base:allocation"

var errBadMagic = errors.New("nbd: bad magic")

// request is a decoded transmission-phase request header.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32
}

// parseRequestHeader decodes a 28-byte request header. It only checks what
// makes the stream undecodable (size, magic); command semantics are checked
// later so that bad requests get error replies instead of a disconnect.
func parseRequestHeader(b []byte) (request, error) {
	if len(b) < requestHeaderSize {
		return request{}, fmt.Errorf("nbd: request header is %d bytes, want %d", len(b), requestHeaderSize)
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != magicRequest {
		return request{}, fmt.Errorf("nbd: request magic %#x: %w", m, errBadMagic)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		handle: binary.BigEndian.Uint64(b[8:16]),
		offset: binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

func putRequestHeader(b []byte, r request) {
	binary.BigEndian.PutUint32(b[0:4], magicRequest)
	binary.BigEndian.PutUint16(b[4:6], r.flags)
	binary.BigEndian.PutUint16(b[6:8], r.typ)
	binary.BigEndian.PutUint64(b[8:16], r.handle)
	binary.BigEndian.PutUint64(b[16:24], r.offset)
	binary.BigEndian.PutUint32(b[24:28], r.length)
}

func putSimpleReply(b []byte, errno uint32, handle uint64) {
	binary.BigEndian.PutUint32(b[0:4], magicSimpleReply)
	binary.BigEndian.PutUint32(b[4:8], errno)
	binary.BigEndian.PutUint64(b[8:16], handle)
}

func putStructuredHeader(b []byte, flags, typ uint16, handle uint64, length uint32) {
	binary.BigEndian.PutUint32(b[0:4], magicStructuredReply)
	binary.BigEndian.PutUint16(b[4:6], flags)
	binary.BigEndian.PutUint16(b[6:8], typ)
	binary.BigEndian.PutUint64(b[8:16], handle)
	binary.BigEndian.PutUint32(b[16:20], length)
}

// parseOptionHeader decodes the 16-byte header of a client option.
func parseOptionHeader(b []byte) (code, length uint32, err error) {
	if len(b) < optionHeaderSize {
		return 0, 0, fmt.Errorf("nbd: option header is %d bytes, want %d", len(b), optionHeaderSize)
	}
	if m := binary.BigEndian.Uint64(b[0:8]); m != magicOpt {
		return 0, 0, fmt.Errorf("nbd: option magic %#x: %w", m, errBadMagic)
	}
	return binary.BigEndian.Uint32(b[8:12]), binary.BigEndian.Uint32(b[12:16]), nil
}

func putOptionReplyHeader(b []byte, opt, typ, length uint32) {
	binary.BigEndian.PutUint64(b[0:8], magicRep)
	binary.BigEndian.PutUint32(b[8:12], opt)
	binary.BigEndian.PutUint32(b[12:16], typ)
	binary.BigEndian.PutUint32(b[16:20], length)
}

var errMalformed = errors.New("nbd: malformed option data")

// checkString enforces the spec's rules for strings: no NUL, at most 4096
// bytes. (UTF-8 validity is the client's promise; we only echo names back.)
func checkString(s []byte) error {
	if len(s) > maxString {
		return fmt.Errorf("%w: string of %d bytes", errMalformed, len(s))
	}
	for _, c := range s {
		if c == 0 {
			return fmt.Errorf("%w: NUL in string", errMalformed)
		}
	}
	return nil
}

// infoRequest is the payload of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16
}

// parseInfoRequest decodes: u32 name length, name, u16 count, count × u16.
func parseInfoRequest(data []byte) (infoRequest, error) {
	if len(data) < 4 {
		return infoRequest{}, fmt.Errorf("%w: %d bytes, too short for name length", errMalformed, len(data))
	}
	nl := binary.BigEndian.Uint32(data[0:4])
	rest := data[4:]
	if uint64(nl)+2 > uint64(len(rest)) {
		return infoRequest{}, fmt.Errorf("%w: name length %d overruns %d bytes", errMalformed, nl, len(rest))
	}
	name := rest[:nl]
	if err := checkString(name); err != nil {
		return infoRequest{}, err
	}
	rest = rest[nl:]
	n := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*n {
		return infoRequest{}, fmt.Errorf("%w: %d info requests need %d bytes, have %d", errMalformed, n, 2*n, len(rest))
	}
	r := infoRequest{name: string(name), infos: make([]uint16, n)}
	for i := range r.infos {
		r.infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return r, nil
}

func appendInfoRequest(b []byte, name string, infos ...uint16) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// metaRequest is the payload of NBD_OPT_LIST/SET_META_CONTEXT.
type metaRequest struct {
	export  string
	queries []string
}

// parseMetaRequest decodes: u32 export length, export, u32 query count, then
// count × (u32 length, query).
func parseMetaRequest(data []byte) (metaRequest, error) {
	rd := data
	next := func(what string) ([]byte, error) {
		if len(rd) < 4 {
			return nil, fmt.Errorf("%w: truncated before %s length", errMalformed, what)
		}
		l := binary.BigEndian.Uint32(rd)
		rd = rd[4:]
		if uint64(l) > uint64(len(rd)) {
			return nil, fmt.Errorf("%w: %s length %d overruns %d bytes", errMalformed, what, l, len(rd))
		}
		s := rd[:l]
		rd = rd[l:]
		return s, checkString(s)
	}
	name, err := next("export name")
	if err != nil {
		return metaRequest{}, err
	}
	if len(rd) < 4 {
		return metaRequest{}, fmt.Errorf("%w: truncated before query count", errMalformed)
	}
	n := binary.BigEndian.Uint32(rd)
	rd = rd[4:]
	// Every query takes at least 4 bytes; checking first keeps a hostile
	// count from sizing an allocation.
	if uint64(n)*4 > uint64(len(rd)) {
		return metaRequest{}, fmt.Errorf("%w: %d queries cannot fit in %d bytes", errMalformed, n, len(rd))
	}
	r := metaRequest{export: string(name), queries: make([]string, 0, n)}
	for i := uint32(0); i < n; i++ {
		q, err := next("query")
		if err != nil {
			return metaRequest{}, err
		}
		r.queries = append(r.queries, string(q))
	}
	if len(rd) != 0 {
		return metaRequest{}, fmt.Errorf("%w: %d trailing bytes", errMalformed, len(rd))
	}
	return r, nil
}

func appendMetaRequest(b []byte, export string, queries ...string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(export)))
	b = append(b, export...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// metaContextsFor answers a meta-context query. We know exactly one context,
// base:allocation. For LIST an empty query list or the bare namespace
// "base:" selects everything we know; SET needs the exact name.
func metaContextsFor(queries []string, list bool) []string {
	if list && len(queries) == 0 {
		return []string{baseAllocation}
	}
	for _, q := range queries {
		if q == baseAllocation || (list && q == "base:") {
			return []string{baseAllocation}
		}
	}
	return nil
}
