package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"standby/internal/bufpool"
)

// TestRoundTripModel drives random reads, writes, trims and zeroes through
// the Go client against a file-backed export and checks every read, and the
// final image file, against an in-memory model.
func TestRoundTripModel(t *testing.T) {
	const size = 16 << 20
	for _, tc := range []struct {
		name    string
		network string
		opts    dialOptions
	}{
		{"unix-structured", "unix", dialOptions{}},
		{"unix-simple", "unix", dialOptions{noStructured: true}},
		{"tcp-export-name", "tcp", dialOptions{exportName: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exp, path := fileExport(t, "disk", size)
			ts := startServer(t, exp)
			addr := ts.sock
			if tc.network == "tcp" {
				addr = ts.tcpAddr
			}
			c := dialT(t, tc.network, addr, "disk", tc.opts)
			if c.Size() != size {
				t.Fatalf("size %d", c.Size())
			}
			if c.StructuredReplies() == tc.opts.noStructured {
				t.Fatalf("structured=%v", c.StructuredReplies())
			}
			model := make([]byte, size)
			r := rand.New(rand.NewPCG(42, uint64(len(tc.name))))
			for i := 0; i < 400; i++ {
				off := r.Int64N(size)
				n := min(r.Int64N(256<<10)+1, size-off)
				switch op := r.IntN(10); {
				case op < 4:
					data := randBytes(r, int(n))
					if err := c.WriteAt(data, off, r.IntN(8) == 0); err != nil {
						t.Fatal(err)
					}
					copy(model[off:], data)
				case op < 7:
					got := make([]byte, n)
					if err := c.ReadAt(got, off); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, model[off:off+n]) {
						t.Fatalf("op %d: read %d+%d: %s", i, off, n, firstDiff(got, model[off:off+n]))
					}
				case op == 7:
					if err := c.Trim(off, n); err != nil {
						t.Fatal(err)
					}
					clear(model[off : off+n])
				case op == 8:
					if err := c.WriteZeroes(off, n, r.IntN(2) == 0); err != nil {
						t.Fatal(err)
					}
					clear(model[off : off+n])
				default:
					if err := c.Flush(); err != nil {
						t.Fatal(err)
					}
				}
			}
			// A read spanning several maximum-size payloads.
			big := make([]byte, size)
			if err := c.ReadAt(big, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(big, model) {
				t.Fatalf("full read: %s", firstDiff(big, model))
			}
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if got := readFile(t, path); !bytes.Equal(got, model) {
				t.Fatalf("image file: %s", firstDiff(got, model))
			}
		})
	}
}

