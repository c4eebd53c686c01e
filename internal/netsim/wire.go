package netsim

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The wire joins the two veth pairs of a link inside the Net's wire
// namespace: each site's veth has its peer there, and a goroutine pair
// copies Ethernet frames between the two peers through packet sockets,
// applying the link's impairments on the way. Between the sites it acts
// like a switch with a WAN inside it.

// vnetHdrLen is the size of struct virtio_net_hdr. With PACKET_VNET_HDR
// the kernel hands over TCP's large segments and checksum offload state
// intact, so the wire moves 64 KiB frames instead of 1500-byte ones and
// never computes a checksum; writing the header back lets the receiving
// side's stack finish the job, as it would for a virtio NIC.
const vnetHdrLen = 10

// readBufSize holds the largest frame a veth passes with GSO (64 KiB, or
// more with BIG TCP) plus headers.
const readBufSize = 256 << 10

// queueCap bounds each direction's queue in frames; the limit in packets
// (see segments) is always reached first.
const queueCap = maxLimit

const etherTypeARP = 0x0806

// openPort opens a packet socket on interface ifname of the namespace at
// nsPath.
func openPort(nsPath, ifname string) (*os.File, error) {
	var f *os.File
	err := inNetns(nsPath, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return fmt.Errorf("find interface %s: %w", ifname, err)
		}
		// Protocol 0 receives nothing until bind names the interface, so
		// no frame of another interface slips in between.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open packet socket: %w", err)
		}
		opts := []struct {
			level, opt, value int
			name              string
		}{
			{unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1, "PACKET_VNET_HDR"},
			// Without it the socket would read back the frames the wire
			// itself writes to this interface and send them round again.
			{unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING"},
			{unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8 << 20, "SO_RCVBUFFORCE"},
			{unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8 << 20, "SO_SNDBUFFORCE"},
		}
		for _, o := range opts {
			if err := unix.SetsockoptInt(fd, o.level, o.opt, o.value); err != nil {
				unix.Close(fd)
				return fmt.Errorf("set %s on packet socket: %w", o.name, err)
			}
		}
		sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}
		if err := unix.Bind(fd, sa); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %s: %w", ifname, err)
		}
		f = os.NewFile(uintptr(fd), "packet:"+ifname)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return f, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Stats counts what one direction of a link did with the frames it got.
type Stats struct {
	Forwarded    uint64 // delivered to the other site
	DroppedLoss  uint64 // dropped by the loss option
	DroppedCut   uint64 // dropped because the link was cut
	DroppedQueue uint64 // dropped because the queue was full (tail drop)
	WriteErrors  uint64 // the kernel refused to deliver
}

// pipe is one direction of a link.
type pipe struct {
	name    string // "a->b", for logs
	in, out *os.File
	log     *slog.Logger

	imp    atomic.Pointer[impairment]
	cut    atomic.Bool
	epoch  atomic.Uint64 // bumped by Cut: frames queued before it are lost
	queued atomic.Int64  // packets (segments) waiting or being written

	q    chan frame
	done chan struct{}

	forwarded, droppedLoss, droppedCut, droppedQueue, writeErrors atomic.Uint64
}

type frame struct {
	data  []byte // virtio_net_hdr + Ethernet frame
	due   time.Time
	epoch uint64
	arp   bool
	segs  int
}

func newPipe(name string, in, out *os.File, log *slog.Logger, done chan struct{}) *pipe {
	p := &pipe{name: name, in: in, out: out, log: log, q: make(chan frame, queueCap), done: done}
	p.imp.Store(&impairment{limit: defaultLimit})
	return p
}

// run moves frames until the link is closed.
func (p *pipe) run(wg *sync.WaitGroup) {
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer close(p.q)
		p.read()
	}()
	go func() {
		defer wg.Done()
		p.write()
	}()
}

func (p *pipe) read() {
	buf := make([]byte, readBufSize)
	var sh shaper
	for {
		n, err := p.in.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			// ENETDOWN and friends while an interface flaps: the socket
			// recovers when the interface comes back.
			p.log.LogAttrs(context.Background(), slog.LevelDebug, "netsim wire read", slog.String("dir", p.name), slog.Any("err", err))
			select {
			case <-p.done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		if n < vnetHdrLen+14 {
			continue
		}
		now := time.Now()
		arp := binary.BigEndian.Uint16(buf[vnetHdrLen+12:]) == etherTypeARP
		// A cut link still carries ARP: the sites keep their neighbour
		// entries, as hosts behind a router that lost its WAN do, so TCP
		// sees silence rather than "no route to host".
		if p.cut.Load() && !arp {
			p.droppedCut.Add(1)
			continue
		}
		imp := p.imp.Load()
		if imp.loss > 0 && rand.Float64() < imp.loss {
			p.droppedLoss.Add(1)
			continue
		}
		segs := segments(n - vnetHdrLen)
		if p.queued.Load()+int64(segs) > int64(imp.limit) {
			p.droppedQueue.Add(1)
			continue
		}
		// Without delay or rate nothing needs to wait: when nothing is
		// queued either (the writer has finished), the reader delivers the
		// frame itself, which saves a hand-over per frame and lets the
		// socket's buffer, not the queue limit, absorb bursts.
		if imp.delay == 0 && imp.jitter == 0 && imp.rate == 0 && p.queued.Load() == 0 {
			p.deliver(buf[:n], p.epoch.Load(), arp)
			continue
		}
		due := sh.schedule(now, n-vnetHdrLen, imp)
		p.queued.Add(int64(segs))
		p.q <- frame{data: append([]byte(nil), buf[:n]...), due: due, epoch: p.epoch.Load(), arp: arp, segs: segs}
	}
}

func (p *pipe) write() {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for fr := range p.q {
		if wait := time.Until(fr.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-p.done:
				timer.Stop()
			}
		}
		select {
		case <-p.done:
			p.queued.Add(-int64(fr.segs))
			continue
		default:
		}
		p.deliver(fr.data, fr.epoch, fr.arp)
		p.queued.Add(-int64(fr.segs))
	}
}

// deliver writes a frame to the far side, unless a cut came after it was
// read.
func (p *pipe) deliver(data []byte, epoch uint64, arp bool) {
	if epoch != p.epoch.Load() && !arp {
		p.droppedCut.Add(1)
		return
	}
	if _, err := p.out.Write(data); err != nil {
		p.writeErrors.Add(1)
		if !errors.Is(err, os.ErrClosed) && !errors.Is(err, syscall.ENETDOWN) {
			p.log.LogAttrs(context.Background(), slog.LevelDebug, "netsim wire write", slog.String("dir", p.name), slog.Any("err", err))
		}
		return
	}
	p.forwarded.Add(1)
}

func (p *pipe) stats() Stats {
	return Stats{
		Forwarded:    p.forwarded.Load(),
		DroppedLoss:  p.droppedLoss.Load(),
		DroppedCut:   p.droppedCut.Load(),
		DroppedQueue: p.droppedQueue.Load(),
		WriteErrors:  p.writeErrors.Load(),
	}
}
