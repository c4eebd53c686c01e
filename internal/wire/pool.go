package wire

import "standby/internal/bufpool"

// BufferPool lends payload buffers to connections and takes them back from
// whoever ends up owning them (Keep hands a frame's buffer to the caller).
// A role that relays frames reads one into a fresh buffer per frame
// otherwise: every one is zeroed, faulted in and collected, which cost the
// process server and master target about a tenth of their CPU in the
// initial-copy profiles (docs/benchmarks.md). Size classes, so that frames
// of every size find a spare (a pool of whatever came back last dropped a
// captured batch's buffer whenever a larger one was wanted). Safe for
// concurrent use; a nil pool lends nothing.
type BufferPool = bufpool.Bounded

// NewBufferPool keeps at most maxSpare bytes of spare buffers.
func NewBufferPool(maxSpare int64) *BufferPool { return bufpool.NewBounded(maxSpare) }
