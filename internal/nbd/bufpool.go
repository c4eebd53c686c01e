package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers come in power-of-two classes from 4 KiB to MaxPayload so
// that a 4 KiB write does not pin a 32 MiB buffer and a steady workload
// allocates nothing.
const (
	minBufShift = 12
	maxBufShift = 25 // MaxPayload
	numBufClass = maxBufShift - minBufShift + 1
)

// bufPool is owned by a Server (or Client); its zero value is ready to use.
type bufPool struct {
	classes [numBufClass]sync.Pool
}

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// get returns a buffer with len(*b) >= n; n must not exceed MaxPayload.
// Pointers are pooled rather than slices so Put does not allocate.
func (p *bufPool) get(n int) *[]byte {
	c := bufClass(n)
	if v := p.classes[c].Get(); v != nil {
		return v.(*[]byte)
	}
	b := make([]byte, 1<<(c+minBufShift))
	return &b
}

func (p *bufPool) put(b *[]byte) {
	if b == nil {
		return
	}
	p.classes[bufClass(cap(*b))].Put(b)
}
