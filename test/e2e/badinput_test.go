package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"standby/internal/config"
	"standby/internal/pki"
	"standby/internal/transport"
	"standby/internal/wire"
)

// rogue opens a session as a real component would (valid certificate,
// proper hello) and then misbehaves.
func rogue(t *testing.T, c *cluster, toMT bool) *transport.Conn {
	t.Helper()
	var tc config.TLS
	addr := c.psAddr
	role, name := pki.RoleAgent, c.machine
	if toMT {
		addr, role, name = c.mtAddr, pki.RoleProcessServer, "ps1"
	}
	f := c.pki[pki.Identity{Role: role, Name: name}]
	tc = config.TLS{CA: f.CA, Cert: f.Cert, Key: f.Key}
	var cfgErr error
	cfg, cfgErr := config.AgentTLS(tc, addr)
	if toMT {
		_, cfg, cfgErr = config.ProcessServerTLS(tc, addr)
	}
	if cfgErr != nil {
		t.Fatal(cfgErr)
	}
	conn, err := transport.Dial(context.Background(), addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := wire.Hello{Role: string(role), Machine: c.machine, Disks: []wire.DiskInfo{{Index: 0, Name: "disk0", Size: 32 << 20}}}
	if err := conn.WriteJSON(wire.TypeHello, h); err != nil {
		t.Fatal(err)
	}
	var w wire.Welcome
	if err := conn.ReadJSON(wire.TypeWelcome, &w); err != nil {
		t.Fatalf("rogue handshake: %v", err)
	}
	return conn
}

// frame encodes one batch frame.
func frame(t *testing.T, b wire.Batch) []byte {
	var buf bytes.Buffer
	if err := wire.NewConn(&buf).WriteFrame(wire.TypeBatch, wire.AppendBatch(nil, &b), wire.CodecNone); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// expectRefusal reads until the peer's error frame and checks its text.
func expectRefusal(t *testing.T, conn *transport.Conn, want ...string) {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	for {
		typ, p, err := conn.ReadFrame()
		if err != nil {
			t.Fatalf("expected an error frame mentioning %q, connection ended with %v", want, err)
		}
		if typ != wire.TypeError {
			continue
		}
		msg := string(p)
		for _, w := range want {
			if !strings.Contains(msg, w) {
				t.Fatalf("refusal %s does not mention %q", msg, w)
			}
		}
		t.Logf("refused as expected: %s", msg)
		return
	}
}

// TestCorruptAndTruncatedFramesRefused sends bad frames to the process
// server and the master target with valid certificates: each is refused
// with a clear error, and replication of the real machine loses nothing.
func TestCorruptAndTruncatedFramesRefused(t *testing.T) {
	const size = 32 << 20
	c := newCluster(t, []int64{size})
	fillRandom(t, c.disks[0], 4, 8)
	c.startAll()
	w := startWriter(t, c, 1, size, 11)
	time.Sleep(time.Second)

	good := wire.Batch{First: 1 << 62, Last: 1 << 62, Records: []wire.Record{{Seq: 1 << 62, Op: wire.OpWrite, Offset: 0, Length: 4, Data: []byte("evil")}}}
	for _, toMT := range []bool{false, true} {
		// A flipped payload byte: checksum mismatch.
		conn := rogue(t, c, toMT)
		f := frame(t, good)
		f[len(f)-2] ^= 0xff
		if _, err := conn.WriteRaw(f); err != nil {
			t.Fatal(err)
		}
		expectRefusal(t, conn, "corrupt", "checksum")
		conn.Close()

		// A record past the end of the disk.
		conn = rogue(t, c, toMT)
		bad := wire.Batch{First: 1 << 62, Last: 1 << 62, Records: []wire.Record{{Seq: 1 << 62, Op: wire.OpZero, Offset: size - 512, Length: 4096}}}
		if _, err := conn.WriteRaw(frame(t, bad)); err != nil {
			t.Fatal(err)
		}
		expectRefusal(t, conn, "beyond disk")
		conn.Close()

		// Garbage that is not a standby frame at all.
		conn = rogue(t, c, toMT)
		if _, err := conn.WriteRaw([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		expectRefusal(t, conn, "corrupt")
		conn.Close()

		// A frame cut short by the connection closing.
		conn = rogue(t, c, toMT)
		f = frame(t, good)
		if _, err := conn.WriteRaw(f[:len(f)/2]); err != nil {
			t.Fatal(err)
		}
		conn.Close()
	}
	waitFor(t, "truncation logged", 10*time.Second, func() bool {
		return logContains(c.ps.log, "truncated") && logContains(c.mt.log, "truncated")
	})
	time.Sleep(time.Second)
	w.finish()
	c.waitIdentical(2 * time.Minute)
	// The evil write never reached the replica.
	b, err := os.ReadFile(c.replica(0))
	if err != nil {
		t.Fatal(err)
	}
	src, _ := os.ReadFile(c.disks[0])
	if !bytes.Equal(b[:4], src[:4]) {
		t.Fatal("a refused record changed the replica")
	}
}

// TestReplicaOfWrongSizeRefused: a replica that does not match the source
// disk is refused with an error naming both sizes; the process server keeps
// the changes meanwhile, and once the operator removes the wrong file the
// replica converges with nothing lost.
func TestReplicaOfWrongSizeRefused(t *testing.T) {
	const size = 32 << 20
	c := newCluster(t, []int64{size})
	wrong := c.replica(0)
	if err := os.MkdirAll(filepath.Dir(wrong), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wrong, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(wrong, size/2); err != nil {
		t.Fatal(err)
	}
	fillRandom(t, c.disks[0], 5, 8)
	c.startAll()
	w := startWriter(t, c, 1, size, 12)
	waitFor(t, "the process server to report the refusal", 30*time.Second, func() bool {
		st, err := c.psStatusNow()
		return err == nil && len(st.Machines) == 1 && strings.Contains(st.Machines[0].MTError, "wrong size")
	})
	st, _ := c.psStatusNow()
	t.Logf("process server reports: %s", st.Machines[0].MTError)
	if !strings.Contains(st.Machines[0].MTError, "16777216") || !strings.Contains(st.Machines[0].MTError, "33554432") {
		t.Errorf("refusal should name both sizes: %s", st.Machines[0].MTError)
	}
	if fi, _ := os.Stat(wrong); fi.Size() != size/2 {
		t.Fatalf("the wrong replica was modified (size %d)", fi.Size())
	}
	time.Sleep(time.Second)
	w.finish()
	// The operator removes the wrong replica; the master target creates a
	// right one on the next session.
	c.mt.stop()
	if err := os.Remove(wrong); err != nil {
		t.Fatal(err)
	}
	c.mt.start()
	c.waitIdentical(2 * time.Minute)
}

// TestUnknownCertificateRefused: an agent whose certificate comes from
// another CA is refused at the TLS handshake, and both sides say why.
func TestUnknownCertificateRefused(t *testing.T) {
	c := newCluster(t, []int64{8 << 20})
	c.mt.start()
	c.ps.start()
	other, err := pki.DevPKI(filepath.Join(t.TempDir(), "other-pki"), []string{"127.0.0.1"}, pki.Identity{Role: pki.RoleAgent, Name: c.machine})
	if err != nil {
		t.Fatal(err)
	}
	f := other[pki.Identity{Role: pki.RoleAgent, Name: c.machine}]
	// Keep our CA (so the agent trusts the process server) but present a
	// certificate the process server's CA never issued.
	ours := c.pki[pki.Identity{Role: pki.RoleAgent, Name: c.machine}]
	if _, err := pki.ClientConfig(pki.Files{CA: ours.CA, Cert: f.Cert, Key: f.Key}, "127.0.0.1", pki.RoleProcessServer); err == nil {
		t.Log("note: client config accepted a foreign certificate locally; the server must refuse it")
	} else {
		t.Logf("agent refuses to start with a certificate from another CA: %v", err)
	}
	// Run a whole agent with the foreign CA + certificate: it distrusts the
	// process server and the process server distrusts it.
	args := append([]string(nil), c.ag.args...)
	for i := range args {
		switch args[i] {
		case "--ca":
			args[i+1] = f.CA
		case "--cert":
			args[i+1] = f.Cert
		case "--key":
			args[i+1] = f.Key
		}
	}
	c.ag.args = args
	c.ag.start()
	waitFor(t, "both sides to log the certificate refusal", 30*time.Second, func() bool {
		return logContains(c.ag.log, "certificate") && logContains(c.ps.log, "certificate")
	})
	ag, _ := os.ReadFile(c.ag.log)
	ps, _ := os.ReadFile(c.ps.log)
	t.Logf("agent: %s", lastLineWith(ag, "certificate"))
	t.Logf("process server: %s", lastLineWith(ps, "certificate"))
	if !strings.Contains(string(ag)+string(ps), "unknown authority") {
		t.Error("neither side says the certificate is from an unknown authority")
	}
	if st, err := c.psStatusNow(); err != nil || len(st.Machines) != 0 {
		t.Fatalf("a machine was registered from an unauthenticated peer: %+v %v", st, err)
	}
	if _, err := os.Stat(filepath.Join(c.dir, "secondary", c.machine)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the master target created a replica for an unauthenticated agent")
	}
}

func lastLineWith(b []byte, s string) string {
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return lines[i]
		}
	}
	return ""
}

// The status endpoints and NBD exports have no TLS or login: a role asked
// to open one beyond this host refuses to start, and says why.
func TestPlainEndpointsStayOnThisHost(t *testing.T) {
	c := newCluster(t, []int64{8 << 20})
	with := func(args []string, flag, value string) []string {
		out := append([]string(nil), args...)
		for i := range out {
			if out[i] == flag {
				out[i+1] = value
				return out
			}
		}
		t.Fatalf("%s not among %v", flag, args)
		return nil
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"master target status on all interfaces", with(c.mt.args, "--status", "0.0.0.0:0"), "status endpoint"},
		{"process server status on all interfaces", with(c.ps.args, "--status", ":0"), "status endpoint"},
		{"agent status on all interfaces", with(c.ag.args, "--status", "[::]:0"), "status endpoint"},
		{"agent NBD export on all interfaces", with(c.ag.args, "--nbd", "tcp:0.0.0.0:0"), "NBD export"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, standbyBin, tc.args...).CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("still running after 30 s: it started instead of refusing\n%s", out)
			}
			if err == nil {
				t.Fatalf("exited 0\n%s", out)
			}
			if !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), "this host only") {
				t.Fatalf("unclear refusal:\n%s", out)
			}
			t.Logf("refused: %s", lastLineWith(out, "this host only"))
		})
	}
}