// TestConcurrent runs several connections, each with several goroutines
// pipelining requests, on disjoint regions of one export.
func TestConcurrent(t *testing.T) {
	const (
		conns   = 4
		workers = 8
		region  = 1 << 20
		size    = conns * workers * region
	)
	exp, path := fileExport(t, "disk", size)
	ts := startServer(t, exp)
	model := make([]byte, size)
	var wg sync.WaitGroup
	errs := make(chan error, conns*workers)
	for ci := 0; ci < conns; ci++ {
		network, addr := "unix", ts.sock
		if ci%2 == 1 {
			network, addr = "tcp", ts.tcpAddr
		}
		c := dialT(t, network, addr, "", dialOptions{})
		for w := 0; w < workers; w++ {
			base := int64((ci*workers + w) * region)
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(base), 7))
				for i := 0; i < 100; i++ {
					off := base + r.Int64N(region-4096)
					n := r.Int64N(4096) + 1
					data := randBytes(r, int(n))
					if err := c.WriteAt(data, off, false); err != nil {
						errs <- err
						return
					}
					copy(model[off:], data) // disjoint regions: no race
					got := make([]byte, n)
					if err := c.ReadAt(got, off); err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(got, data) {
						errs <- errors.New("read after write differs")
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// CAN_MULTI_CONN: a flush on one connection covers all of them.
	c := dialT(t, "unix", ts.sock, "disk", dialOptions{})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, path); !bytes.Equal(got, model) {
		t.Fatalf("image: %s", firstDiff(got, model))
	}
}

// TestBadRequests checks that invalid requests are answered with the right
// error and do not cost the connection.
func TestBadRequests(t *testing.T) {
	const size = 1 << 20
	mem := newMemBackend(size)
	ro := newMemBackend(size)
	ts := startServer(t,
		&Export{Name: "rw", Backend: mem},
		&Export{Name: "ro", Backend: ro, ReadOnly: true})
	for _, o := range []dialOptions{{}, {noStructured: true}} {
		c := dialT(t, "unix", ts.sock, "rw", o)
		cro := dialT(t, "unix", ts.sock, "ro", o)
		if !cro.ReadOnly() || c.ReadOnly() {
			t.Fatal("read-only flag wrong")
		}
		buf := make([]byte, 4096)
		cases := []struct {
			name string
			c    *Client
			typ  uint16
			fl   uint16
			off  uint64
			n    uint32
			pay  []byte
			rbuf []byte
			want syscall.Errno
		}{
			{"read past end", c, cmdRead, 0, size - 100, 4096, nil, buf, syscall.EINVAL},
			{"read offset overflow", c, cmdRead, 0, 1<<64 - 10, 4096, nil, buf, syscall.EINVAL},
			{"write past end", c, cmdWrite, 0, size, 4096, buf, nil, syscall.ENOSPC},
			{"trim past end", c, cmdTrim, 0, size - 1, 2, nil, nil, syscall.EINVAL},
			{"zeroes past end", c, cmdWriteZeroes, 0, size - 1, 2, nil, nil, syscall.ENOSPC},
			{"oversized read", c, cmdRead, 0, 0, MaxPayload + 1, nil, make([]byte, MaxPayload+1), syscall.EINVAL},
			{"oversized write", c, cmdWrite, 0, 0, MaxPayload + 1, make([]byte, MaxPayload+1), nil, syscall.EINVAL},
			{"unknown command", c, 99, 0, 0, 0, nil, nil, syscall.EINVAL},
			{"cache not offered", c, cmdCache, 0, 0, 4096, nil, nil, syscall.EINVAL},
			{"bad flag", c, cmdWrite, cmdFlagReqOne, 0, 4096, buf, nil, syscall.EINVAL},
			{"no-hole on trim", c, cmdTrim, cmdFlagNoHole, 0, 4096, nil, nil, syscall.EINVAL},
			{"block status without context", c, cmdBlockStatus, 0, 0, 4096, nil, nil, syscall.EINVAL},
			{"write read-only", cro, cmdWrite, 0, 0, 4096, buf, nil, syscall.EPERM},
			{"trim read-only", cro, cmdTrim, 0, 0, 4096, nil, nil, syscall.EPERM},
			{"zeroes read-only", cro, cmdWriteZeroes, 0, 0, 4096, nil, nil, syscall.EPERM},
		}
		for _, tc := range cases {
			err := tc.c.do(tc.typ, tc.fl, tc.off, tc.n, tc.pay, tc.rbuf)
			var ne *Error
			if !errors.As(err, &ne) || ne.Errno != tc.want {
				t.Fatalf("structured=%v %s: got %v, want %v", tc.c.structured, tc.name, err, tc.want)
			}
			if tc.c.structured && ne.Message == "" {
				t.Errorf("%s: structured error without message", tc.name)
			}
			// The connection still works.
			if err := tc.c.WriteAt([]byte("alive"), 0, false); err != nil && tc.c != cro {
				t.Fatalf("after %s: %v", tc.name, err)
			}
			if err := tc.c.ReadAt(buf[:5], 0); err != nil {
				t.Fatalf("after %s: %v", tc.name, err)
			}
		}
		// Zero-length requests are harmless no-ops.
		if err := c.do(cmdRead, 0, size, 0, nil, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.do(cmdWrite, cmdFlagFUA, 0, 0, nil, nil); err != nil {
			t.Fatal(err)
		}
		// FUA is accepted on every command.
		if err := c.do(cmdFlush, cmdFlagFUA, 0, 0, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(mem.snapshot()[:5], []byte("alive")) {
		t.Fatal("write lost")
	}
	if !bytes.Equal(ro.snapshot(), make([]byte, size)) {
		t.Fatal("read-only export modified")
	}
}

// TestBadMagicDropsConnection: an undecodable request stream is the one
// case where the server must hang up.
func TestBadMagicDropsConnection(t *testing.T) {
	ts := startServer(t, &Export{Name: "d", Backend: newMemBackend(1 << 20)})
	c := dialT(t, "unix", ts.sock, "d", dialOptions{})
	c.wmu.Lock()
	c.bw.Write(make([]byte, requestHeaderSize))
	c.bw.Flush()
	c.wmu.Unlock()
	select {
	case <-c.readerDone:
	case <-time.After(5 * time.Second):
		t.Fatal("server kept a connection with a corrupt request stream")
	}
	if err := c.ReadAt(make([]byte, 1), 0); err == nil {
		t.Fatal("request on dropped connection succeeded")
	}
}

// TestShutdownDrainsInFlight cancels the server while writes are blocked in
// the backend: they must still complete and be acknowledged, and Serve must
// return once they have.
func TestShutdownDrainsInFlight(t *testing.T) {
	mem := newMemBackend(1 << 20)
	release := make(chan struct{})
	entered := make(chan struct{}, 16)
	mem.delay = func() {
		entered <- struct{}{}
		<-release
	}
	ts := startServer(t, &Export{Name: "d", Backend: mem})
	c := dialT(t, "unix", ts.sock, "d", dialOptions{})
	const n = 4
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() { errs <- c.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 512), int64(i)*512, false) }()
	}
	for i := 0; i < n; i++ {
		<-entered
	}
	ts.cancel()
	stopped := make(chan struct{})
	go func() {
		for range 2 {
			<-ts.done
		}
		close(stopped)
	}()
	select {
	case <-stopped:
		t.Fatal("Serve returned with requests in flight")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("in-flight write failed on shutdown: %v", err)
		}
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after draining")
	}
	ts.cancel = nil
	snap := mem.snapshot()
	for i := 0; i < n; i++ {
		if snap[i*512] != byte(i+1) {
			t.Fatalf("write %d lost", i)
		}
	}
	// New connections are refused.
	if _, err := net.Dial("unix", ts.sock); err == nil {
		t.Fatal("listener still accepting after shutdown")
	}
}

