package netsim

import (
	"context"
	"fmt"
	"net"
)

// DialContext connects from inside the site, as a process running there
// would, while the test keeps running in its own namespace. address must
// hold an IP address: a name would be resolved by resolver goroutines in
// the test's namespace, not the site's.
func (s *Site) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if err := needIP(address); err != nil {
		return nil, fmt.Errorf("netsim: dial %s from site %s: %w", address, s.name, err)
	}
	var conn net.Conn
	err := inNetns(s.nsPath(), func() error {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, address)
		conn = c
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netsim: dial %s from site %s: %w", address, s.name, err)
	}
	return conn, nil
}

// Listen opens a listener inside the site. As with DialContext, the host
// part of address must be an IP address or empty.
func (s *Site) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	if err := needIP(address); err != nil {
		return nil, fmt.Errorf("netsim: listen on %s in site %s: %w", address, s.name, err)
	}
	var ln net.Listener
	err := inNetns(s.nsPath(), func() error {
		var lc net.ListenConfig
		l, err := lc.Listen(ctx, network, address)
		ln = l
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netsim: listen on %s in site %s: %w", address, s.name, err)
	}
	return ln, nil
}

func needIP(address string) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	if host != "" && net.ParseIP(host) == nil {
		return fmt.Errorf("host %q is not an IP address", host)
	}
	return nil
}
