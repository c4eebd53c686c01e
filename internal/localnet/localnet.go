// Package localnet opens the listeners of standby's plain, unauthenticated
// protocols: a role's status/metrics/API endpoint and the NBD exports of
// protected disks and recovery-point views. None of them has TLS or a
// login, so they are for this host only: a TCP listener must be on a
// loopback address, and a unix socket's file mode says who may connect.
// Every link that leaves the host is mutual TLS (internal/transport).
package localnet

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// IsLoopback reports whether addr (host:port) names this machine by a
// loopback address. Names other than localhost are not resolved: a name
// could resolve to anything, now or later.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ListenTCP listens on a loopback host:port and refuses any other address
// with the reason, before anything is bound. what names the endpoint in
// the error ("status endpoint", "NBD export").
func ListenTCP(what, addr string) (net.Listener, error) {
	if !IsLoopback(addr) {
		return nil, fmt.Errorf("%s on %q refused: it has no TLS and no login, so it listens on this host only: "+
			"give a loopback address (127.0.0.1:PORT, [::1]:PORT, localhost:PORT) or a unix socket, "+
			"and reach it from elsewhere through an SSH tunnel", what, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return ln, nil
}

// ListenUnix listens on a unix socket at path, replacing a socket left by
// a killed run (but nothing else), and sets the socket's mode: connecting
// needs write permission on it.
func ListenUnix(what, path string, mode os.FileMode) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s: %s exists and is not a socket", what, path)
		}
		_ = os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("%s: setting the mode of %s: %w", what, path, err)
	}
	return ln, nil
}

// Listen opens unix:PATH (with mode) or a loopback host:port; a "tcp:"
// prefix on the latter is accepted too.
func Listen(what, spec string, mode os.FileMode) (net.Listener, error) {
	if path, ok := strings.CutPrefix(spec, "unix:"); ok {
		return ListenUnix(what, path, mode)
	}
	return ListenTCP(what, strings.TrimPrefix(spec, "tcp:"))
}
