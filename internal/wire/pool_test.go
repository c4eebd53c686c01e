package wire

import (
	"bytes"
	"testing"
)

// A connection with a pool reads the frame after a Keep into a buffer given
// back to the pool, and the kept payload is never overwritten.
func TestBufferPoolAfterKeep(t *testing.T) {
	var stream bytes.Buffer
	w := NewConn(&stream)
	p1 := bytes.Repeat([]byte{1}, 64<<10)
	p2 := bytes.Repeat([]byte{2}, 32<<10)
	p3 := bytes.Repeat([]byte{3}, 64<<10)
	for _, p := range [][]byte{p1, p2, p3} {
		if err := w.WriteFrame(TypeBatch, p, CodecNone); err != nil {
			t.Fatal(err)
		}
	}
	pool := NewBufferPool(1 << 20)
	r := NewConn(&stream)
	r.SetPool(pool)
	_, got1, err := r.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	kept := r.Keep(got1)
	if &kept[0] != &got1[0] {
		t.Fatal("Keep copied the connection's own buffer")
	}
	spare := pool.Get(32 << 10)[:0]
	pool.Put(spare)
	_, got2, err := r.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	if &got2[:cap(got2)][0] != &spare[:1][0] {
		t.Fatal("the frame after Keep was not read into the pooled buffer")
	}
	if !bytes.Equal(got2, p2) || !bytes.Equal(kept, p1) {
		t.Fatal("payloads differ")
	}
	pool.Put(kept)
	_, got3, err := r.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got3, p3) {
		t.Fatal("third payload differs")
	}
	var nilPool *BufferPool
	nilPool.Put(make([]byte, 10))
	if b := nilPool.Get(10); len(b) != 10 {
		t.Fatal("a nil pool must still hand out buffers")
	}
}
