package localnet

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:80": true, "127.3.2.1:1": true, "[::1]:80": true, "localhost:9": true,
		":80": false, "0.0.0.0:80": false, "[::]:80": false, "10.0.0.1:80": false,
		"example.com:80": false, "127.0.0.1": false, "": false,
	} {
		if got := IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestListenRefusesRemoteAddresses(t *testing.T) {
	for _, addr := range []string{":0", "0.0.0.0:0", "[::]:0", "tcp:0.0.0.0:0", "192.0.2.1:0"} {
		ln, err := Listen("status endpoint", addr, 0o600)
		if err == nil {
			ln.Close()
			t.Fatalf("Listen(%q) accepted a non-loopback address", addr)
		}
		if !strings.Contains(err.Error(), "status endpoint") || !strings.Contains(err.Error(), "this host only") {
			t.Errorf("Listen(%q): unclear error %q", addr, err)
		}
	}
}

func TestListenLoopbackAndUnix(t *testing.T) {
	ln, err := Listen("x", "tcp:127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()

	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	for range 2 { // the second finds the first's socket file and replaces it
		ln, err := Listen("x", "unix:"+path, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("socket mode %v, want 0600", fi.Mode().Perm())
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		// Closing a unix listener removes its file; keep it, as a killed
		// process would.
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close()
	}

	// A regular file in the way is not a stale socket: never deleted.
	file := filepath.Join(dir, "data")
	if err := os.WriteFile(file, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen("x", "unix:"+file, 0o600); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("listening over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Fatal("the regular file was touched")
	}
}
