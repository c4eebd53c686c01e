package transport

import (
	"bufio"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
)

// batchBuf is the size of the buffers under TLS: a 4 MiB frame becomes
// 256 TLS records of 16 KiB, and without them each record was a write
// system call on one side and a read on the other. Batching them into
// 256 KiB cut the CPU a TLS stream costs both ends by 10-20 % on the
// development VM, and 512 KiB about 8 % more (BenchmarkFrames8MiB; 1 to
// 4 MiB did no better; docs/benchmarks.md).
const batchBuf = 512 << 10

// batchConn sits between TLS and the socket. Reads come from a buffer
// refilled by large reads; once armed (after the handshake, which must not
// wait in a buffer), writes collect in a buffer until Flush. The framed
// connection above flushes at the end of every frame.
type batchConn struct {
	net.Conn
	r     *bufio.Reader
	armed atomic.Bool

	// mu serialises writes (TLS's, under its own lock) with Flush, which
	// the framed connection calls without TLS's lock, and with Close.
	mu sync.Mutex
	w  *bufio.Writer
}

func newBatchConn(c net.Conn) *batchConn {
	if tcp, ok := c.(*net.TCPConn); ok {
		// Frames are flushed whole; Nagle would only add delay to acks.
		_ = tcp.SetNoDelay(true)
	}
	return &batchConn{Conn: c, r: bufio.NewReaderSize(c, batchBuf), w: bufio.NewWriterSize(c, batchBuf)}
}

func (b *batchConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.armed.Load() {
		if err := b.w.Flush(); err != nil {
			return 0, err
		}
		return b.Conn.Write(p)
	}
	return b.w.Write(p)
}

// Flush sends what TLS has written since the last Flush.
func (b *batchConn) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.w.Flush()
}

// arm starts buffering writes; called once the handshake is done.
func (b *batchConn) arm() { b.armed.Store(true) }

// batchListener hands out TLS server connections over batchConns.
type batchListener struct {
	net.Listener
	cfg *tls.Config
}

func (l batchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return tls.Server(newBatchConn(c), l.cfg), nil
}
