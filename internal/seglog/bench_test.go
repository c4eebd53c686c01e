package seglog

import (
	"context"
	"fmt"
	"testing"
)

func BenchmarkAppend1MiB(b *testing.B) {
	for _, sync := range []bool{false, true} {
		b.Run(fmt.Sprintf("sync=%v", sync), func(b *testing.B) {
			benchAppend(b, 1<<20, sync)
		})
	}
}

func BenchmarkAppend8MiB(b *testing.B) {
	for _, sync := range []bool{false, true} {
		b.Run(fmt.Sprintf("sync=%v", sync), func(b *testing.B) {
			benchAppend(b, 8<<20, sync)
		})
	}
}

func benchAppend(b *testing.B, size int, sync bool) {
	l := mustOpen(b, b.TempDir(), Options{Logger: discardLogger()})
	defer l.Close()
	data := payload(1, size)
	ctx := context.Background()
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := range b.N {
		seq := uint64(i + 1)
		if err := l.Append(ctx, Entry{First: seq, Last: seq, Data: data}, sync); err != nil {
			b.Fatal(err)
		}
		// Keep about 512 MiB on disk, as a consumer acknowledging behind
		// the writer would; trimming is part of the steady state.
		if keep := uint64(512 << 20 / size); seq%64 == 0 && seq > keep {
			if err := l.TrimThrough(seq - keep); err != nil {
				b.Fatal(err)
			}
		}
	}
	if !sync {
		// Count the writeback too, or the page cache flatters the number.
		if err := l.Sync(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReader reads 1 MiB entries, checksums included, from a log whose
// data is in the page cache: the cost a forwarder following the writer pays.
func BenchmarkReader(b *testing.B) {
	const size, count = 1 << 20, 256
	l := mustOpen(b, b.TempDir(), Options{Logger: discardLogger()})
	defer l.Close()
	data := payload(1, size)
	for i := range count {
		if err := l.Append(context.Background(), Entry{First: uint64(i), Last: uint64(i), Data: data}, false); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	b.SetBytes(size)
	b.ResetTimer()
	r := l.NewReader(0)
	for i := range b.N {
		if i%count == 0 {
			r.Close()
			r = l.NewReader(0)
		}
		e, err := r.Next(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if len(e.Data) != size {
			b.Fatalf("entry of %d bytes", len(e.Data))
		}
	}
	r.Close()
}

// BenchmarkReaderFollowing has a reader consume 1 MiB entries as a writer
// appends them (sync=false), measuring the pair's throughput.
func BenchmarkReaderFollowing(b *testing.B) {
	const size = 1 << 20
	l := mustOpen(b, b.TempDir(), Options{Logger: discardLogger(), MaxBytes: 256 << 20})
	defer l.Close()
	data := payload(1, size)
	ctx := context.Background()
	b.SetBytes(size)
	b.ResetTimer()
	errc := make(chan error, 1)
	go func() {
		for i := range b.N {
			if err := l.Append(ctx, Entry{First: uint64(i), Last: uint64(i), Data: data}, false); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	r := l.NewReader(0)
	defer r.Close()
	for i := range b.N {
		e, err := r.Next(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if i%16 == 15 {
			if err := l.TrimThrough(e.Last); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkOpen measures recovery's scan of 256 MiB of 1 MiB entries with
// the data in the page cache: all checksums, and headers only (TrustSealed).
func BenchmarkOpen(b *testing.B) {
	const size, count = 1 << 20, 256
	dir := b.TempDir()
	l := mustOpen(b, dir, Options{Logger: discardLogger()})
	data := payload(1, size)
	for i := range count {
		if err := l.Append(context.Background(), Entry{First: uint64(i), Last: uint64(i), Data: data}, false); err != nil {
			b.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	for _, trust := range []bool{false, true} {
		b.Run(fmt.Sprintf("trustSealed=%v", trust), func(b *testing.B) {
			b.SetBytes(size * count)
			for range b.N {
				l, err := Open(dir, Options{Logger: discardLogger(), TrustSealed: trust})
				if err != nil {
					b.Fatal(err)
				}
				if err := l.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAppendTrimKeepingUp is the steady state of a cache whose
// consumer keeps up: 1 MiB entries appended with fdatasync and trimmed
// right away, so segments roll and are retired (reused as spares) as
// they fill.
func BenchmarkAppendTrimKeepingUp(b *testing.B) {
	l := mustOpen(b, b.TempDir(), Options{Logger: discardLogger()})
	defer l.Close()
	data := make([]byte, 1<<20)
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		s := uint64(i + 1)
		if err := l.Append(context.Background(), Entry{First: s, Last: s, Data: data}, true); err != nil {
			b.Fatal(err)
		}
		if err := l.TrimThrough(s); err != nil {
			b.Fatal(err)
		}
	}
}
