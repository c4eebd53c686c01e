package netsim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// testPrefixPattern matches the namespaces of ForTest nets: "sbt<pid>-<hex>".
// The pid lets a later run recognise namespaces whose creator is dead.
var testPrefixPattern = regexp.MustCompile(`^sbt([0-9]+)-[0-9a-f]{6}[-.]`)

// Available reports whether this process can build a Net: nil if so,
// otherwise an error that says what is missing.
func Available() error {
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("netsim needs root (network namespaces, veth, packet sockets); running as uid %d", uid)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("netsim needs iproute2's ip command: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A trial run of everything a link needs, in a namespace of its own.
	ns := fmt.Sprintf("sbtprobe%d-%s", os.Getpid(), randomHex(3))
	if err := addNamespace(ctx, ns); err != nil {
		return fmt.Errorf("netsim cannot create a network namespace: %w", err)
	}
	defer deleteNamespace(context.WithoutCancel(ctx), ns)
	if err := run(ctx, "ip", "-n", ns, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"); err != nil {
		return fmt.Errorf("netsim cannot create a veth pair (kernel without CONFIG_VETH?): %w", err)
	}
	if err := run(ctx, "ip", "-n", ns, "link", "set", "probe1", "up"); err != nil {
		return fmt.Errorf("netsim cannot bring up a veth interface: %w", err)
	}
	port, err := openPort(nsDir+"/"+ns, "probe1")
	if err != nil {
		return fmt.Errorf("netsim cannot open a packet socket in a namespace: %w", err)
	}
	port.Close()
	return nil
}

// ForTest builds a Net for t and removes it when t ends. When netsim is
// not available it fails t under CI (the environment variable CI is set)
// and skips it elsewhere, so a developer without root can still run the
// other tests. It first removes namespaces that earlier test processes,
// since killed, left behind.
func ForTest(t testing.TB) *Net {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("netsim unavailable: %v", err)
		}
		t.Skipf("netsim unavailable: %v", err)
	}
	sweepStale(t)
	n, err := New(t.Context(), fmt.Sprintf("sbt%d-%s", os.Getpid(), randomHex(3)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("netsim clean-up: %v", err)
		}
	})
	return n
}

// sweepStale deletes ForTest namespaces whose creating process is gone.
func sweepStale(t testing.TB) {
	entries, err := os.ReadDir(nsDir)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	for _, e := range entries {
		m := testPrefixPattern.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		if err := deleteNamespace(ctx, e.Name()); err != nil {
			t.Logf("netsim: removing stale namespace %s: %v", e.Name(), err)
		} else {
			t.Logf("netsim: removed stale namespace %s (its test process %d is gone)", e.Name(), pid)
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
