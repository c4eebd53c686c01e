// Package bufpool lends byte buffers in size classes (powers of two for
// Pool, quarter octaves for Bounded), so that a 4 KiB write does not pin a
// 32 MiB buffer and a steady workload allocates nothing.
//
// On the development VM (a PVM guest whose freed memory goes back to the
// host) the first touch of newly allocated memory is a fault in the host:
// a fresh buffer per captured write cost the agent more CPU than writing
// the data to disk (docs/benchmarks.md). Recycled buffers are already
// faulted in.
package bufpool

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"unsafe"
)

const (
	minShift = 12 // 4 KiB
	// MaxSize is the largest buffer lent; larger requests are allocated
	// and not taken back.
	MaxSize  = 1 << maxShift
	maxShift = 25 // 32 MiB
	numClass = maxShift - minShift + 1
)

// Pool is safe for concurrent use; its zero value is ready to use. Spare
// buffers live in sync.Pools, so an idle pool is emptied by the garbage
// collector rather than holding memory forever.
type Pool struct {
	classes [numClass]sync.Pool
}

func class(n int) int {
	if n <= 1<<minShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minShift
}

// Get returns a buffer with len(*b) >= n (its whole class size), aligned
// to Align. Pointers are pooled rather than slices so Put does not
// allocate.
func (p *Pool) Get(n int) *[]byte {
	if n > MaxSize {
		b := make([]byte, n)
		return &b
	}
	c := class(n)
	if v := p.classes[c].Get(); v != nil {
		return v.(*[]byte)
	}
	b := Aligned(1 << (c + minShift))
	return &b
}

// Align is the alignment of every buffer of a class: enough for O_DIRECT.
const Align = 4096

// Aligned returns a zeroed buffer of n bytes starting at a multiple of
// Align.
func Aligned(n int) []byte {
	b := make([]byte, n+Align)
	k := int(uintptr(unsafe.Pointer(&b[0])) & (Align - 1))
	if k != 0 {
		k = Align - k
	}
	return b[k : k+n : k+n]
}

// Put takes back a buffer from Get. The caller must not touch it again.
// Buffers of other sizes (not from Get) are dropped, so a class only ever
// holds buffers of its own size.
func (p *Pool) Put(b *[]byte) {
	if b == nil {
		return
	}
	n := cap(*b)
	if n < 1<<minShift || n > MaxSize || n&(n-1) != 0 {
		return
	}
	*b = (*b)[:n]
	p.classes[class(n)].Put(b)
}

// Bounded lends buffers like Pool, but keeps at most a set number of
// bytes of spares, in channels rather than sync.Pools: what it holds does
// not depend on when the garbage collector last ran, so a process that
// must stay under a memory bound knows what its spares cost. Above 16 KiB
// its classes are quarter octaves (20, 24, 28, 32 KiB, 40 KiB, ...), not
// powers of two: it holds relayed frames, and a frame of one 4 MiB copy
// and its headers took an 8 MiB buffer, so the relay's 32 MiB of frames
// circulated in 64 MiB of buffers, more than the spares may keep, and the
// process server zeroed a fresh buffer for a third of the frames of an
// initial copy (docs/benchmarks.md). Its methods take and return slices;
// a nil *Bounded lends fresh buffers and keeps nothing.
type Bounded struct {
	classes [numBounded]chan []byte
	spare   atomic.Int64
	max     int64
}

const (
	quarterFrom = 14 // classes above 1<<quarterFrom are quarter octaves
	numBounded  = quarterFrom - minShift + 1 + 4*(maxShift-quarterFrom)
)

// boundedClass is the class of a request of n bytes (0 < n <= MaxSize)
// and its buffer size, a multiple of Align.
func boundedClass(n int) (idx, size int) {
	if n <= 1<<quarterFrom {
		c := class(n)
		return c, 1 << (c + minShift)
	}
	k := bits.Len(uint(n-1)) - 1 // 1<<k < n <= 1<<(k+1)
	step := 1 << (k - 2)
	q := (n - 1<<k + step - 1) / step // 1..4
	return quarterFrom - minShift + 1 + 4*(k-quarterFrom) + q - 1, 1<<k + q*step
}

// NewBounded keeps at most maxSpare bytes of spare buffers.
func NewBounded(maxSpare int64) *Bounded {
	p := &Bounded{max: maxSpare}
	for n := 1; n <= MaxSize; {
		c, size := boundedClass(n)
		p.classes[c] = make(chan []byte, max(1, min(maxSpare/int64(size), 1024)))
		n = size + 1
	}
	return p
}

// Get returns a buffer of length n (capacity its class size, aligned to
// Align), a spare one when there is one.
func (p *Bounded) Get(n int) []byte {
	if p == nil || n > MaxSize {
		return make([]byte, n)
	}
	c, size := boundedClass(max(n, 1))
	// A spare of up to an octave larger serves too: with four classes an
	// octave, batches of varying size (a resync's) otherwise missed their
	// own class while the next one held spares, and every miss is a fresh
	// buffer zeroed and faulted in (the master target's CPU in the
	// catch-up benchmark rose by a fifth before this).
	for k := c; k < min(c+5, numBounded); k++ {
		select {
		case b := <-p.classes[k]:
			p.spare.Add(-int64(cap(b)))
			return b[:n]
		default:
		}
		if k < quarterFrom-minShift+1 && k > c {
			break // below the quarter classes a class is already an octave
		}
	}
	return Aligned(size)[:n]
}

// Put takes back a buffer no longer used. Buffers that are not of a class
// size, or that would take the spares past the bound, are dropped.
func (p *Bounded) Put(b []byte) {
	n := cap(b)
	if p == nil || n < 1<<minShift || n > MaxSize {
		return
	}
	c, size := boundedClass(n)
	if size != n {
		return
	}
	if p.spare.Add(int64(n)) > p.max {
		p.spare.Add(-int64(n))
		return
	}
	select {
	case p.classes[c] <- b[:0]:
	default:
		p.spare.Add(-int64(n))
	}
}
