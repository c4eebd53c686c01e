package journal

import (
	"bytes"
	"errors"
	"testing"
)

func sampleRecord(bs int, count int, final bool) []byte {
	zero := make([]bool, count)
	data := make([]byte, count*bs)
	for i := range count {
		zero[i] = i%3 == 1
		if !zero[i] {
			for k := range bs {
				data[i*bs+k] = byte(i*7 + k)
			}
		}
	}
	return appendRecord(nil, 77, 2, 1000, final, zero, data, bs)
}

func TestRecordRoundTrip(t *testing.T) {
	for _, bs := range []int{512, 4096} {
		for _, count := range []int{1, 2, 7, 8, 9, 33, maxRunBlocks} {
			b := sampleRecord(bs, count, count%2 == 0)
			r, n, err := DecodeRecord(b, bs)
			if err != nil || n != len(b) {
				t.Fatalf("bs %d count %d: n=%d/%d err=%v", bs, count, n, len(b), err)
			}
			if r.Seq != 77 || r.Disk != 2 || r.FirstBlock != 1000 || r.Final != (count%2 == 0) || len(r.Blocks) != count {
				t.Fatalf("decoded %+v", r)
			}
			for i, blk := range r.Blocks {
				if (blk == nil) != (i%3 == 1) || (blk != nil && (len(blk) != bs || blk[5] != byte(i*7+5))) {
					t.Fatalf("block %d: %v", i, blk)
				}
			}
			// Every strict prefix is incomplete, not corrupt: that is what
			// tells a torn tail from damage.
			for _, cut := range []int{0, 1, recHeaderSize - 1, recHeaderSize, headLen(count), len(b) - 1} {
				if _, _, err := DecodeRecord(b[:cut], bs); !errors.Is(err, errShort) {
					t.Fatalf("prefix of %d/%d bytes: %v, want errShort", cut, len(b), err)
				}
			}
			// Any flipped bit is caught.
			for _, pos := range []int{0, 5, 9, 20, 26, 30, recHeaderSize, len(b) - 1} {
				c := bytes.Clone(b)
				c[pos] ^= 1
				if _, _, err := DecodeRecord(c, bs); !errors.Is(err, ErrCorrupt) && !errors.Is(err, errShort) {
					t.Fatalf("flip at %d: %v", pos, err)
				}
			}
		}
	}
}

func TestSegHeaderRoundTrip(t *testing.T) {
	var b [segHeaderSize]byte
	h := segHeader{shift: 12, flags: segFlagGenesis, base: 42}
	putSegHeader(b[:], h)
	got, err := parseSegHeader(b[:])
	if err != nil || got != h {
		t.Fatalf("got %+v, %v", got, err)
	}
	for i := range segHeaderSize {
		c := b
		c[i] ^= 0x10
		if _, err := parseSegHeader(c[:]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flip at %d accepted: %v", i, err)
		}
	}
}

// FuzzDecodeRecord: the decoder never panics, fails only with errShort or
// ErrCorrupt, and accepts only the canonical encoding of what it returns.
func FuzzDecodeRecord(f *testing.F) {
	// Small seeds: the fuzzer minimises every new input it finds, and
	// that time grows with input size.
	f.Add(sampleRecord(512, 2, true), uint8(0))
	f.Add(sampleRecord(512, 10, false)[:recHeaderSize+2+4+512+4+100], uint8(0))
	f.Add(appendRecord(nil, 1, 0, 0, true, []bool{true}, make([]byte, 512), 512), uint8(0))
	f.Add(appendRecord(nil, 9, 1, 3, false, []bool{true, true, true, true, true, true, true, true, true}, make([]byte, 9*512), 512), uint8(0))
	f.Add([]byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, sel uint8) {
		bs := 512 << (sel % 4)
		r, n, err := DecodeRecord(data, bs)
		parseSegHeader(data)
		if err != nil {
			if !errors.Is(err, errShort) && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error wraps neither errShort nor ErrCorrupt: %v", err)
			}
			return
		}
		if n <= 0 || n > len(data) {
			t.Fatalf("length %d of %d bytes", n, len(data))
		}
		zero := make([]bool, len(r.Blocks))
		raw := make([]byte, len(r.Blocks)*bs)
		for i, b := range r.Blocks {
			if b == nil {
				zero[i] = true
				continue
			}
			if len(b) != bs {
				t.Fatalf("block %d has %d bytes", i, len(b))
			}
			copy(raw[i*bs:], b)
		}
		again := appendRecord(nil, r.Seq, uint16(r.Disk), uint64(r.FirstBlock), r.Final, zero, raw, bs)
		if !bytes.Equal(again, data[:n]) {
			t.Fatalf("re-encoding differs from the accepted bytes")
		}
	})
}
