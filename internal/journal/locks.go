package journal

import (
	"math/bits"
	"sync"
)

// rangeLocks keeps view reads from seeing a range between its Preserve and
// its replica write. Ranges map onto a fixed set of stripes (granules of 16
// blocks, hashed with the disk), so the cost is fixed whatever the disk size.
//
// There is one writer, the apply goroutine, and it may hold several ranges
// at once (many records share one Sync), so write holds never exclude each
// other: they only exclude readers. Every caller takes all the stripes it
// needs at once, under one mutex, and never waits while holding some: that
// is what makes holding many ranges deadlock-free. A waiting writer keeps
// new readers out of its stripes so a stream of view reads cannot starve
// apply.
const (
	lockStripes     = 1024
	lockGranuleBits = 4 // 16 blocks per granule
)

type stripeSet [lockStripes / 64]uint64

func (s *stripeSet) add(i int) { s[i>>6] |= 1 << (i & 63) }

func (s *stripeSet) each(fn func(i int)) {
	for w, x := range s {
		for x != 0 {
			fn(w<<6 | bits.TrailingZeros64(x))
			x &= x - 1
		}
	}
}

type rangeLocks struct {
	mu      sync.Mutex
	cond    sync.Cond
	readers [lockStripes]int32
	writers [lockStripes]int32
	waiting [lockStripes]int32 // writers waiting for readers to leave
}

func (l *rangeLocks) init() { l.cond.L = &l.mu }

// stripes is the set covering blocks [b0, b1) of disk.
func stripes(disk int, b0, b1 int64) stripeSet {
	var s stripeSet
	g0, g1 := b0>>lockGranuleBits, (b1+(1<<lockGranuleBits)-1)>>lockGranuleBits
	if g1-g0 >= lockStripes {
		for i := range s {
			s[i] = ^uint64(0)
		}
		return s
	}
	// Consecutive granules land on consecutive stripes, so one range never
	// collides with itself; the disk offsets the start.
	for g := g0; g < g1; g++ {
		s.add(int((uint64(g) + uint64(disk)*7919) % lockStripes))
	}
	return s
}

func (l *rangeLocks) lockWrite(s stripeSet) func() {
	l.mu.Lock()
	s.each(func(i int) { l.waiting[i]++ })
	for {
		busy := false
		s.each(func(i int) { busy = busy || l.readers[i] > 0 })
		if !busy {
			break
		}
		l.cond.Wait()
	}
	s.each(func(i int) { l.waiting[i]--; l.writers[i]++ })
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		s.each(func(i int) { l.writers[i]-- })
		l.mu.Unlock()
		l.cond.Broadcast()
	}
}

func (l *rangeLocks) lockRead(s stripeSet) func() {
	l.mu.Lock()
	for {
		busy := false
		s.each(func(i int) { busy = busy || l.writers[i] > 0 || l.waiting[i] > 0 })
		if !busy {
			break
		}
		l.cond.Wait()
	}
	s.each(func(i int) { l.readers[i]++ })
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		s.each(func(i int) { l.readers[i]-- })
		l.mu.Unlock()
		l.cond.Broadcast()
	}
}
