package netsim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// helperEnv makes the test binary an echo server instead of running the
// tests: Site.Command re-executes it inside a site.
const helperEnv = "NETSIM_TEST_ECHO_ADDR"

func TestMain(m *testing.M) {
	if addr := os.Getenv(helperEnv); addr != "" {
		if err := echoServer(addr); err != nil {
			fmt.Fprintln(os.Stderr, "echo server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// echoServer listens on addr, says so on stdout, and echoes every
// connection until it is killed.
func echoServer(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// startEcho runs the echo server inside site s and returns its address.
func startEcho(t *testing.T, s *Site, ip string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := s.Command(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+net.JoinHostPort(ip, "7007"))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start echo server in %s: %v", s.Name(), err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("echo server in %s did not start: %v", s.Name(), err)
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if !ok {
		t.Fatalf("echo server said %q", line)
	}
	return addr
}

// twoSites is the usual layout: primary and secondary joined by one link,
// an echo server in secondary.
func twoSites(t *testing.T) (n *Net, primary, secondary *Site, l *Link, echo string) {
	t.Helper()
	n = ForTest(t)
	ctx := t.Context()
	var err error
	if primary, err = n.AddSite(ctx, "primary"); err != nil {
		t.Fatal(err)
	}
	if secondary, err = n.AddSite(ctx, "secondary"); err != nil {
		t.Fatal(err)
	}
	if l, err = n.Link(ctx, primary, secondary); err != nil {
		t.Fatal(err)
	}
	echo = startEcho(t, secondary, secondary.Addr(primary))
	return n, primary, secondary, l, echo
}

func dial(t *testing.T, s *Site, addr string, timeout time.Duration) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	c, err := s.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, s.Name(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// rtts measures round trips of one byte over an echo connection.
func rtts(t *testing.T, c net.Conn, n int) []time.Duration {
	t.Helper()
	out := make([]time.Duration, n)
	b := []byte{0}
	for i := range out {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		out[i] = time.Since(start)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func TestEchoAcrossLink(t *testing.T) {
	t.Parallel()
	_, primary, secondary, _, echo := twoSites(t)
	if got, want := echo, net.JoinHostPort(secondary.Addr(primary), "7007"); got != want {
		t.Fatalf("echo server listens on %s, want %s", got, want)
	}
	if primary.Addr(secondary) == "" || primary.Addr(secondary) == secondary.Addr(primary) {
		t.Fatalf("addresses: primary %q, secondary %q", primary.Addr(secondary), secondary.Addr(primary))
	}
	c := dial(t, primary, echo, 5*time.Second)
	msg := strings.Repeat("replicate me ", 50000) // large enough to need GSO and many frames
	go func() { _, _ = io.WriteString(c, msg) }()
	got := make([]byte, len(msg))
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if string(got) != msg {
		t.Fatal("echo differs from what was sent")
	}
	if local := c.LocalAddr().(*net.TCPAddr).IP.String(); local != primary.Addr(secondary) {
		t.Errorf("connection left from %s, want primary's link address %s", local, primary.Addr(secondary))
	}
}

func TestNetemDelayAddsRTT(t *testing.T) {
	t.Parallel()
	_, primary, _, l, echo := twoSites(t)
	c := dial(t, primary, echo, 5*time.Second)
	base := rtts(t, c, 20)
	t.Logf("unimpaired RTT: min %v, median %v", base[0], base[len(base)/2])

	const delay = 25 * time.Millisecond
	if err := l.Netem(fmt.Sprintf("delay %v", delay)); err != nil {
		t.Fatal(err)
	}
	delayed := rtts(t, c, 20)
	t.Logf("RTT with delay %v each way: min %v, median %v", delay, delayed[0], delayed[len(delayed)/2])
	if delayed[0] < 2*delay {
		t.Errorf("fastest round trip %v with %v delay each way, want at least %v", delayed[0], delay, 2*delay)
	}
	if med := delayed[len(delayed)/2]; med > 2*delay+base[len(base)/2]+100*time.Millisecond {
		t.Errorf("median round trip %v, far above 2×%v", med, delay)
	}

	if err := l.Netem(""); err != nil {
		t.Fatal(err)
	}
	if again := rtts(t, c, 20); again[0] >= delay {
		t.Errorf("fastest round trip %v after clearing the delay", again[0])
	}
}

func TestNetemRateLimitsThroughput(t *testing.T) {
	t.Parallel()
	_, primary, _, l, echo := twoSites(t)
	c := dial(t, primary, echo, 5*time.Second)
	const size = 1 << 20
	transfer := func() time.Duration {
		start := time.Now()
		errc := make(chan error, 1)
		go func() {
			_, err := c.Write(make([]byte, size))
			errc <- err
		}()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.CopyN(io.Discard, c, size); err != nil {
			t.Fatalf("read echo: %v", err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("write: %v", err)
		}
		return time.Since(start)
	}
	fast := transfer()
	if err := l.Netem("rate 8mbit"); err != nil {
		t.Fatal(err)
	}
	slow := transfer()
	// 1 MiB at 8 Mbit/s (1 MB/s) each way, the two directions in parallel.
	expect := time.Duration(float64(size) / 1e6 * float64(time.Second))
	t.Logf("1 MiB echoed in %v unimpaired, %v at 8mbit (expect about %v)", fast, slow, expect)
	if slow < expect*9/10 {
		t.Errorf("1 MiB took %v at 8mbit, less than the %v the rate allows", slow, expect)
	}
	if slow > 3*expect {
		t.Errorf("1 MiB took %v at 8mbit, far more than %v", slow, expect)
	}
}

func TestNetemLossDropsFramesTCPRecovers(t *testing.T) {
	t.Parallel()
	_, primary, _, l, echo := twoSites(t)
	c := dial(t, primary, echo, 5*time.Second)
	if err := l.Netem("loss 10%"); err != nil {
		t.Fatal(err)
	}
	// Ping-pong so that every frame is small and counted on its own.
	rtts(t, c, 50)
	ab, ba := l.Stats()
	total := ab.Forwarded + ab.DroppedLoss + ba.Forwarded + ba.DroppedLoss
	lost := ab.DroppedLoss + ba.DroppedLoss
	t.Logf("%d of %d frames lost", lost, total)
	if lost == 0 || float64(lost) > 0.3*float64(total) {
		t.Errorf("lost %d of %d frames with loss 10%%", lost, total)
	}
}

func TestCutStallsAndRestoreResumes(t *testing.T) {
	t.Parallel()
	_, primary, _, l, echo := twoSites(t)
	c := dial(t, primary, echo, 5*time.Second)
	rtts(t, c, 1)

	if err := l.Cut(); err != nil {
		t.Fatal(err)
	}
	// A new connection gets no answer at all: it times out rather than
	// being refused or unreachable.
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	start := time.Now()
	_, err := primary.DialContext(ctx, "tcp", echo)
	cancel()
	if err == nil {
		t.Fatal("dial across a cut link succeeded")
	}
	if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
		t.Errorf("dial across a cut link failed with %v, want a timeout", err)
	}
	if waited := time.Since(start); waited < 900*time.Millisecond {
		t.Errorf("dial across a cut link failed after %v, before its timeout", waited)
	}

	// The established connection stalls.
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatalf("write during cut: %v (the write should be buffered)", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
	b := make([]byte, 1)
	if _, err := c.Read(b); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read during cut: %v, want it to stall until its deadline", err)
	}

	if err := l.Restore(); err != nil {
		t.Fatal(err)
	}
	// TCP retransmits, with back-off, and the byte gets through.
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	start = time.Now()
	if _, err := io.ReadFull(c, b); err != nil || b[0] != 'x' {
		t.Fatalf("read after restore: %q, %v", b, err)
	}
	t.Logf("stalled byte arrived %v after restore", time.Since(start))
	dial(t, primary, echo, 5*time.Second)

	ab, ba := l.Stats()
	t.Logf("stats primary->secondary %+v, secondary->primary %+v", ab, ba)
	if ab.DroppedCut == 0 {
		t.Error("no frames counted as dropped by the cut")
	}
}

func TestThreeSitesOnlyLinkedSitesReachEachOther(t *testing.T) {
	t.Parallel()
	n := ForTest(t)
	ctx := t.Context()
	sites := map[string]*Site{}
	for _, name := range []string{"primary", "secondary", "dr"} {
		s, err := n.AddSite(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		sites[name] = s
	}
	p, s, dr := sites["primary"], sites["secondary"], sites["dr"]
	if _, err := n.Link(ctx, p, s); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Link(ctx, s, dr); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Link(ctx, dr, s); err == nil {
		t.Error("linking the same two sites twice succeeded")
	}
	if p.Addr(dr) != "" {
		t.Errorf("primary has address %q toward an unlinked site", p.Addr(dr))
	}
	addrs := []string{p.Addr(s), s.Addr(p), s.Addr(dr), dr.Addr(s)}
	if slices.Contains(addrs, "") || len(slices.Compact(slices.Sorted(slices.Values(addrs)))) != 4 {
		t.Fatalf("addresses %v, want four distinct ones", addrs)
	}

	echo := startEcho(t, s, "0.0.0.0")
	_, port, _ := net.SplitHostPort(echo)
	rtts(t, dial(t, p, net.JoinHostPort(s.Addr(p), port), 5*time.Second), 1)
	rtts(t, dial(t, dr, net.JoinHostPort(s.Addr(dr), port), 5*time.Second), 1)

	// primary has no route into the dr link's subnet.
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if c, err := p.DialContext(dctx, "tcp", net.JoinHostPort(s.Addr(dr), port)); err == nil {
		c.Close()
		t.Error("primary reached secondary's address on the dr link")
	} else if !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("dial into an unlinked subnet: %v, want network unreachable", err)
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	t.Parallel()
	n, primary, secondary, l, _ := twoSites(t)
	// A process left running inside a site must not survive Close.
	sleeper := primary.Command(context.Background(), "sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()
	// Wait until `ip netns exec` has moved it into the namespace.
	for deadline := time.Now().Add(5 * time.Second); ; {
		out, _ := exec.Command("ip", "netns", "pids", primary.Namespace()).Output()
		if slices.Contains(strings.Fields(string(out)), fmt.Sprint(sleeper.Process.Pid)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("sleep never showed up inside the site")
		}
		time.Sleep(10 * time.Millisecond)
	}

	if err := n.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for _, ns := range []string{primary.Namespace(), secondary.Namespace(), n.wireNS} {
		if _, err := os.Stat(nsDir + "/" + ns); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s still there after Close (%v)", ns, err)
		}
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("process inside a site still running after Close")
	}
	if err := l.Netem("delay 1ms"); err == nil {
		t.Error("Netem on a closed net succeeded")
	}
	if _, err := n.AddSite(t.Context(), "late"); err == nil {
		t.Error("AddSite on a closed net succeeded")
	}
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil && strings.Contains(string(out), n.prefix) {
		t.Errorf("ip netns list still shows %s:\n%s", n.prefix, out)
	}
}

func TestNamesValidated(t *testing.T) {
	if _, err := New(t.Context(), "bad/prefix"); err == nil {
		t.Error("New accepted a prefix with '/'")
	}
	n := ForTest(t)
	for _, bad := range []string{"", "Upper", "has.dot", "has space", strings.Repeat("x", 33)} {
		if _, err := n.AddSite(t.Context(), bad); err == nil {
			t.Errorf("AddSite(%q) succeeded", bad)
		}
	}
	s, err := n.AddSite(t.Context(), "one")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.AddSite(t.Context(), "one"); err == nil {
		t.Error("second site with the same name succeeded")
	}
	if _, err := n.Link(t.Context(), s, s); err == nil {
		t.Error("linking a site to itself succeeded")
	}
	if _, err := s.DialContext(t.Context(), "tcp", "localhost:1"); err == nil {
		t.Error("DialContext accepted a host name")
	}
}

// BenchmarkLinkThroughput measures what an unimpaired link carries one
// way, to show what the wire costs next to a plain veth pair.
func BenchmarkLinkThroughput(b *testing.B) {
	n := ForTest(b)
	ctx := b.Context()
	p, err := n.AddSite(ctx, "p")
	if err != nil {
		b.Fatal(err)
	}
	s, err := n.AddSite(ctx, "s")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := n.Link(ctx, p, s); err != nil {
		b.Fatal(err)
	}
	ln, err := s.Listen(ctx, "tcp", net.JoinHostPort(s.Addr(p), "0"))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(io.Discard, c)
	}()
	c, err := p.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func TestForTestSweepsNamespacesOfDeadRuns(t *testing.T) {
	// A process that has exited stands for a test binary killed mid-run.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("sbt%d-000000-primary", dead.Process.Pid)
	if err := addNamespace(t.Context(), stale); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteNamespace(context.Background(), stale) })
	// One of a live run (ours) must survive the sweep.
	live := fmt.Sprintf("sbt%d-000000-primary", os.Getpid())
	if err := addNamespace(t.Context(), live); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteNamespace(context.Background(), live) })

	ForTest(t)
	if _, err := os.Stat(nsDir + "/" + stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale namespace %s survived (%v)", stale, err)
	}
	if _, err := os.Stat(nsDir + "/" + live); err != nil {
		t.Errorf("namespace of a live run was removed: %v", err)
	}
}
