// Package transport opens the mutual-TLS connections of the data plane and
// hands them over as framed wire connections.
package transport

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"standby/internal/wire"
)

// Conn is an authenticated framed connection.
type Conn struct {
	*wire.Conn
	TLS   *tls.Conn
	batch *batchConn
}

// Close closes the connection. The socket is cut first, so that a writer
// stuck on a peer that stopped reading fails at once rather than holding
// up TLS's close_notify (peers read the end of the stream at a record
// boundary as a clean EOF either way).
func (c *Conn) Close() error {
	err := c.batch.Conn.Close()
	c.Conn.Close() // after the cut: it waits for a writer to let go
	c.TLS.Close()
	return err
}

// WriteRaw sends p through TLS outside the framing and flushes it: for
// tests that play a broken peer. Writing to TLS directly would leave the
// bytes in the buffer under it.
func (c *Conn) WriteRaw(p []byte) (int, error) {
	n, err := c.TLS.Write(p)
	if err == nil {
		err = c.batch.Flush()
	}
	return n, err
}

// SetDeadline bounds the next reads and writes.
func (c *Conn) SetDeadline(t time.Time) error { return c.TLS.SetDeadline(t) }

// flushingTLS is what the framed connection writes to: TLS over a
// batchConn, flushed at the end of every frame.
type flushingTLS struct {
	*tls.Conn
	b *batchConn
}

func (f flushingTLS) Flush() error { return f.b.Flush() }

func newConn(tc *tls.Conn, b *batchConn) *Conn {
	b.arm()
	return &Conn{Conn: wire.NewConn(flushingTLS{tc, b}), TLS: tc, batch: b}
}

// Dial connects to addr and completes the TLS handshake, so certificate
// problems surface here with their own message rather than as a reset later.
func Dial(ctx context.Context, addr string, cfg *tls.Config) (*Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	b := newBatchConn(raw)
	if cfg.ServerName == "" {
		// As tls.Dialer does: the host dialled is the name to verify.
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			raw.Close()
			return nil, fmt.Errorf("connecting to %s: %w", addr, err)
		}
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	tc := tls.Client(b, cfg)
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	return newConn(tc, b), nil
}

// Listen opens a TLS listener.
func Listen(addr string, cfg *tls.Config) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	return batchListener{Listener: ln, cfg: cfg}, nil
}

// Accept finishes the handshake of an accepted connection within a bound,
// so a peer that never speaks TLS cannot hold a goroutine forever.
func Accept(ctx context.Context, c net.Conn) (*Conn, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, fmt.Errorf("connection from %s is not TLS", c.RemoteAddr())
	}
	b, ok := tc.NetConn().(*batchConn)
	if !ok {
		return nil, fmt.Errorf("connection from %s was not accepted by transport.Listen", c.RemoteAddr())
	}
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, fmt.Errorf("TLS handshake with %s: %w", c.RemoteAddr(), err)
	}
	return newConn(tc, b), nil
}