// rawOption runs option haggling by hand to check replies a normal client
// never provokes.
type rawClient struct {
	t  *testing.T
	nc net.Conn
}

func rawDial(t *testing.T, sock string) *rawClient {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	var g [18]byte
	if _, err := io.ReadFull(nc, g[:]); err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint16(g[16:]) != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags %#x", binary.BigEndian.Uint16(g[16:]))
	}
	nc.Write([]byte{0, 0, 0, flagCFixedNewstyle | flagCNoZeroes})
	return &rawClient{t: t, nc: nc}
}

func (r *rawClient) send(code uint32, data []byte) {
	var h [16]byte
	binary.BigEndian.PutUint64(h[:], magicOpt)
	binary.BigEndian.PutUint32(h[8:], code)
	binary.BigEndian.PutUint32(h[12:], uint32(len(data)))
	if _, err := r.nc.Write(append(h[:], data...)); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawClient) reply(code uint32) (uint32, []byte) {
	r.t.Helper()
	var h [20]byte
	if _, err := io.ReadFull(r.nc, h[:]); err != nil {
		r.t.Fatal(err)
	}
	if binary.BigEndian.Uint64(h[:]) != magicRep || binary.BigEndian.Uint32(h[8:]) != code {
		r.t.Fatalf("bad reply header %x", h)
	}
	d := make([]byte, binary.BigEndian.Uint32(h[16:]))
	if _, err := io.ReadFull(r.nc, d); err != nil {
		r.t.Fatal(err)
	}
	return binary.BigEndian.Uint32(h[12:]), d
}

