package directio

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"unsafe"
)

// Appends of every size, across reopenings at the end of the data, leave
// the file holding exactly the bytes appended followed by zeros to the next
// block boundary.
func TestAppendsOfEverySize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, []byte("head"), 0o600); err != nil {
		t.Fatal(err)
	}
	want := []byte("head")
	rng := rand.New(rand.NewPCG(1, 2))
	sizes := []int{1, 4091, 1, Align, Align - 1, 3 * Align, 100, 1 << 20, 7, 300 << 10, Align + 1}
	for round := 0; round < 3; round++ {
		a, err := OpenAppender(path, int64(len(want)), new([]byte))
		if err != nil {
			t.Fatal(err)
		}
		if a == nil {
			t.Fatal("this file system refused O_DIRECT: the test needs one that takes it (ext4, xfs, tmpfs on Linux 6.6 or later)")
		}
		for _, n := range sizes {
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(rng.Uint32()) | 1 // never zero, so padding shows
			}
			if err := a.Append(p); err != nil {
				t.Fatal(err)
			}
			want = append(want, p...)
			if a.Size() != int64(len(want)) {
				t.Fatalf("Size %d after appending, want %d", a.Size(), len(want))
			}
			checkFile(t, path, want)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		// The owner seals a file by cutting the padding; the next
		// appender starts in the middle of a block.
		if err := os.Truncate(path, int64(len(want))); err != nil {
			t.Fatal(err)
		}
	}
}

// An appender opened before padding was cut (a crash of the owner) writes
// over the zeros.
func TestReopenOverPadding(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := OpenAppender(path, 0, new([]byte))
	if err != nil || a == nil {
		t.Fatalf("opening: %v (nil appender: O_DIRECT refused)", err)
	}
	if err := a.Append(bytes.Repeat([]byte{7}, 5000)); err != nil {
		t.Fatal(err)
	}
	a.Close()
	b, err := OpenAppender(path, 5000, new([]byte))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Append(bytes.Repeat([]byte{9}, 10)); err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Repeat([]byte{7}, 5000), bytes.Repeat([]byte{9}, 10)...)
	checkFile(t, path, want)
}

// Opening at an end the file does not reach is refused: appending there
// would leave a hole of zeros inside the data.
func TestOpenPastTheEndIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, []byte("abc"), 0o600); err != nil {
		t.Fatal(err)
	}
	if a, err := OpenAppender(path, 10, new([]byte)); err == nil {
		a.Close()
		t.Fatal("opened at offset 10 of a 3-byte file")
	}
}

func checkFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	padded := (len(want) + Align - 1) &^ (Align - 1)
	if len(got) < len(want) || len(got) > padded {
		t.Fatalf("file holds %d bytes, want %d to %d", len(got), len(want), padded)
	}
	if !bytes.Equal(got[:len(want)], want) {
		i := 0
		for i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("file differs from what was appended at byte %d", i)
	}
	if !bytes.Equal(got[len(want):], make([]byte, len(got)-len(want))) {
		t.Fatal("padding past the data is not zero")
	}
}

// ReadAligned reads whole blocks, and the end of a file that stops
// mid-block, without an error.
func TestReadAligned(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	data := make([]byte, 3*Align+100)
	for i := range data {
		data[i] = byte(i*31) | 1
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, direct, err := OpenRead(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !direct {
		t.Fatal("O_DIRECT refused: the test needs a file system that takes it")
	}
	buf := make([]byte, 8*Align)
	k := Align - int(uintptr(unsafe.Pointer(&buf[0]))&(Align-1))
	b := buf[k%Align : k%Align+6*Align]
	for _, off := range []int64{0, Align, 3 * Align} {
		n, err := ReadAligned(f, b, off)
		if err != nil {
			t.Fatalf("reading at %d: %v", off, err)
		}
		if want := len(data) - int(off); n != want || !bytes.Equal(b[:n], data[off:]) {
			t.Fatalf("at %d: read %d bytes, want %d equal to the file's", off, n, want)
		}
	}
	if n, err := ReadAligned(f, b, 4*Align); n != 0 || err != nil {
		t.Fatalf("past the end: %d bytes, %v", n, err)
	}
}
