package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"standby/internal/bufpool"
)

func FuzzRequestHeader(f *testing.F) {
	var b [requestHeaderSize]byte
	putRequestHeader(b[:], request{flags: cmdFlagFUA, typ: cmdWrite, handle: 7, offset: 4096, length: 512})
	f.Add(b[:])
	putRequestHeader(b[:], request{typ: cmdBlockStatus, flags: cmdFlagReqOne, handle: 1<<64 - 1, offset: 1<<64 - 1, length: 1<<32 - 1})
	f.Add(b[:])
	f.Add([]byte{0x25, 0x60, 0x95, 0x13})
	f.Add(make([]byte, requestHeaderSize))
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := parseRequestHeader(in)
		if err != nil {
			if len(in) >= requestHeaderSize && binary.BigEndian.Uint32(in) == magicRequest {
				t.Fatalf("valid header rejected: %v", err)
			}
			return
		}
		var out [requestHeaderSize]byte
		putRequestHeader(out[:], r)
		if !bytes.Equal(out[:], in[:requestHeaderSize]) {
			t.Fatalf("round trip: %x -> %+v -> %x", in[:requestHeaderSize], r, out)
		}
	})
}

// optionStream builds what a client sends after the greeting.
func optionStream(cflags uint32, opts ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, cflags)
	for _, o := range opts {
		b = append(b, o...)
	}
	return b
}

func opt(code uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, code)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func fuzzExports() []*Export {
	return []*Export{
		{Name: "a", Description: "d", Backend: newMemBackend(1 << 16)},
		{Name: "ro", Backend: newMemBackend(512), ReadOnly: true},
	}
}

// FuzzOption feeds arbitrary client bytes to option haggling over a pipe. It
// must neither panic nor hang, and any session it settles on must be sane.
func FuzzOption(f *testing.F) {
	const fixed = flagCFixedNewstyle | flagCNoZeroes
	f.Add(optionStream(fixed, opt(optGo, appendInfoRequest(nil, "a", infoName, infoDescription, infoBlockSize))))
	f.Add(optionStream(fixed, opt(optStructuredReply, nil),
		opt(optSetMetaContext, appendMetaRequest(nil, "a", baseAllocation)),
		opt(optListMetaContext, appendMetaRequest(nil, "a")),
		opt(optInfo, appendInfoRequest(nil, "")),
		opt(optGo, appendInfoRequest(nil, "a"))))
	f.Add(optionStream(fixed, opt(optList, nil), opt(optStartTLS, nil), opt(99, []byte("x")), opt(optAbort, nil)))
	f.Add(optionStream(flagCFixedNewstyle, opt(optExportName, []byte("ro"))))
	f.Add(optionStream(0, opt(optExportName, nil)))
	f.Add(optionStream(fixed, opt(optInfo, []byte{0, 0, 0, 1, 'a', 0, 5, 0, 1})))
	f.Add(optionStream(fixed, opt(optSetMetaContext, []byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})))
	f.Add(optionStream(fixed, binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, magicOpt), optList), 1<<20)))
	f.Add(optionStream(7))

	f.Fuzz(func(t *testing.T, in []byte) {
		start := time.Now()
		sess, err := negotiateBytes(fuzzExports(), in, true, 2*time.Second)
		if time.Since(start) > 3*time.Second {
			t.Fatalf("negotiation took %v", time.Since(start))
		}
		if err == nil {
			if sess == nil || sess.export == nil || sess.flags&flagHasFlags == 0 {
				t.Fatalf("bad session %+v", sess)
			}
			if sess.baseAlloc && !sess.structured {
				t.Fatal("block status without structured replies")
			}
			if sess.export.ReadOnly != (sess.flags&flagReadOnly != 0) {
				t.Fatal("read-only flag does not match export")
			}
		}
	})
}

// FuzzTransmission feeds an arbitrary request stream to a connection in the
// transmission phase. Whatever arrives, the connection must terminate
// without panicking, and a read-only export must stay untouched.
func FuzzTransmission(f *testing.F) {
	req := func(typ, flags uint16, off uint64, n uint32, payload []byte) []byte {
		var b [requestHeaderSize]byte
		putRequestHeader(b[:], request{flags: flags, typ: typ, handle: 1, offset: off, length: n})
		return append(b[:], payload...)
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	f.Add(byte(3), cat(req(cmdWrite, cmdFlagFUA, 0, 4, []byte("abcd")), req(cmdRead, 0, 0, 4, nil), req(cmdDisc, 0, 0, 0, nil)))
	f.Add(byte(1), cat(req(cmdBlockStatus, cmdFlagReqOne, 100, 1000, nil), req(cmdTrim, 0, 0, 1<<16, nil), req(cmdWriteZeroes, cmdFlagNoHole, 10, 10, nil)))
	f.Add(byte(0), cat(req(cmdRead, cmdFlagDF, 1<<16-1, 2, nil), req(cmdFlush, 0, 0, 0, nil), req(77, 0xffff, 1<<63, 1<<31, nil)))
	f.Add(byte(4), req(cmdWrite, 0, 0, 1<<16, nil))
	f.Add(byte(2), req(cmdWrite, 0, 0, MaxPayload+1, []byte("short")))

	f.Fuzz(func(t *testing.T, mode byte, in []byte) {
		mem := newMemBackend(1 << 16)
		e := &Export{Name: "a", Backend: mem, ReadOnly: mode&4 != 0}
		structured := mode&1 != 0
		sess := &session{export: e, structured: structured, baseAlloc: structured && mode&2 != 0, flags: transmissionFlags(e, structured)}
		srvEnd, cliEnd := net.Pipe()
		defer cliEnd.Close()
		deadline := time.Now().Add(2 * time.Second)
		srvEnd.SetDeadline(deadline)
		cliEnd.SetDeadline(deadline)
		go io.Copy(io.Discard, cliEnd)
		go func() {
			cliEnd.Write(in)
			cliEnd.Close()
		}()
		var bufs bufpool.Pool
		c := &conn{
			nc: srvEnd, br: bufio.NewReader(srvEnd), bw: bufio.NewWriter(srvEnd),
			sess: sess, backend: mem, size: uint64(mem.Size()), bufs: &bufs,
			sem: make(chan struct{}, 4), log: slog.New(slog.DiscardHandler),
		}
		start := time.Now()
		c.transmit(context.Background())
		srvEnd.Close()
		if time.Since(start) > 3*time.Second {
			t.Fatalf("transmission took %v", time.Since(start))
		}
		if e.ReadOnly && !bytes.Equal(mem.snapshot(), make([]byte, 1<<16)) {
			t.Fatal("read-only export modified")
		}
	})
}
