package seglog

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"

	"standby/internal/directio/directiotest"
)

// directEnv makes every log the tests open write and read past the page
// cache (Options.Direct), as the master target's intake does.
const directEnv = "STANDBY_SEGLOG_DIRECT"

// TestEverythingUncached runs the package's tests again with
// Options.Direct on: appends, readers following the writer, trimming,
// reused spares, recovery after torn appends and kill -9.
func TestEverythingUncached(t *testing.T) {
	if os.Getenv(directEnv) != "" {
		return // this is the run it starts
	}
	if testing.Short() {
		t.Skip("runs the package's tests a second time")
	}
	cmd := exec.Command(os.Args[0], "-test.run", ".", "-test.skip", "TestEverythingUncached|TestHelperProcess", "-test.count", "1")
	cmd.Env = append(os.Environ(), directEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the tests with Options.Direct on failed: %v\n%s", err, out)
	}
}

// With Options.Direct the active segment ends in zeros up to a block
// boundary; sealing and Close cut them, and after a crash Open takes them
// for a torn append and keeps every entry before them.
func TestDirectPaddingIsCutOrRecovered(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, Options{SegmentSize: 64 << 10, Direct: true})
	rng := rand.New(rand.NewPCG(11, 12))
	es := genEntries(rng, 1, 40, 9000)
	appendAll(t, l, es, true)
	if l.cached {
		t.Fatal("the file system of the test's temporary directory refused O_DIRECT: the test needs one that takes it")
	}
	files := segmentFiles(t, dir)
	if len(files) < 2 {
		t.Fatalf("%d segments: the test needs a sealed one", len(files))
	}
	l.mu.Lock()
	sizes := map[string]int64{}
	for _, s := range l.segs {
		sizes[s.path] = s.size
	}
	l.mu.Unlock()
	for i, p := range files {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		data := sizes[p]
		if i < len(files)-1 && fi.Size() != data {
			t.Fatalf("sealed segment %s is %d bytes for %d of records: its padding was not cut", p, fi.Size(), data)
		}
		if i == len(files)-1 && (fi.Size()%4096 != 0 || fi.Size()-data >= 4096 || fi.Size() < data) {
			t.Fatalf("active segment %s is %d bytes for %d of records: want them padded to 4 KiB", p, fi.Size(), data)
		}
	}

	// A crash now: the copy keeps the padding.
	logger, records := newRecordingLogger()
	c, err := Open(copyDir(t, dir), Options{Logger: logger, Direct: true})
	if err != nil {
		t.Fatal(err)
	}
	sameEntries(t, readAllEntries(t, c), es)
	if len(tornWarnings(records())) != 1 {
		t.Fatalf("Open after a crash reported %d torn tails, want the padding as one", len(tornWarnings(records())))
	}
	c.Close()

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if !filesHoldExactly(t, dir, sizes) {
		t.Fatal("Close left padding after the records")
	}
	logger, records = newRecordingLogger()
	l, err = Open(dir, Options{Logger: logger, Direct: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sameEntries(t, readAllEntries(t, l), es)
	if n := len(tornWarnings(records())); n != 0 {
		t.Fatalf("Open after a clean Close reported %d torn tails", n)
	}
}

func filesHoldExactly(t *testing.T, dir string, sizes map[string]int64) bool {
	t.Helper()
	for _, p := range segmentFiles(t, dir) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != sizes[p] {
			return false
		}
	}
	return true
}

// On a file system that refuses O_DIRECT, a Direct log writes and reads
// through the page cache, says so once, and loses nothing.
func TestDirectRefusedFallsBackToTheCache(t *testing.T) {
	dir := directiotest.RefusingDir(t)
	logger, records := newRecordingLogger()
	l, err := Open(dir, Options{SegmentSize: 64 << 10, Direct: true, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() }) // before the unmount; Close twice is harmless
	rng := rand.New(rand.NewPCG(13, 14))
	es := genEntries(rng, 1, 40, 9000)
	appendAll(t, l, es, true)
	if !l.cached {
		t.Fatal("the ramfs took O_DIRECT: the test needs a file system that refuses it")
	}
	sameEntries(t, readAllEntries(t, l), es)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	said := 0
	for _, r := range records() {
		if strings.Contains(r.Message, "refuses O_DIRECT") {
			said++
		}
	}
	if said != 1 {
		t.Fatalf("the fallback was logged %d times, want once", said)
	}
	l = mustOpen(t, dir, Options{Direct: true})
	defer l.Close()
	sameEntries(t, readAllEntries(t, l), es)
}
