package capture

import "math/bits"

// Bitmaps are []uint64 with bit i of the map at word i>>6, bit i&63. These
// helpers work a word at a time so that range operations cost O(range/64).

// rangeMask returns the mask of bits [from, to) inside the word that holds
// bit from; to must be in the same word or be the start of the next one.
func rangeMask(from, to int64) uint64 {
	lo := uint(from & 63)
	n := uint(to - from)
	if n >= 64 {
		return ^uint64(0)
	}
	return ((uint64(1) << n) - 1) << lo
}

// forEachWord calls fn for every word overlapping bits [from, to) with the
// mask of the bits of that word inside the range.
func forEachWord(from, to int64, fn func(i int, mask uint64)) {
	for from < to {
		next := (from | 63) + 1
		if next > to {
			next = to
		}
		fn(int(from>>6), rangeMask(from, next))
		from = next
	}
}

// anyInRange reports whether any bit [from, to) of a|b is set.
func anyInRange(a, b []uint64, from, to int64) bool {
	found := false
	forEachWord(from, to, func(i int, m uint64) {
		if (a[i]|b[i])&m != 0 {
			found = true
		}
	})
	return found
}

// tailMask is the mask of valid bits in the last word of a bitmap of n bits.
func tailMask(n int64) uint64 {
	if n&63 == 0 {
		return ^uint64(0)
	}
	return (uint64(1) << uint(n&63)) - 1
}

func wordsFor(n int64) int64 { return (n + 63) >> 6 }

func popcount(w uint64) int64 { return int64(bits.OnesCount64(w)) }
