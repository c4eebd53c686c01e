package nbd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"

	"standby/internal/bufpool"
)

// The spec, NBD_OPT_SET_META_CONTEXT: "Issuing this command replaces all
// previously-set metadata contexts (including when this command fails)".
// A failed SET must therefore leave no context selected.
func TestFailedSetMetaContextClearsSelection(t *testing.T) {
	const fixed = flagCFixedNewstyle | flagCNoZeroes
	for _, tc := range []struct {
		name string
		bad  []byte
	}{
		{"malformed", []byte{0, 0, 0, 9, 'a'}},
		{"unknown export", appendMetaRequest(nil, "nope", baseAllocation)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := optionStream(fixed,
				opt(optStructuredReply, nil),
				opt(optSetMetaContext, appendMetaRequest(nil, "a", baseAllocation)),
				opt(optSetMetaContext, tc.bad),
				opt(optGo, appendInfoRequest(nil, "a")))
			sess, err := negotiateBytes(fuzzExports(), in, false, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if sess.baseAlloc {
				t.Fatal("base:allocation still selected after a failed NBD_OPT_SET_META_CONTEXT")
			}
		})
	}
}

// After aloneInline lone requests the read loop handles requests itself. A
// request that then gets stuck in the backend (a write waiting for room in
// the agent's queue) must not stop the read loop: another goroutine takes
// it over (handleInline), so a read sent meanwhile is answered. It was not
// before (found by review).
func TestStalledInlineRequestHandsOverTheReadLoop(t *testing.T) {
	mem := newMemBackend(1 << 20)
	st := stallWrites(mem, false)
	ts := startServer(t, &Export{Name: "d", Backend: mem})
	c := dialT(t, "unix", ts.sock, "d", dialOptions{})
	// A queue-depth-1 phase: lone requests, so the read loop goes inline.
	for i := range loneWrites {
		if err := c.WriteAt(bytes.Repeat([]byte{1}, 4096), int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	st.armed.Store(true)
	stuck := make(chan error, 1)
	go func() { stuck <- c.WriteAt(bytes.Repeat([]byte{2}, 4096), 0, false) }()
	<-st.entered
	defer func() {
		close(st.release)
		if err := <-stuck; err != nil {
			t.Error(err)
		}
	}()
	done := make(chan error, 1)
	go func() { done <- c.ReadAt(make([]byte, 4096), 1<<19) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a read was not answered while a write handled inline by the read loop was stuck in the backend")
	}
}

// loneWrites is how many lone writes precede the stuck one.
var loneWrites = 4 * aloneInline

// A client that breaks the protocol (bad magic) while not reading its
// replies: the server hangs up. transmit waits for the handlers, which
// waited for a reader that never came, pinning the connection, its
// goroutines and buffers until the server shut down; replies now fail
// after unreadReplyGrace (found by review).
func TestBadMagicWithUnreadRepliesHangsUp(t *testing.T) {
	mem := newMemBackend(1 << 20)
	e := &Export{Name: "a", Backend: mem}
	sess := &session{export: e, structured: true, flags: transmissionFlags(e, true)}
	srvEnd, cliEnd := net.Pipe()
	defer srvEnd.Close()
	var in []byte
	var h [requestHeaderSize]byte
	putRequestHeader(h[:], request{typ: cmdRead, handle: 1, length: 4096})
	in = append(in, h[:]...)
	in = append(in, make([]byte, requestHeaderSize)...) // bad magic
	go cliEnd.Write(in)                                 // and never read
	var bufs bufpool.Pool
	c := &conn{
		nc: srvEnd, br: bufio.NewReader(srvEnd), bw: bufio.NewWriter(srvEnd),
		sess: sess, backend: mem, size: uint64(mem.Size()), bufs: &bufs,
		sem: make(chan struct{}, 4), log: slog.New(slog.DiscardHandler),
	}
	done := make(chan error, 1)
	go func() { done <- c.transmit(context.Background()) }()
	select {
	case err := <-done:
		if !errors.Is(err, errBadMagic) {
			t.Fatalf("transmit returned %v", err)
		}
	case <-time.After(3 * time.Second):
		cliEnd.Close() // unblock the handler so the test can end
		<-done
		t.Fatal("transmit did not return after a bad magic while a reply was unread")
	}
	cliEnd.Close()
}
