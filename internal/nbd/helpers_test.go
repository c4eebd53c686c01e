package nbd

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"standby/internal/blockdev"
)

// memBackend is an in-memory Backend used as a reference model and for
// tests that need to observe or delay backend calls.
type memBackend struct {
	mu      sync.Mutex
	data    []byte
	flushes int
	// delay, if set, runs before every write (to hold requests in flight).
	delay func()
}

func newMemBackend(size int) *memBackend { return &memBackend{data: make([]byte, size)} }

func (m *memBackend) Size() int64 { return int64(len(m.data)) }

func (m *memBackend) ReadAt(_ context.Context, p []byte, off int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(p, m.data[off:])
	return nil
}

func (m *memBackend) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	if m.delay != nil {
		m.delay()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data[off:], p)
	return nil
}

func (m *memBackend) Flush(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushes++
	return nil
}

func (m *memBackend) Trim(_ context.Context, off, n int64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}

func (m *memBackend) WriteZeroes(_ context.Context, off, n int64, _, _ bool) error {
	return m.Trim(context.Background(), off, n, false)
}

func (m *memBackend) snapshot() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.data)
}

// fileExport creates a sparse image of size bytes served by a DiskBackend.
func fileExport(t testing.TB, name string, size int64) (*Export, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), name+".img")
	if err := blockdev.Create(p, size); err != nil {
		t.Fatal(err)
	}
	d, err := blockdev.Open(p, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return &Export{Name: name, Description: "test disk " + name, Backend: DiskBackend{Disk: d}}, p
}

type testServer struct {
	sock    string // unix socket path
	tcpAddr string // host:port
	cancel  context.CancelFunc
	done    chan error
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startServer serves exports on a fresh unix socket and a loopback TCP port
// until the test ends.
func startServer(t testing.TB, exports ...*Export) *testServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbdtest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "nbd.sock")
	uln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	tln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Logger: testLogger(t), Exports: func() []*Export { return exports }}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{sock: sock, tcpAddr: tln.Addr().String(), cancel: cancel, done: make(chan error, 2)}
	go func() { ts.done <- srv.Serve(ctx, uln) }()
	go func() { ts.done <- srv.Serve(ctx, tln) }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

func (ts *testServer) stop(t testing.TB) {
	t.Helper()
	if ts.cancel == nil {
		return
	}
	ts.cancel()
	ts.cancel = nil
	for range 2 {
		select {
		case err := <-ts.done:
			if err != nil {
				t.Errorf("Serve returned %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Serve did not return after cancel")
		}
	}
}

func (ts *testServer) unixURI(export string) string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, ts.sock)
}

func (ts *testServer) tcpURI(export string) string {
	return fmt.Sprintf("nbd://%s/%s", ts.tcpAddr, export)
}

func dialT(t testing.TB, network, addr, export string, o dialOptions) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dial(ctx, network, addr, export, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// requireTool fails the test when an external client is missing: these
// tests exist to prove interoperability, so skipping would hide a gap.
func requireTool(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("%s is required for this test (apt-get install -y qemu-utils libnbd-bin nbdfuse fuse3): %v", n, err)
		}
	}
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// firstDiff describes where two byte slices differ, for readable failures.
func firstDiff(a, b []byte) string {
	if len(a) != len(b) {
		return fmt.Sprintf("lengths %d and %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return fmt.Sprintf("first difference at byte %d: %#x vs %#x", i, a[i], b[i])
		}
	}
	return "equal"
}

// staller holds the first backend write after arm in the backend until
// release: a request stuck there (a write waiting for room in the agent's
// queue).
type staller struct {
	armed   atomic.Bool
	entered chan struct{} // signalled when the stuck write arrives
	release chan struct{}
}

// stallWrites installs a staller on mem, armed already if armed.
func stallWrites(mem *memBackend, armed bool) *staller {
	s := &staller{entered: make(chan struct{}, 1), release: make(chan struct{})}
	s.armed.Store(armed)
	mem.delay = func() {
		if s.armed.CompareAndSwap(true, false) {
			s.entered <- struct{}{}
			<-s.release
		}
	}
	return s
}

// negotiateBytes drives option haggling over a pipe with the given client
// bytes and returns what the negotiator returned. With hangUp the client
// closes its end once in is written, so input that ends mid-haggling ends
// in EOF instead of the deadline (replies then fail to be written).
func negotiateBytes(exports []*Export, in []byte, hangUp bool, within time.Duration) (*session, error) {
	srvEnd, cliEnd := net.Pipe()
	defer cliEnd.Close()
	defer srvEnd.Close()
	deadline := time.Now().Add(within)
	srvEnd.SetDeadline(deadline)
	cliEnd.SetDeadline(deadline)
	go io.Copy(io.Discard, cliEnd)
	go func() {
		cliEnd.Write(in)
		if hangUp {
			cliEnd.Close()
		}
	}()
	n := negotiator{
		br:      bufio.NewReader(srvEnd),
		bw:      bufio.NewWriter(srvEnd),
		exports: func() []*Export { return exports },
		log:     slog.New(slog.DiscardHandler),
	}
	return n.run()
}
