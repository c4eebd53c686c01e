package throttle

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

func TestNilLimiterNeverWaits(t *testing.T) {
	var l *Limiter
	if New(0, 1) != nil || New(-5, 1) != nil {
		t.Fatal("a limit of 0 or less must mean none")
	}
	if err := l.Wait(context.Background(), 1<<40); err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader([]byte("abc"))
	if l.ReaderAt(context.Background(), r) != r {
		t.Fatal("a nil limiter must hand back the reader itself")
	}
	if l.Rate() != 0 {
		t.Fatal("rate of no limit")
	}
}

// Amounts far above the burst pass, and the limiter holds them to the
// rate: 3 MiB at 1 MiB/s after a burst of 100 KiB takes at least 2.9 s of
// the limiter's clock. Only the lower bound is checked; a busy machine may
// take longer.
func TestWaitHoldsLargeAmountsToTheRate(t *testing.T) {
	l := New(1<<20, 0)
	if b := l.l.Burst(); b != (1<<20)/10 {
		t.Fatalf("burst %d: want a tenth of a second", b)
	}
	start := time.Now()
	if err := l.Wait(context.Background(), 3<<20); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 2800*time.Millisecond {
		t.Fatalf("3 MiB at 1 MiB/s passed in %v", el)
	}
}

func TestWaitEndsWithContext(t *testing.T) {
	l := New(1024, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := l.Wait(ctx, 1<<20)
	if err == nil {
		t.Fatal("a megabyte at 1 KiB/s passed within 50 ms")
	}
	if !errors.Is(err, context.DeadlineExceeded) && !bytes.Contains([]byte(err.Error()), []byte("would exceed context deadline")) {
		t.Fatalf("error %v: want the context's", err)
	}
}

func TestReaderAtPacesReads(t *testing.T) {
	src := bytes.Repeat([]byte{9}, 512<<10)
	l := New(1<<20, 64<<10)
	r := l.ReaderAt(context.Background(), bytes.NewReader(src))
	buf := make([]byte, 64<<10)
	start := time.Now()
	var got []byte
	for off := int64(0); off < int64(len(src)); off += int64(len(buf)) {
		n, err := r.ReadAt(buf, off)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got, src) {
		t.Fatal("paced reads changed the bytes")
	}
	// 512 KiB at 1 MiB/s, the first 100 KiB from the burst.
	if el := time.Since(start); el < 350*time.Millisecond {
		t.Fatalf("512 KiB at 1 MiB/s read in %v", el)
	}
}
