package processserver_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"standby/internal/agent"
	"standby/internal/config"
	"standby/internal/mastertarget"
	"standby/internal/pki"
	"standby/internal/processserver"
	"standby/internal/transport"
	"standby/internal/wire"
)

// A copy batch the process server cached (the master target was away when
// it came) and forwarded later is kept in the master target's memory until
// applied, like one the process server relayed: when that master-target
// session ends before the copy is durable, the agent must be made to read
// it again. It was not: only copies relayed by the process server counted,
// and a master target restarted on its intake reports durable past copies
// it lost, so the process server trimmed the copy and the agent completed
// its range: a hole in a replica later called consistent (found by review).
func TestCachedCopiesUnconfirmedEndTheAgentSession(t *testing.T) {
	dir := t.TempDir()
	lg := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tlsOf := testPKI(t, dir, "m1")
	mtAddr, psAddr := freeAddr(t), freeAddr(t)
	startProcessServer(t, tlsOf, filepath.Join(dir, "ps"), psAddr, mtAddr, lg)

	// The agent's side, spoken directly: the master target is not up yet.
	const size = 16 << 20
	c := dialAsAgent(t, tlsOf, psAddr, "m1", size)
	defer c.Close()
	seq := uint64(0)
	send := func(recs ...wire.Record) {
		t.Helper()
		b := wire.Batch{First: seq + 1}
		for _, r := range recs {
			seq++
			r.Seq = seq
			b.Records = append(b.Records, r)
		}
		b.Last = seq
		if err := c.WriteFrame(wire.TypeBatch, wire.AppendBatch(nil, &b), wire.CodecNone); err != nil {
			t.Fatal(err)
		}
	}
	data := func(n int, v byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = v + byte(i)
		}
		return b
	}
	// Initial copy, consistent; then a write whose epoch stays open (so
	// the master target's apply waits before the copy), the copy, a write.
	send(wire.Record{Op: wire.OpSyncStart})
	send(wire.Record{Op: wire.OpCopyZero, Length: size}, wire.Record{Op: wire.OpSyncDone})
	send(wire.Record{Op: wire.OpEpoch, Offset: uint64(time.Now().UnixNano())})
	send(wire.Record{Op: wire.OpWrite, Length: 64 << 10, Data: data(64<<10, 1)})
	send(wire.Record{Op: wire.OpCopy, Offset: 4 << 20, Length: 1 << 20, Data: data(1<<20, 2)})
	copySeq := seq
	send(wire.Record{Op: wire.OpWrite, Offset: 8 << 20, Length: 64 << 10, Data: data(64<<10, 3)})

	// Acks until the process server has everything cached.
	acks := make(chan wire.Ack, 64)
	ended := make(chan error, 1)
	go func() {
		for {
			typ, p, err := c.ReadFrame()
			if err != nil {
				ended <- err
				return
			}
			if typ == wire.TypeAck {
				if a, err := wire.DecodeAck(p); err == nil {
					acks <- a
				}
			}
		}
	}()
	timeout := time.After(10 * time.Second)
	for cached := uint64(0); cached < seq; {
		select {
		case a := <-acks:
			cached = a.Cached
		case err := <-ended:
			t.Fatalf("agent session ended before the master target came: %v", err)
		case <-timeout:
			t.Fatalf("process server cached %d of %d", cached, seq)
		}
	}

	// Now the master target: it receives the cached batches, relays the
	// copy in memory and cannot apply it (the epoch before it is open).
	mtTLS, err := config.MasterTargetTLS(tlsOf(pki.RoleMasterTarget, "mt1"))
	if err != nil {
		t.Fatal(err)
	}
	mt, err := mastertarget.New(mastertarget.Config{Name: "mt1", Listen: mtAddr, DataDir: filepath.Join(dir, "mt"), ServerTLS: mtTLS, Logger: lg})
	if err != nil {
		t.Fatal(err)
	}
	mtRole := start(t, mt.Run)
	deadline := time.Now().Add(15 * time.Second)
	for {
		st := mt.Status()
		if len(st.Machines) == 1 && st.Machines[0].ReceivedSeq == seq {
			if st.Machines[0].DurableSeq >= copySeq {
				t.Fatalf("setup: the copy (seq %d) is durable already: %+v", copySeq, st.Machines[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("master target did not receive everything: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	mtRole.stop(t)

	// The process server must end the agent's session so that it forgets
	// the copy and reads its range again.
	timeout = time.After(10 * time.Second)
	for {
		select {
		case <-acks:
		case <-ended:
			return
		case <-timeout:
			t.Fatalf("the agent's session is still open 10 s after the master target went away with copy seq %d unconfirmed", copySeq)
		}
	}
}

// An agent whose state is older than the process server's history of its
// machine (state directory lost or restored) numbers its writes below what
// the process server says it holds: taking that Welcome would count new
// writes as delivered. The agent refuses, and says why.
func TestAgentRefusesAProcessServerAheadOfIt(t *testing.T) {
	dir := t.TempDir()
	lg := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tlsOf := testPKI(t, dir, "m1")
	mtAddr, psAddr, agStatus := freeAddr(t), freeAddr(t), freeAddr(t)
	startProcessServer(t, tlsOf, filepath.Join(dir, "ps"), psAddr, mtAddr, lg)
	const size = 1 << 20
	disk := filepath.Join(dir, "disk0.img")
	if err := os.WriteFile(disk, make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	// The history: an earlier agent of m1 at boot 9 delivered a marker.
	c := dialAsAgent(t, tlsOf, psAddr, "m1", size)
	high := uint64(9) << 40
	b := wire.Batch{First: high, Last: high, Records: []wire.Record{{Seq: high, Op: wire.OpEpoch}}}
	if err := c.WriteFrame(wire.TypeBatch, wire.AppendBatch(nil, &b), wire.CodecNone); err != nil {
		t.Fatal(err)
	}
	for {
		typ, p, err := c.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if a, err := wire.DecodeAck(p); typ == wire.TypeAck && err == nil && a.Cached == high {
			break
		}
	}
	c.Close()

	// A fresh agent of m1 (boot 1).
	aTLS, err := config.AgentTLS(tlsOf(pki.RoleAgent, "m1"), psAddr)
	if err != nil {
		t.Fatal(err)
	}
	ag, err := agent.New(agent.Config{Machine: "m1", StateDir: filepath.Join(dir, "agent"), ProcessServer: psAddr,
		NBDListen: []string{"unix:" + filepath.Join(dir, "nbd.sock")}, StatusListen: agStatus, Disks: []agent.DiskConfig{{Name: "disk0", Path: disk}}, TLS: aTLS, Logger: lg})
	if err != nil {
		t.Fatal(err)
	}
	start(t, ag.Run)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := ag.Status()
		if st.Connected {
			t.Fatalf("the agent took a Welcome of seq %d, beyond its own numbering", high)
		}
		if strings.Contains(st.ConnError, "beyond this agent's newest seq") {
			t.Logf("refused: %s", st.ConnError)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no refusal after 10 s; status: connected %v, error %q", st.Connected, st.ConnError)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dialAsAgent opens an agent's session with the process server at psAddr
// for a machine of one disk of size bytes, and reads its Welcome.
func dialAsAgent(t *testing.T, tlsOf func(pki.Role, string) config.TLS, psAddr, machine string, size int64) *transport.Conn {
	t.Helper()
	aTLS, err := config.AgentTLS(tlsOf(pki.RoleAgent, machine), psAddr)
	if err != nil {
		t.Fatal(err)
	}
	var c *transport.Conn
	for i := 0; ; i++ {
		if c, err = transport.Dial(context.Background(), psAddr, aTLS); err == nil {
			break
		}
		if i > 200 {
			t.Fatal(err)
		}
		time.Sleep(25 * time.Millisecond)
	}
	if err := c.WriteJSON(wire.TypeHello, wire.Hello{Role: "agent", Machine: machine, Disks: []wire.DiskInfo{{Index: 0, Name: "disk0", Size: size}}}); err != nil {
		t.Fatal(err)
	}
	var w wire.Welcome
	if err := c.ReadJSON(wire.TypeWelcome, &w); err != nil {
		t.Fatal(err)
	}
	return c
}

// startProcessServer runs process server "ps1" until the test ends.
func startProcessServer(t *testing.T, tlsOf func(pki.Role, string) config.TLS, cacheDir, psAddr, mtAddr string, lg *slog.Logger) {
	t.Helper()
	psSrv, psCli, err := config.ProcessServerTLS(tlsOf(pki.RoleProcessServer, "ps1"), mtAddr)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := processserver.New(processserver.Config{Name: "ps1", Listen: psAddr, CacheDir: cacheDir, MasterTarget: mtAddr, ServerTLS: psSrv, ClientTLS: psCli, Logger: lg})
	if err != nil {
		t.Fatal(err)
	}
	start(t, ps.Run)
}
