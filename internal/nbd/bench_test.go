package nbd

import (
	"math/rand/v2"
	"testing"
)

// Benchmarks run the Go client against a file-backed export over a unix
// socket, so they measure the protocol path plus page-cache I/O.

const benchSize = 256 << 20

func benchClient(b *testing.B) *Client {
	exp, _ := fileExport(b, "bench", benchSize)
	ts := startServer(b, exp)
	return dialT(b, "unix", ts.sock, "bench", dialOptions{})
}

func BenchmarkWrite4K(b *testing.B) {
	c := benchClient(b)
	buf := randBytes(rand.New(rand.NewPCG(1, 2)), 4096)
	r := rand.New(rand.NewPCG(3, 4))
	b.SetBytes(4096)
	b.ReportAllocs()
	for b.Loop() {
		if err := c.WriteAt(buf, r.Int64N(benchSize/4096)*4096, false); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWrite4KParallel keeps many requests in flight on one connection,
// like a guest at a high queue depth.
func BenchmarkWrite4KParallel(b *testing.B) {
	c := benchClient(b)
	buf := randBytes(rand.New(rand.NewPCG(1, 2)), 4096)
	b.SetBytes(4096)
	b.SetParallelism(16)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(rand.Uint64(), 4))
		for pb.Next() {
			if err := c.WriteAt(buf, r.Int64N(benchSize/4096)*4096, false); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkRead4K(b *testing.B) {
	c := benchClient(b)
	buf := make([]byte, 4096)
	r := rand.New(rand.NewPCG(3, 4))
	b.SetBytes(4096)
	b.ReportAllocs()
	for b.Loop() {
		if err := c.ReadAt(buf, r.Int64N(benchSize/4096)*4096); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRead1M(b *testing.B) {
	c := benchClient(b)
	if err := c.WriteAt(randBytes(rand.New(rand.NewPCG(1, 2)), 16<<20), 0, false); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	b.SetBytes(1 << 20)
	b.ReportAllocs()
	i := int64(0)
	for b.Loop() {
		if err := c.ReadAt(buf, (i%16)<<20); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkWrite1M(b *testing.B) {
	c := benchClient(b)
	buf := randBytes(rand.New(rand.NewPCG(1, 2)), 1<<20)
	b.SetBytes(1 << 20)
	b.ReportAllocs()
	i := int64(0)
	for b.Loop() {
		if err := c.WriteAt(buf, (i%64)<<20, false); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
