package wire

// BufferPool lends payload buffers to connections and takes them back from
// whoever ends up owning them (Keep hands a frame's buffer to the caller).
// A role that relays frames reads one into a fresh buffer per frame
// otherwise: every one is zeroed, faulted in and collected, which cost the
// process server and master target about a tenth of their CPU in the
// initial-copy profiles (docs/benchmarks.md). Safe for concurrent use; a
// nil pool lends nothing.
type BufferPool struct {
	free chan []byte
}

// NewBufferPool keeps at most n spare buffers.
func NewBufferPool(n int) *BufferPool {
	return &BufferPool{free: make(chan []byte, n)}
}

// Get returns a buffer of length n, a spare one when one is big enough.
func (p *BufferPool) Get(n int) []byte {
	if p != nil {
		for range cap(p.free) {
			select {
			case b := <-p.free:
				if cap(b) >= n {
					return b[:n]
				}
				// Too small for this frame: let it go, frames of a
				// connection tend to grow to one size.
				continue
			default:
			}
			break
		}
	}
	return make([]byte, n)
}

// Put gives back a buffer no longer used, for a later frame.
func (p *BufferPool) Put(b []byte) {
	if p == nil || cap(b) == 0 {
		return
	}
	select {
	case p.free <- b[:0]:
	default:
	}
}