func TestOptionHaggling(t *testing.T) {
	ts := startServer(t,
		&Export{Name: "a", Description: "first", Backend: newMemBackend(4096)},
		&Export{Name: "b", Backend: newMemBackend(8192), ReadOnly: true})
	r := rawDial(t, ts.sock)

	r.send(optList, nil)
	var names []string
	for {
		typ, d := r.reply(optList)
		if typ == repAck {
			break
		}
		if typ != repServer {
			t.Fatalf("LIST reply %#x", typ)
		}
		nl := binary.BigEndian.Uint32(d)
		names = append(names, string(d[4:4+nl])+"|"+string(d[4+nl:]))
	}
	if len(names) != 2 || names[0] != "a|first" || names[1] != "b|" {
		t.Fatalf("LIST gave %q", names)
	}

	expect := func(what string, code uint32, data []byte, want uint32) []byte {
		t.Helper()
		r.send(code, data)
		typ, d := r.reply(code)
		if typ != want {
			t.Fatalf("%s: reply %#x (%s), want %#x", what, typ, d, want)
		}
		return d
	}
	expect("LIST with data", optList, []byte{1}, repErrInvalid)
	expect("STARTTLS", optStartTLS, nil, repErrPolicy)
	expect("unknown option", 0xdead, []byte("xyz"), repErrUnsup)
	expect("extended headers", optExtendedHeaders, nil, repErrUnsup)
	expect("INFO unknown export", optInfo, appendInfoRequest(nil, "nope"), repErrUnknown)
	expect("INFO malformed", optInfo, []byte{0, 0, 0, 9, 'a'}, repErrInvalid)
	expect("meta before structured", optListMetaContext, appendMetaRequest(nil, "a"), repErrInvalid)
	expect("structured with data", optStructuredReply, []byte{1}, repErrInvalid)
	expect("structured", optStructuredReply, nil, repAck)
	if d := expect("LIST_META all", optListMetaContext, appendMetaRequest(nil, "a"), repMetaContext); string(d[4:]) != baseAllocation {
		t.Fatalf("meta context %q", d[4:])
	}
	if typ, _ := r.reply(optListMetaContext); typ != repAck {
		t.Fatalf("LIST_META end %#x", typ)
	}
	expect("LIST_META unknown ns", optListMetaContext, appendMetaRequest(nil, "a", "qemu:dirty-bitmap:x"), repAck)
	expect("SET_META unknown export", optSetMetaContext, appendMetaRequest(nil, "zzz", baseAllocation), repErrUnknown)

	// INFO with name and description, then GO to the read-only export.
	r.send(optInfo, appendInfoRequest(nil, "a", infoName, infoDescription))
	got := map[uint16][]byte{}
	for {
		typ, d := r.reply(optInfo)
		if typ == repAck {
			break
		}
		if typ != repInfo {
			t.Fatalf("INFO reply %#x", typ)
		}
		got[binary.BigEndian.Uint16(d)] = d[2:]
	}
	if size := binary.BigEndian.Uint64(got[infoExport]); size != 4096 {
		t.Fatalf("INFO size %d", size)
	}
	if string(got[infoName]) != "a" || string(got[infoDescription]) != "first" {
		t.Fatalf("INFO name %q desc %q", got[infoName], got[infoDescription])
	}
	bs := got[infoBlockSize]
	if len(bs) != 12 || binary.BigEndian.Uint32(bs) != 1 || binary.BigEndian.Uint32(bs[4:]) != 4096 || binary.BigEndian.Uint32(bs[8:]) != MaxPayload {
		t.Fatalf("block size info %x", bs)
	}
	r.send(optGo, appendInfoRequest(nil, "b"))
	var flags uint16
	for {
		typ, d := r.reply(optGo)
		if typ == repAck {
			break
		}
		if binary.BigEndian.Uint16(d) == infoExport {
			flags = binary.BigEndian.Uint16(d[10:])
		}
	}
	want := uint16(flagHasFlags | flagReadOnly | flagSendFlush | flagSendFUA | flagCanMultiConn | flagSendDF)
	if flags != want {
		t.Fatalf("transmission flags %#x, want %#x", flags, want)
	}
}

