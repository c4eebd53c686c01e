package wire

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"
	"time"
)

func sampleBatch(r *rand.Rand, n int) Batch {
	b := Batch{First: 100, Last: 100 + uint64(n)*3}
	seq := uint64(100)
	for i := 0; i < n; i++ {
		op := Op(1 + r.IntN(8))
		rec := Record{Seq: seq, Disk: uint16(r.IntN(3)), Op: op, Offset: uint64(r.IntN(1 << 30)), Length: uint32(r.IntN(9000))}
		if op.HasData() {
			rec.Data = make([]byte, rec.Length)
			for j := range rec.Data {
				rec.Data[j] = byte(j % 7)
			}
		}
		b.Records = append(b.Records, rec)
		seq += 1 + uint64(r.IntN(2))
	}
	return b
}

func TestBatchRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 50; i++ {
		b := sampleBatch(r, r.IntN(20))
		enc := AppendBatch(nil, &b)
		if len(enc) != b.EncodedSize() {
			t.Fatalf("EncodedSize %d, encoded %d", b.EncodedSize(), len(enc))
		}
		got, err := DecodeBatch(enc)
		if err != nil {
			t.Fatal(err)
		}
		if got.First != b.First || got.Last != b.Last || len(got.Records) != len(b.Records) {
			t.Fatalf("header mismatch")
		}
		for j := range b.Records {
			w, g := b.Records[j], got.Records[j]
			if w.Seq != g.Seq || w.Disk != g.Disk || w.Op != g.Op || w.Offset != g.Offset || w.Length != g.Length || !bytes.Equal(w.Data, g.Data) {
				t.Fatalf("record %d: %+v != %+v", j, g, w)
			}
		}
	}
}

// TestBatchPartsEqualAppendBatch: the parts a batch is sent in, joined,
// are the encoding DecodeBatch reads, whichever data is referred to; and
// WriteFrameParts frames them like WriteFrame frames the whole.
func TestBatchPartsEqualAppendBatch(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var buf []byte
	var parts [][]byte
	for i := 0; i < 200; i++ {
		b := sampleBatch(r, r.IntN(20))
		want := AppendBatch(nil, &b)
		minRef := []int{0, 1, 100, 4096, 1 << 20}[r.IntN(5)]
		buf, parts = BatchParts(buf, parts, &b, minRef)
		var got []byte
		for _, p := range parts {
			got = append(got, p...)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("batch %d (minRef %d): parts joined differ from AppendBatch (%d vs %d bytes)", i, minRef, len(got), len(want))
		}
		var whole, split bytes.Buffer
		if err := NewConn(&whole).WriteFrame(TypeBatch, want, CodecNone); err != nil {
			t.Fatal(err)
		}
		if err := NewConn(&split).WriteFrameParts(TypeBatch, parts); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(whole.Bytes(), split.Bytes()) {
			t.Fatalf("batch %d: WriteFrameParts wrote a different frame than WriteFrame", i)
		}
	}
}

