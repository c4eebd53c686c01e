package transport

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"standby/internal/pki"
	"standby/internal/wire"
)

func pair(t testing.TB) (client, server *Conn) {
	t.Helper()
	dir := t.TempDir()
	agent := pki.Identity{Role: pki.RoleAgent, Name: "a1"}
	ps := pki.Identity{Role: pki.RoleProcessServer, Name: "ps1"}
	files, err := pki.DevPKI(dir, []string{"127.0.0.1"}, agent, ps)
	if err != nil {
		t.Fatal(err)
	}
	scfg, err := pki.ServerConfig(files[ps], pki.RoleAgent)
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := pki.ClientConfig(files[agent], "127.0.0.1", pki.RoleProcessServer)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen("127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	type res struct {
		c   *Conn
		err error
	}
	accepted := make(chan res, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			accepted <- res{nil, err}
			return
		}
		c, err := Accept(context.Background(), raw)
		accepted <- res{c, err}
	}()
	client, err = Dial(context.Background(), ln.Addr().String(), ccfg)
	if err != nil {
		t.Fatal(err)
	}
	r := <-accepted
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { client.Close(); r.c.Close() })
	return client, r.c
}

// Frames of every size cross both ways at once, each arriving whole and in
// order: the buffer under TLS is flushed at the end of every frame.
func TestFramesBothWays(t *testing.T) {
	c, s := pair(t)
	sizes := []int{0, 1, 100, 16 << 10, 16<<10 + 1, 256 << 10, 1<<20 + 7, 4 << 20}
	// payloads yields the same sequence of frames for a seed on both ends.
	payloads := func(seed uint64) func(n int) []byte {
		r := rand.New(rand.NewPCG(seed, 1))
		return func(n int) []byte {
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(r.Uint32())
			}
			return p
		}
	}
	send := func(conn *Conn, seed uint64) error {
		next := payloads(seed)
		for _, n := range sizes {
			if err := conn.WriteFrame(wire.TypeBatch, next(n), wire.CodecNone); err != nil {
				return err
			}
		}
		return nil
	}
	check := func(conn *Conn, seed uint64) error {
		next := payloads(seed)
		for _, n := range sizes {
			want := next(n)
			typ, got, err := conn.ReadFrame()
			if err != nil {
				return err
			}
			if typ != wire.TypeBatch || !bytes.Equal(got, want) {
				return errors.New("frame differs")
			}
		}
		return nil
	}
	errc := make(chan error, 4)
	go func() { errc <- send(c, 1) }()
	go func() { errc <- send(s, 2) }()
	go func() { errc <- check(s, 1) }()
	go func() { errc <- check(c, 2) }()
	for range 4 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	// A small frame after the big ones is not left in a buffer.
	if err := c.WriteFrame(wire.TypePing, nil, wire.CodecNone); err != nil {
		t.Fatal(err)
	}
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	if typ, _, err := s.ReadFrame(); err != nil || typ != wire.TypePing {
		t.Fatalf("ping after the big frames: %v %v", typ, err)
	}
}

// A writer stuck on a peer that stopped reading fails as soon as its
// connection is closed.
func TestCloseUnblocksStuckWriter(t *testing.T) {
	c, _ := pair(t)
	errc := make(chan error, 1)
	go func() {
		p := make([]byte, 4<<20)
		for {
			if err := c.WriteFrame(wire.TypeBatch, p, wire.CodecNone); err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond) // the socket buffers fill up
	start := time.Now()
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "closed") {
			t.Logf("writer ended with %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("writer still blocked 3 s after Close")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v", d)
	}
}

// The server name checked is the host dialled, as with tls.Dialer.
func TestDialChecksServerName(t *testing.T) {
	dir := t.TempDir()
	agent := pki.Identity{Role: pki.RoleAgent, Name: "a1"}
	ps := pki.Identity{Role: pki.RoleProcessServer, Name: "ps1"}
	files, err := pki.DevPKI(dir, []string{"127.0.0.2"}, agent, ps) // not 127.0.0.1
	if err != nil {
		t.Fatal(err)
	}
	scfg, _ := pki.ServerConfig(files[ps], pki.RoleAgent)
	ccfg, _ := pki.ClientConfig(files[agent], "127.0.0.1", pki.RoleProcessServer)
	ln, err := Listen("127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		raw, err := ln.Accept()
		if err == nil {
			if c, err := Accept(context.Background(), raw); err == nil {
				c.Close()
			} else {
				raw.Close()
			}
		}
	}()
	_, err = Dial(context.Background(), ln.Addr().String(), ccfg)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("dial to a server whose certificate lacks the address: %v", err)
	}
}

// BenchmarkFrames8MiB streams 8 MiB batch frames over a mutual-TLS loopback
// connection, as the initial copy does on each hop, and reports the CPU
// time of both ends per GiB (the wall time on a shared machine says less).
func BenchmarkFrames8MiB(b *testing.B) {
	client, server := pair(b)
	streamBench(b, func(p []byte) error { return client.WriteFrame(wire.TypeBatch, p, wire.CodecNone) },
		func([]byte) error { _, _, err := server.ReadFrame(); return err })
}

func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkTLSStream8MiB is BenchmarkFrames8MiB without the framing: the
// same 8 MiB writes straight to the mutual-TLS stream. With
// BenchmarkTCPStream8MiB it splits a hop's cost into what the loopback
// socket costs, what TLS adds and what the frames add (docs/benchmarks.md,
// "What limits the misses now").
func BenchmarkTLSStream8MiB(b *testing.B) {
	client, server := pair(b)
	streamBench(b, func(p []byte) error { _, err := client.WriteRaw(p); return err }, readFull(server.TLS))
}

// BenchmarkTCPStream8MiB streams 8 MiB writes over a plain loopback TCP
// connection: the floor under any hop.
func BenchmarkTCPStream8MiB(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	server, ok := <-accepted
	if !ok {
		b.Fatal("accept failed")
	}
	defer server.Close()
	streamBench(b, func(p []byte) error { _, err := client.Write(p); return err }, readFull(server))
}

func readFull(r io.Reader) func([]byte) error {
	return func(buf []byte) error { _, err := io.ReadFull(r, buf); return err }
}

// streamBench sends 8 MiB payloads with write while a goroutine takes them
// with read, and reports the CPU time of both ends per GiB (the wall time
// on a shared machine says less).
func streamBench(b *testing.B, write, read func([]byte) error) {
	payload := make([]byte, 8<<20)
	for i := range payload {
		payload[i] = byte(i / 4093)
	}
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, len(payload))
		for range b.N {
			if err := read(buf); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	b.SetBytes(int64(len(payload)))
	before := cpuTime(b)
	b.ResetTimer()
	for range b.N {
		if err := write(payload); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	gib := float64(b.N) * float64(len(payload)) / (1 << 30)
	b.ReportMetric((cpuTime(b)-before).Seconds()/gib, "cpu-s/GiB")
}
