package seglog

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// payload returns size bytes determined by first, so a reader can check an
// entry's content from its First and length alone.
func payload(first uint64, size int) []byte {
	b := make([]byte, size)
	rng := rand.New(rand.NewPCG(first, uint64(size)))
	for i := 0; i+8 <= size; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	for i := size &^ 7; i < size; i++ {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func checkPayload(t testing.TB, e Entry) {
	t.Helper()
	if !bytes.Equal(e.Data, payload(e.First, len(e.Data))) {
		t.Fatalf("entry [%d,%d] (%d bytes): payload differs from what was appended", e.First, e.Last, len(e.Data))
	}
}

// genEntries makes n entries with gaps between them and sizes up to maxSize.
func genEntries(rng *rand.Rand, start uint64, n, maxSize int) []Entry {
	es := make([]Entry, n)
	seq := start
	for i := range es {
		seq += uint64(rng.IntN(3)) // gaps are allowed
		first := seq
		last := first + uint64(rng.IntN(4))
		es[i] = Entry{First: first, Last: last, Data: payload(first, rng.IntN(maxSize+1))}
		seq = last + 1
	}
	return es
}

func mustOpen(t testing.TB, dir string, opts Options) *Log {
	t.Helper()
	opts.Direct = opts.Direct || os.Getenv(directEnv) != ""
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	l, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// recordingHandler keeps log records so tests can assert on warnings.
type recordingHandler struct {
	mu   *sync.Mutex
	recs *[]slog.Record
}

func newRecordingLogger() (*slog.Logger, func() []slog.Record) {
	h := recordingHandler{mu: new(sync.Mutex), recs: new([]slog.Record)}
	return slog.New(h), func() []slog.Record {
		h.mu.Lock()
		defer h.mu.Unlock()
		return append([]slog.Record(nil), *h.recs...)
	}
}

func (h recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.recs = append(*h.recs, r.Clone())
	return nil
}
func (h recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordingHandler) WithGroup(string) slog.Handler      { return h }

func recordAttrs(r slog.Record) map[string]any {
	m := map[string]any{}
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.Any()
		return true
	})
	return m
}

func appendAll(t testing.TB, l *Log, es []Entry, sync bool) {
	t.Helper()
	for _, e := range es {
		if err := l.Append(context.Background(), e, sync); err != nil {
			t.Fatalf("Append [%d,%d]: %v", e.First, e.Last, err)
		}
	}
}

// readN reads n entries, copying them, with a timeout so a bug cannot hang
// the test run.
func readN(t testing.TB, r *Reader, n int) []Entry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := make([]Entry, 0, n)
	for range n {
		e, err := r.Next(ctx)
		if err != nil {
			t.Fatalf("Next after %d entries: %v", len(out), err)
		}
		e.Data = bytes.Clone(e.Data)
		out = append(out, e)
	}
	return out
}

// readAll reads every entry of the log in dir by opening it.
func readAllEntries(t testing.TB, l *Log) []Entry {
	t.Helper()
	n := int(l.Stats().Entries)
	r := l.NewReader(0)
	defer r.Close()
	return readN(t, r, n)
}

func sameEntries(t testing.TB, got, want []Entry) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.First != w.First || g.Last != w.Last || !bytes.Equal(g.Data, w.Data) {
			t.Fatalf("entry %d: got [%d,%d] %d bytes, want [%d,%d] %d bytes",
				i, g.First, g.Last, len(g.Data), w.First, w.Last, len(w.Data))
		}
	}
}

func segmentFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	return m // Glob sorts, and the names are zero-padded
}

func dirBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var n int64
	for _, p := range segmentFiles(t, dir) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

func copyDir(t testing.TB, src string) string {
	t.Helper()
	dst := t.TempDir()
	for _, p := range segmentFiles(t, src) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(p)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// filesHold reports whether the segment files in dir hold n bytes: with
// Options.Direct the active segment ends in zeros up to a 4 KiB boundary.
func filesHold(t testing.TB, dir string, n int64) bool {
	t.Helper()
	got := dirBytes(t, dir)
	if os.Getenv(directEnv) != "" {
		return got >= n && got-n < 4096
	}
	return got == n
}