// TestFramesOfEverySizeInterleaved: large payloads pass the frame buffer
// both ways (written to the stream itself, read from it once the buffer
// is drained); frames around that threshold, small frames between them
// and a checksum passed on must all arrive whole and in order.
func TestFramesOfEverySizeInterleaved(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	sizes := []int{0, 1, 24, directWrite - 1, directWrite, directWrite + 1, 1 << 20, 3<<20 + 17, 8 << 20}
	var stream bytes.Buffer
	w := NewConn(&stream)
	var want [][]byte
	for i := 0; i < 60; i++ {
		p := make([]byte, sizes[r.IntN(len(sizes))])
		for j := range p {
			p[j] = byte(r.Uint32())
		}
		want = append(want, p)
		var err error
		switch i % 3 {
		case 0:
			err = w.WriteFrame(TypeBatch, p, CodecNone)
		case 1:
			cut := r.IntN(len(p) + 1)
			err = w.WriteFrameParts(TypeBatch, [][]byte{p[:cut], p[cut:]})
		case 2:
			err = w.WriteFrameSum(TypeBatch, p, crc32.Checksum(p, castagnoli))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	rd := NewConn(&stream)
	for i, p := range want {
		typ, got, err := rd.ReadFrame()
		if err != nil {
			t.Fatalf("frame %d (%d bytes): %v", i, len(p), err)
		}
		if typ != TypeBatch || !bytes.Equal(got, p) {
			t.Fatalf("frame %d (%d bytes): got %s of %d bytes, different", i, len(p), typ, len(got))
		}
		if sum, ok := rd.LastSum(); !ok || sum != crc32.Checksum(p, castagnoli) {
			t.Fatalf("frame %d: LastSum %#x %v", i, sum, ok)
		}
	}
	if _, _, err := rd.ReadFrame(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last frame: %v, want EOF", err)
	}
}

// TestWrongSumPassedOnIsRefused: a payload changed after its checksum was
// taken (what WriteFrameSum guards against) is refused by the next peer.
func TestWrongSumPassedOnIsRefused(t *testing.T) {
	var stream bytes.Buffer
	p := bytes.Repeat([]byte{7}, 100<<10)
	sum := crc32.Checksum(p, castagnoli)
	p[5000] ^= 1
	if err := NewConn(&stream).WriteFrameSum(TypeBatch, p, sum); err != nil {
		t.Fatal(err)
	}
	if _, _, err := NewConn(&stream).ReadFrame(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged payload with its old checksum: %v, want ErrCorrupt", err)
	}
}

func TestFramesAllCodecs(t *testing.T) {
	for _, codec := range []Codec{CodecNone, CodecZstd, CodecS2} {
		var buf bytes.Buffer
		c := NewConn(&buf)
		payload := bytes.Repeat([]byte("standby replicates blocks "), 5000)
		if err := c.WriteFrame(TypeBatch, payload, codec); err != nil {
			t.Fatal(err)
		}
		raw, onWire := c.Counters()
		if codec != CodecNone && onWire >= raw/4 {
			t.Errorf("%s: compressed %d -> %d, expected a real ratio", codec, raw, onWire)
		}
		rc := NewConn(&buf)
		typ, got, err := rc.ReadFrame()
		if err != nil || typ != TypeBatch || !bytes.Equal(got, payload) {
			t.Fatalf("%s: read back %v %v equal=%v", codec, typ, err, bytes.Equal(got, payload))
		}
	}
}

func TestCorruptFramesRefused(t *testing.T) {
	var buf bytes.Buffer
	c := NewConn(&buf)
	b := sampleBatch(rand.New(rand.NewPCG(3, 4)), 5)
	if err := c.WriteFrame(TypeBatch, AppendBatch(nil, &b), CodecZstd); err != nil {
		t.Fatal(err)
	}
	frame := buf.Bytes()
	for _, tc := range []struct {
		name string
		mut  func([]byte) []byte
	}{
		{"flipped payload byte", func(f []byte) []byte { f[len(f)-3] ^= 0x40; return f }},
		{"flipped header byte", func(f []byte) []byte { f[9] ^= 1; return f }},
		{"truncated payload", func(f []byte) []byte { return f[:len(f)-10] }},
		{"truncated header", func(f []byte) []byte { return f[:10] }},
		{"bad magic", func(f []byte) []byte { f[0] = 'X'; return f }},
	} {
		f := tc.mut(append([]byte(nil), frame...))
		_, _, err := NewConn(bytes.NewBuffer(f)).ReadFrame()
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: got %v, want ErrCorrupt", tc.name, err)
		}
	}
}

func TestDecodeBatchRejects(t *testing.T) {
	b := Batch{First: 10, Last: 20, Records: []Record{{Seq: 12, Op: OpWrite, Length: 3, Data: []byte("abc")}, {Seq: 11, Op: OpEpoch}}}
	if _, err := DecodeBatch(AppendBatch(nil, &b)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("out-of-order seqs accepted: %v", err)
	}
	b.Records[1].Seq = 30
	if _, err := DecodeBatch(AppendBatch(nil, &b)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("seq outside batch accepted: %v", err)
	}
	b.Records[1] = Record{Seq: 13, Op: 99}
	if _, err := DecodeBatch(AppendBatch(nil, &b)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("unknown op accepted: %v", err)
	}
}

func FuzzDecodeBatch(f *testing.F) {
	b := sampleBatch(rand.New(rand.NewPCG(5, 6)), 4)
	f.Add(AppendBatch(nil, &b))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		op, ok := FirstOp(data) // must not panic on anything
		got, err := DecodeBatch(data)
		if err != nil {
			return
		}
		if ok != (len(got.Records) > 0) || (ok && op != got.Records[0].Op) {
			t.Fatalf("FirstOp says %v %v, the decoded batch has %d records", op, ok, len(got.Records))
		}
		// Whatever decodes must re-encode to the same bytes: no field is
		// silently dropped or invented.
		if re := AppendBatch(nil, &got); !bytes.Equal(re, data) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func FuzzReadFrame(f *testing.F) {
	for _, codec := range []Codec{CodecNone, CodecZstd, CodecS2} {
		var buf bytes.Buffer
		_ = NewConn(&buf).WriteFrame(TypeBatch, bytes.Repeat([]byte("ab"), 300), codec)
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := NewConn(bytes.NewBuffer(data))
		for i := 0; i < 4; i++ {
			if _, _, err := c.ReadFrame(); err != nil {
				return
			}
		}
	})
}

func BenchmarkWriteReadFrame(b *testing.B) {
	for _, codec := range []Codec{CodecNone, CodecS2, CodecZstd} {
		b.Run(codec.String(), func(b *testing.B) {
			payload := make([]byte, 4<<20)
			for i := range payload {
				payload[i] = byte(i / 97)
			}
			var buf bytes.Buffer
			w, r := NewConn(&buf), NewConn(&buf)
			b.SetBytes(int64(len(payload)))
			for i := 0; i < b.N; i++ {
				if err := w.WriteFrame(TypeBatch, payload, codec); err != nil {
					b.Fatal(err)
				}
				if _, _, err := r.ReadFrame(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Keep hands the last payload over without a copy, so the next read must
// not overwrite it; anything else is copied.
func TestKeepHandsOverThePayload(t *testing.T) {
	var buf bytes.Buffer
	w := NewConn(&buf)
	for _, s := range []string{"first payload", "second one"} {
		if err := w.WriteFrame(TypeBatch, []byte(s), CodecNone); err != nil {
			t.Fatal(err)
		}
	}
	r := NewConn(&buf)
	_, p, err := r.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	kept := r.Keep(p)
	if &kept[0] != &p[0] {
		t.Fatal("Keep copied the frame payload")
	}
	other := []byte("not from the connection")
	if c := r.Keep(other); &c[0] == &other[0] || string(c) != string(other) {
		t.Fatal("Keep must copy what is not the last payload")
	}
	if _, _, err := r.ReadFrame(); err != nil {
		t.Fatal(err)
	}
	if string(kept) != "first payload" {
		t.Fatalf("the next read overwrote a kept payload: %q", kept)
	}
}

// A session's connection is closed by two goroutines (its watcher and its
// own defer), after zstd frames were read: a data race on the decoder
// before (found by TestManyAgentsAtOnce under the race detector, where the
// process server compresses with zstd while it waits for bandwidth). Both
// closes and a read after them must be safe.
func TestCloseConcurrentlyAfterZstd(t *testing.T) {
	var stream bytes.Buffer
	w := NewConn(&stream)
	payload := bytes.Repeat([]byte("compressible "), 10000)
	for range 2 {
		if err := w.WriteFrame(TypeBatch, payload, CodecZstd); err != nil {
			t.Fatal(err)
		}
	}
	r := NewConn(&stream)
	if _, got, err := r.ReadFrame(); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("first zstd frame: %v", err)
	}
	done := make(chan struct{})
	go func() { r.Close(); close(done) }()
	r.Close()
	<-done
	if _, _, err := r.ReadFrame(); err == nil {
		t.Fatal("a zstd frame was decoded after Close")
	}
	w.Close()
	w.Close()
}

// resetAfter returns the bytes of r up to n, then fails as a connection
// reset by the peer does.
type resetAfter struct {
	r io.Reader
	n int
}

func (ra *resetAfter) Read(p []byte) (int, error) {
	if ra.n <= 0 {
		return 0, syscall.ECONNRESET
	}
	p = p[:min(len(p), ra.n)]
	k, err := ra.r.Read(p)
	ra.n -= k
	return k, err
}

func (ra *resetAfter) Write(p []byte) (int, error) { return len(p), nil }

// A peer that goes away mid-frame may reset the connection instead of
// closing it (it does when data of ours is unread on its side): the
// refusal must still say the frame was cut short, and how far it got.
func TestFrameCutShortByResetSaysTruncated(t *testing.T) {
	var buf bytes.Buffer
	b := sampleBatch(rand.New(rand.NewPCG(3, 5)), 5)
	if err := NewConn(&buf).WriteFrame(TypeBatch, AppendBatch(nil, &b), CodecNone); err != nil {
		t.Fatal(err)
	}
	cut := HeaderSize + 7
	_, _, err := NewConn(&resetAfter{r: &buf, n: cut}).ReadFrame()
	if err == nil || !errors.Is(err, syscall.ECONNRESET) || !strings.Contains(err.Error(), "frame truncated after 7 of") {
		t.Fatalf("a reset mid-payload gave %v, want a truncated frame naming the reset", err)
	}
}

func TestPreferRefusal(t *testing.T) {
	reset := errors.New("write: connection reset by peer")
	refusal := &ErrorMsg{Code: "cache", Message: "no space left on device"}

	errc := make(chan error, 1)
	errc <- fmt.Errorf("reading: %w", refusal)
	if err := PreferRefusal(reset, errc, time.Second); !strings.Contains(fmt.Sprint(err), "no space left") {
		t.Fatalf("a refusal that follows the reset: got %v", err)
	}
	start := time.Now()
	if err := PreferRefusal(reset, make(chan error), 50*time.Millisecond); err != reset || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("no refusal: got %v after %v, want the reset after the grace", err, time.Since(start))
	}
	errc <- errors.New("another transport error")
	if err := PreferRefusal(reset, errc, 50*time.Millisecond); err != reset {
		t.Fatalf("only transport errors: got %v, want the first", err)
	}
	closed := make(chan error)
	close(closed)
	start = time.Now()
	if err := PreferRefusal(reset, closed, time.Hour); err != reset || time.Since(start) > time.Second {
		t.Fatalf("a closed channel: got %v after %v, want the first error at once", err, time.Since(start))
	}
	start = time.Now()
	if err := PreferRefusal(refusal, make(chan error), time.Hour); err != refusal || time.Since(start) > time.Second {
		t.Fatalf("a refusal first: got %v after %v, want it at once", err, time.Since(start))
	}
}
