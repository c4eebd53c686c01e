package netsim

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
)

// maxLinks is how many links fit in the address plan 10.213.<link>.0/24.
const maxLinks = 256

// Link joins two sites. Each site has a veth interface (veth<N>, where N
// is the link's number in its Net) with a /24 address; the frames between
// them cross the wire, which applies Netem impairments and cuts.
type Link struct {
	a, b         *Site
	addrA, addrB string
	log          *slog.Logger

	mu      sync.Mutex
	ports   [2]*os.File
	ab, ba  *pipe
	done    chan struct{}
	wg      sync.WaitGroup
	stopped bool
}

// Link connects sites a and b, which must belong to n, with an unimpaired
// link. a gets 10.213.N.1 and b 10.213.N.2.
func (n *Net) Link(ctx context.Context, a, b *Site) (*Link, error) {
	if a == nil || b == nil || a.net != n || b.net != n {
		return nil, fmt.Errorf("netsim: link: both sites must belong to net %s", n.prefix)
	}
	if a == b {
		return nil, fmt.Errorf("netsim: link: cannot link site %s to itself", a.name)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, fmt.Errorf("netsim: link %s-%s: net is closed", a.name, b.name)
	}
	for _, l := range n.links {
		if (l.a == a && l.b == b) || (l.a == b && l.b == a) {
			return nil, fmt.Errorf("netsim: sites %s and %s are already linked", a.name, b.name)
		}
	}
	idx := len(n.links)
	if idx >= maxLinks {
		return nil, fmt.Errorf("netsim: link %s-%s: at most %d links per net", a.name, b.name, maxLinks)
	}
	l := &Link{
		a:     a,
		b:     b,
		addrA: fmt.Sprintf("10.213.%d.1", idx),
		addrB: fmt.Sprintf("10.213.%d.2", idx),
		log:   n.log.With(slog.String("link", a.name+"-"+b.name)),
		done:  make(chan struct{}),
	}
	if err := l.setUp(ctx, n, idx); err != nil {
		// Deleting one end of a veth pair deletes both.
		for _, s := range []*Site{a, b} {
			_ = run(context.WithoutCancel(ctx), "ip", "-n", s.ns, "link", "del", vethName(idx))
		}
		l.closePorts()
		return nil, fmt.Errorf("netsim: link %s-%s: %w", a.name, b.name, err)
	}
	n.links = append(n.links, l)
	l.ab = newPipe(a.name+"->"+b.name, l.ports[0], l.ports[1], l.log, l.done)
	l.ba = newPipe(b.name+"->"+a.name, l.ports[1], l.ports[0], l.log, l.done)
	l.ab.run(&l.wg)
	l.ba.run(&l.wg)
	l.log.LogAttrs(ctx, slog.LevelDebug, "netsim link up", slog.String(a.name, l.addrA), slog.String(b.name, l.addrB))
	return l, nil
}

func vethName(idx int) string { return fmt.Sprintf("veth%d", idx) }

func (l *Link) setUp(ctx context.Context, n *Net, idx int) error {
	ends := []struct {
		site *Site
		addr string
		wire string
	}{
		{l.a, l.addrA, fmt.Sprintf("w%da", idx)},
		{l.b, l.addrB, fmt.Sprintf("w%db", idx)},
	}
	for i, e := range ends {
		// Created directly inside the two namespaces: the names never
		// exist in the host's namespace, where they could collide.
		steps := [][]string{
			{"ip", "link", "add", vethName(idx), "netns", e.site.ns, "type", "veth", "peer", "name", e.wire, "netns", n.wireNS},
			{"ip", "-n", e.site.ns, "addr", "add", e.addr + "/24", "dev", vethName(idx)},
			{"ip", "-n", e.site.ns, "link", "set", vethName(idx), "up"},
			{"ip", "-n", n.wireNS, "link", "set", e.wire, "up"},
		}
		for _, s := range steps {
			if err := run(ctx, s[0], s[1:]...); err != nil {
				return err
			}
		}
		port, err := openPort(nsDir+"/"+n.wireNS, e.wire)
		if err != nil {
			return err
		}
		l.ports[i] = port
	}
	return nil
}

// Netem sets the link's impairments, in tc-netem syntax, for both
// directions: "delay 20ms" adds 20ms each way (40ms to a round trip),
// "delay 20ms 5ms" adds up to ±5ms of jitter, "rate 100mbit" limits each
// direction's bandwidth, "loss 1%" drops frames at random, "limit 1000"
// sets the queue length in packets (default 1000, beyond which frames are
// tail-dropped). An empty spec removes all impairments. Each call replaces
// the previous spec, like `tc qdisc replace`; a cut stays in force.
func (l *Link) Netem(spec string) error {
	imp, err := parseNetem(spec)
	if err != nil {
		return fmt.Errorf("netsim: link %s-%s: %w", l.a.name, l.b.name, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return fmt.Errorf("netsim: netem on link %s-%s: net is closed", l.a.name, l.b.name)
	}
	for _, p := range []*pipe{l.ab, l.ba} {
		p.imp.Store(&imp)
	}
	l.log.LogAttrs(context.Background(), slog.LevelInfo, "netsim netem", slog.String("spec", spec))
	return nil
}

// Cut makes the link a black hole for IP traffic, in both directions, until
// Restore: frames in flight are lost and new ones dropped without a trace.
// Both sites' interfaces stay up and ARP still crosses, as when a WAN
// fails somewhere between two routers: connection attempts time out
// rather than fail fast, established TCP connections stall and retransmit,
// and they carry on after Restore unless they gave up meanwhile. (Taking
// an interface down instead would delete the site's route, turning every
// attempt into an immediate "network is unreachable", which is not what a
// replication link sees when a WAN fails.)
func (l *Link) Cut() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return fmt.Errorf("netsim: cut link %s-%s: net is closed", l.a.name, l.b.name)
	}
	for _, p := range []*pipe{l.ab, l.ba} {
		p.cut.Store(true)
		p.epoch.Add(1)
	}
	l.log.LogAttrs(context.Background(), slog.LevelInfo, "netsim link cut")
	return nil
}

// Restore ends a cut. The link's Netem impairments apply again as before.
func (l *Link) Restore() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return fmt.Errorf("netsim: restore link %s-%s: net is closed", l.a.name, l.b.name)
	}
	for _, p := range []*pipe{l.ab, l.ba} {
		p.cut.Store(false)
	}
	l.log.LogAttrs(context.Background(), slog.LevelInfo, "netsim link restored")
	return nil
}

// Stats reports what each direction of the link did with its frames.
func (l *Link) Stats() (aToB, bToA Stats) {
	return l.ab.stats(), l.ba.stats()
}

// stop ends the wire's goroutines; the veths go with the namespaces.
func (l *Link) stop() {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return
	}
	l.stopped = true
	close(l.done)
	l.mu.Unlock()
	l.closePorts()
	l.wg.Wait()
}

func (l *Link) closePorts() {
	for _, p := range l.ports {
		if p != nil {
			p.Close()
		}
	}
}
