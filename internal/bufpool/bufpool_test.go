package bufpool

import (
	"sync"
	"testing"
	"unsafe"
)

func TestGetSizes(t *testing.T) {
	var p Pool
	for _, tc := range []struct{ n, want int }{
		{0, 4096}, {1, 4096}, {4096, 4096}, {4097, 8192}, {65536, 65536},
		{1<<20 + 1, 2 << 20}, {MaxSize, MaxSize}, {MaxSize + 1, MaxSize + 1},
	} {
		b := p.Get(tc.n)
		if len(*b) != tc.want || cap(*b) != tc.want {
			t.Errorf("Get(%d): len %d cap %d, want %d", tc.n, len(*b), cap(*b), tc.want)
		}
		if tc.n <= MaxSize && uintptr(unsafe.Pointer(&(*b)[0]))%Align != 0 {
			t.Errorf("Get(%d): buffer not aligned to %d", tc.n, Align)
		}
		p.Put(b)
	}
}

func TestReuse(t *testing.T) {
	var p Pool
	b := p.Get(5000)
	(*b)[0] = 42
	*b = (*b)[:10] // a caller may reslice; Put restores the class size
	p.Put(b)
	// sync.Pool may drop items at any GC, so reuse is likely, not certain:
	// what must hold is that whatever comes back has the class size.
	for range 100 {
		c := p.Get(6000)
		if len(*c) != 8192 {
			t.Fatalf("Get(6000) after Put: len %d, want 8192", len(*c))
		}
		p.Put(c)
	}
}

func TestForeignBuffersDropped(t *testing.T) {
	var p Pool
	odd := make([]byte, 5000)
	p.Put(&odd) // not a class size: must not come back from Get
	p.Put(nil)
	for range 100 {
		b := p.Get(5000)
		if cap(*b) != 8192 {
			t.Fatalf("Get(5000) returned a %d-byte buffer", cap(*b))
		}
	}
}

func TestConcurrent(t *testing.T) {
	var p Pool
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				n := 1 + (i*7919+g*104729)%(256<<10)
				b := p.Get(n)
				buf := (*b)[:n]
				for j := range buf {
					buf[j] = byte(g)
				}
				for j := range buf {
					if buf[j] != byte(g) {
						t.Errorf("buffer shared between goroutines")
						return
					}
				}
				p.Put(b)
			}
		})
	}
	wg.Wait()
}

func BenchmarkGetPut4K(b *testing.B) {
	var p Pool
	b.ReportAllocs()
	for b.Loop() {
		p.Put(p.Get(4096))
	}
}

func TestBoundedKeepsAtMostItsBound(t *testing.T) {
	p := NewBounded(64 << 10)
	var bufs [][]byte
	for range 8 {
		bufs = append(bufs, p.Get(16<<10))
	}
	for _, b := range bufs {
		p.Put(b)
	}
	if got := p.spare.Load(); got != 64<<10 {
		t.Fatalf("spare bytes %d after putting back 128 KiB, want the 64 KiB bound", got)
	}
	// Spares come back for requests of their class, not of others.
	b := p.Get(10 << 10)
	if cap(b) != 16<<10 || len(b) != 10<<10 {
		t.Fatalf("Get(10 KiB): len %d cap %d", len(b), cap(b))
	}
	if got := p.spare.Load(); got != 48<<10 {
		t.Fatalf("spare bytes %d after taking one, want 48 KiB", got)
	}
	if c := p.Get(100); cap(c) != 4096 || uintptr(unsafe.Pointer(&c[0]))%Align != 0 {
		t.Fatalf("Get(100) from an empty class: cap %d", cap(c))
	}
	odd := make([]byte, 5000)
	p.Put(odd) // not a class size
	p.Put(nil)
	if got := p.spare.Load(); got != 48<<10 {
		t.Fatalf("foreign buffers were kept: spare %d", got)
	}
	var nilPool *Bounded
	nilPool.Put(b)
	if len(nilPool.Get(0)) != 0 || len(p.Get(0)) != 0 {
		t.Fatal("Get(0) must lend an empty buffer")
	}
	if len(nilPool.Get(10)) != 10 {
		t.Fatal("a nil pool must still lend buffers")
	}
}

// TestBoundedClasses: every request gets an aligned buffer of a class
// size, at most a quarter larger than asked above 16 KiB (a frame of one
// 4 MiB copy and its headers takes 5 MiB, not 8), classes are ordered and
// distinct, and a buffer comes back to the class it was lent from.
func TestBoundedClasses(t *testing.T) {
	p := NewBounded(1 << 30)
	prevIdx, prevSize := -1, 0
	for _, n := range []int{1, 4096, 4097, 8192, 16 << 10, 16<<10 + 1, 20 << 10, 20<<10 + 1, 32 << 10, 32<<10 + 1,
		1 << 20, 1<<20 + 1, 4<<20 + 44, 8 << 20, 8<<20 + 68, 31 << 20, MaxSize} {
		idx, size := boundedClass(n)
		if size < n || size%Align != 0 || (n > 16<<10 && size > n+n/4) {
			t.Fatalf("class of %d bytes: size %d", n, size)
		}
		if idx < prevIdx || (idx == prevIdx) != (size == prevSize) || idx >= numBounded {
			t.Fatalf("class of %d bytes: index %d size %d after index %d size %d", n, idx, size, prevIdx, prevSize)
		}
		prevIdx, prevSize = idx, size
		b := p.Get(n)
		if len(b) != n || cap(b) != size || uintptr(unsafe.Pointer(&b[0]))%Align != 0 {
			t.Fatalf("Get(%d): len %d cap %d", n, len(b), cap(b))
		}
		b[0] = 1
		p.Put(b)
		if again := p.Get(n); &again[0] != &b[0] {
			t.Fatalf("Get(%d) after Put: a new buffer, not the spare", n)
		}
	}
	if c, size := boundedClass(4<<20 + 44); size != 5<<20 {
		t.Fatalf("a 4 MiB copy's frame: class %d of %d bytes, want 5 MiB", c, size)
	}
}

// TestBoundedLendsASpareUpToAnOctaveLarger: a request whose class is empty
// takes a spare of a larger class within twice its size rather than a
// fresh buffer, and never one beyond that.
func TestBoundedLendsASpareUpToAnOctaveLarger(t *testing.T) {
	p := NewBounded(1 << 30)
	five := p.Get(5 << 20)
	p.Put(five)
	if b := p.Get(2 << 20); &b[:1][0] == &five[:1][0] {
		t.Fatal("a 2 MiB request took a 5 MiB spare")
	}
	b := p.Get(3 << 20)
	if len(b) != 3<<20 || cap(b) != 5<<20 || &b[0] != &five[:1][0] {
		t.Fatalf("a 3 MiB request with a 5 MiB spare: len %d cap %d, not the spare", len(b), cap(b))
	}
	p.Put(b) // back to the 5 MiB class, by its capacity
	if again := p.Get(5 << 20); &again[0] != &five[:1][0] {
		t.Fatal("the spare did not return to its own class")
	}
	small := p.Get(4096)
	p.Put(small)
	if b := p.Get(4096 / 2); &b[0] != &small[0] {
		t.Fatal("a small request did not take its class's spare")
	}
	sixteen := p.Get(16 << 10)
	p.Put(sixteen)
	if b := p.Get(4096); &b[0] == &sixteen[0] {
		t.Fatal("a 4 KiB request took a 16 KiB spare (more than an octave)")
	}
}
