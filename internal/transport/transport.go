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
	TLS *tls.Conn
}

// Close closes the connection.
func (c *Conn) Close() error {
	c.Conn.Close()
	return c.TLS.Close()
}

// SetDeadline bounds the next reads and writes.
func (c *Conn) SetDeadline(t time.Time) error { return c.TLS.SetDeadline(t) }

// Dial connects to addr and completes the TLS handshake, so certificate
// problems surface here with their own message rather than as a reset later.
func Dial(ctx context.Context, addr string, cfg *tls.Config) (*Conn, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}, Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	tc := c.(*tls.Conn)
	if tcp, ok := tc.NetConn().(*net.TCPConn); ok {
		_ = tcp.SetNoDelay(true)
	}
	return &Conn{Conn: wire.NewConn(tc), TLS: tc}, nil
}

// Listen opens a TLS listener.
func Listen(addr string, cfg *tls.Config) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	return tls.NewListener(ln, cfg), nil
}

// Accept finishes the handshake of an accepted connection within a bound,
// so a peer that never speaks TLS cannot hold a goroutine forever.
func Accept(ctx context.Context, c net.Conn) (*Conn, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, fmt.Errorf("connection from %s is not TLS", c.RemoteAddr())
	}
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, fmt.Errorf("TLS handshake with %s: %w", c.RemoteAddr(), err)
	}
	if tcp, ok := tc.NetConn().(*net.TCPConn); ok {
		_ = tcp.SetNoDelay(true)
	}
	return &Conn{Conn: wire.NewConn(tc), TLS: tc}, nil
}