func TestOptionAbortAndUnknownExportName(t *testing.T) {
	ts := startServer(t, &Export{Name: "a", Backend: newMemBackend(4096)})
	r := rawDial(t, ts.sock)
	r.send(optAbort, nil)
	if typ, _ := r.reply(optAbort); typ != repAck {
		t.Fatalf("ABORT reply %#x", typ)
	}
	if _, err := r.nc.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after ABORT: %v", err)
	}
	// ABORT with data, even more than any option may carry: still ACK
	// ("MUST reply with NBD_REP_ACK", "SHOULD ignore any data").
	r = rawDial(t, ts.sock)
	r.send(optAbort, make([]byte, maxOptionData+1))
	if typ, _ := r.reply(optAbort); typ != repAck {
		t.Fatalf("ABORT with %d bytes of data: reply %#x", maxOptionData+1, typ)
	}
	// NBD_OPT_EXPORT_NAME cannot be refused politely: the server hangs up.
	r = rawDial(t, ts.sock)
	r.send(optExportName, []byte("missing"))
	if _, err := r.nc.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after unknown EXPORT_NAME: %v", err)
	}
	// A client flag we never offered is a protocol violation.
	nc, err := net.Dial("unix", ts.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	io.ReadFull(nc, make([]byte, 18))
	nc.Write([]byte{0, 0, 0, 0x80})
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after bad client flags: %v", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	uln, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Exports: func() []*Export { return nil }, HandshakeTimeout: 100 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx, uln) }()
	nc, err := net.Dial("unix", uln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(nc); err != nil {
		t.Fatalf("idle handshake not closed by server: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestDialErrors(t *testing.T) {
	ts := startServer(t, &Export{Name: "a", Backend: newMemBackend(4096)})
	ctx := context.Background()
	_, err := Dial(ctx, "unix", ts.sock, "missing")
	if err == nil {
		t.Fatal("dialing a missing export succeeded")
	}
	c, err := Dial(ctx, "unix", ts.sock, "")
	if err != nil {
		t.Fatal(err)
	}
	if c.Size() != 4096 {
		t.Fatalf("default export size %d", c.Size())
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.ReadAt(make([]byte, 1), 0); err == nil {
		t.Fatal("read after Close succeeded")
	}
}

// keeperBackend keeps every write's buffer until the test gives them back.
type keeperBackend struct {
	*memBackend
	mu   sync.Mutex
	kept []*[]byte
	n    []int
}

func (k *keeperBackend) WriteAt(context.Context, []byte, int64, bool) error {
	return errors.New("WriteAt called on a BufferKeeper")
}

func (k *keeperBackend) WriteAtKeep(ctx context.Context, buf *[]byte, n int, off int64, fua bool) error {
	k.mu.Lock()
	k.kept = append(k.kept, buf)
	k.n = append(k.n, n)
	k.mu.Unlock()
	return k.memBackend.WriteAt(ctx, (*buf)[:n], off, fua)
}

// A BufferKeeper backend gets write payloads in buffers of the server's
// Buffers pool, which the server then leaves alone: payloads written later
// must not land in a buffer the backend still holds.
func TestBufferKeeperOwnsPayloads(t *testing.T) {
	var pool bufpool.Pool
	k := &keeperBackend{memBackend: newMemBackend(1 << 20)}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	uln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Logger: testLogger(t), Exports: func() []*Export { return []*Export{{Name: "d", Backend: k}} }, Buffers: &pool}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, uln) }()
	defer func() { cancel(); <-done }()
	c := dialT(t, "unix", sock, "d", dialOptions{})
	r := rand.New(rand.NewPCG(1, 2))
	var want [][]byte
	for i := range 200 {
		data := randBytes(r, 1+r.IntN(20000))
		if err := c.WriteAt(data, int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
		want = append(want, data)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.kept) != len(want) {
		t.Fatalf("backend kept %d buffers, want %d", len(k.kept), len(want))
	}
	for i, b := range k.kept {
		if !bytes.Equal((*b)[:k.n[i]], want[i]) {
			t.Fatalf("kept buffer %d changed after the server handed it over", i)
		}
	}
}

// A quick request's reply may wait in the buffer for the replies of other
// quick requests in flight, but not for long: here the other one is stuck
// in the backend, and the reply must still come (replyHold), not when the
// stuck one finishes.
func TestStuckRequestDoesNotHoldOtherReplies(t *testing.T) {
	mem := newMemBackend(1 << 20)
	st := stallWrites(mem, true)
	ts := startServer(t, &Export{Name: "d", Backend: mem})
	c := dialT(t, "unix", ts.sock, "d", dialOptions{})
	stuck := make(chan error, 1)
	go func() { stuck <- c.WriteAt(bytes.Repeat([]byte{1}, 512), 0, false) }()
	<-st.entered
	defer close(st.release)
	for i := range 20 {
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- c.WriteAt(bytes.Repeat([]byte{2}, 4096), int64(i+1)*4096, false) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("write %d not answered while another request is stuck in the backend", i)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("write %d answered after %v", i, d)
		}
	}
	select {
	case err := <-stuck:
		t.Fatalf("the stuck write returned early: %v", err)
	default:
	}
}
