// Package nbd implements the Network Block Device protocol: a server that
// exports Backends to standard clients (QEMU, the kernel's nbd-client,
// libnbd tools such as nbdcopy and nbdfuse) and a small client for tests
// and tools. See docs/nbd.md for what of the protocol is implemented.
package nbd

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"standby/internal/bufpool"
)

// Server serves exports over any stream listener (TCP or Unix sockets).
// Configure the exported fields before calling Serve; a Server may Serve
// several listeners at once.
type Server struct {
	Logger *slog.Logger
	// Exports returns the current exports. It is called for every lookup
	// so exports can come and go while the server runs; the name ""
	// means the first (default) export.
	Exports func() []*Export
	// HandshakeTimeout bounds option haggling so idle or slow clients do
	// not hold connections open. Zero means 30 seconds.
	HandshakeTimeout time.Duration
	// MaxInFlight bounds the requests executing at once per connection.
	// A READ or WRITE counts once more per MiB of payload, which bounds
	// the payload memory one connection can pin to about MaxInFlight MiB
	// (plus one maximum payload). Zero means 64.
	MaxInFlight int
	// Buffers lends write payload buffers; nil means a pool of the
	// server's own. A BufferKeeper backend gives buffers back to it.
	Buffers *bufpool.Pool

	bufs bufpool.Pool
}

const (
	defaultHandshakeTimeout = 30 * time.Second
	defaultMaxInFlight      = 64
	// shutdownWriteGrace is how long in-flight replies may take to drain
	// to a client during shutdown before the connection is cut.
	shutdownWriteGrace = 10 * time.Second
	// socketBufSize is large enough to batch many small requests per
	// syscall; large payloads bypass it.
	socketBufSize = 256 << 10
)

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (s *Server) exports() []*Export {
	if s.Exports == nil {
		return nil
	}
	return s.Exports()
}

// Serve accepts connections on ln until ctx is done, then closes ln, stops
// reading new requests, lets in-flight requests finish and send their
// replies, closes every connection and returns nil. Any other accept error
// is returned after the same drain. Serve always closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	log := s.logger()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		ln.Close()
		wg.Wait()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	log.Info("nbd: serving", "addr", ln.Addr().String())
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && !errors.Is(err, net.ErrClosed) {
				// EMFILE and friends: wait for connections to close
				// instead of spinning or giving up.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				log.Warn("nbd: accept failed, backing off", "err", err, "backoff", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-ctx.Done():
					return nil
				}
			}
			return fmt.Errorf("nbd: accepting on %s: %w", ln.Addr(), err)
		}
		backoff = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, nc)
		}()
	}
}

func (s *Server) serveConn(ctx context.Context, nc net.Conn) {
	log := s.logger().With("remote", remoteName(nc))
	defer nc.Close()
	if tc, ok := nc.(*net.TCPConn); ok {
		// Replies are flushed deliberately; Nagle would only add latency
		// to 4 KiB writes at queue depth 1.
		_ = tc.SetNoDelay(true)
	}
	timeout := s.HandshakeTimeout
	if timeout <= 0 {
		timeout = defaultHandshakeTimeout
	}
	_ = nc.SetDeadline(time.Now().Add(timeout))
	// On shutdown, wake whatever is blocked reading, and give pending
	// replies a bounded time to drain.
	stop := context.AfterFunc(ctx, func() {
		_ = nc.SetReadDeadline(time.Now())
		_ = nc.SetWriteDeadline(time.Now().Add(shutdownWriteGrace))
	})
	defer stop()

	br := bufio.NewReaderSize(nc, socketBufSize)
	bw := bufio.NewWriterSize(nc, socketBufSize)
	neg := negotiator{br: br, bw: bw, exports: s.exports, log: log}
	sess, err := neg.run()
	switch {
	case errors.Is(err, errAbort):
		log.Debug("nbd: client aborted negotiation")
		return
	case err != nil:
		if ctx.Err() == nil {
			log.Info("nbd: negotiation failed", "err", err)
		}
		return
	}
	_ = nc.SetDeadline(time.Time{})
	if ctx.Err() != nil {
		// Shutdown raced with the deadline reset above.
		return
	}
	log = log.With("export", sess.export.Name)
	log.Info("nbd: client connected", "structured", sess.structured, "block_status", sess.baseAlloc, "read_only", sess.export.ReadOnly)

	maxInFlight := s.MaxInFlight
	if maxInFlight <= 0 {
		maxInFlight = defaultMaxInFlight
	}
	c := &conn{
		nc:      nc,
		br:      br,
		bw:      bw,
		sess:    sess,
		backend: sess.export.Backend,
		size:    uint64(sess.export.Backend.Size()),
		bufs:    cmp.Or(s.Buffers, &s.bufs),
		sem:     make(chan struct{}, maxInFlight),
		log:     log,
	}
	err = c.transmit(ctx)
	switch {
	case err == nil:
		log.Info("nbd: client disconnected")
	case errors.Is(err, errHangup):
		log.Info("nbd: client disconnected", "how", "hung up without NBD_CMD_DISC")
	case ctx.Err() != nil:
		log.Info("nbd: connection closed for shutdown")
	default:
		log.Warn("nbd: connection dropped", "err", err)
	}
}

func remoteName(nc net.Conn) string {
	if a := nc.RemoteAddr(); a != nil && a.String() != "" {
		return a.String()
	}
	if a := nc.LocalAddr(); a != nil {
		return "local:" + a.String()
	}
	return "unknown"
}
