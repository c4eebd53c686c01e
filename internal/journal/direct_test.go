package journal

import (
	"bytes"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"standby/internal/blockdev"
	"standby/internal/directio/directiotest"
)

// Segments are appended past the page cache (internal/directio), which
// leaves zeros after the active segment's data up to a block boundary. A
// clean Close cuts them, so every segment file holds exactly its records;
// a crash leaves them, and Open must take them for the torn end of an
// append and keep every record before them.
func TestUncachedAppendPadding(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 9))
	r := newRig(t, smallSizes, Options{SegmentSize: 512 << 10})
	ops := genOps(seed, smallSizes, 300, 1)
	r.applyAll(ops)
	if r.j.cached {
		t.Fatal("the file system of the test's temporary directory refused O_DIRECT: the test needs one that takes it")
	}
	before := r.j.Stats()
	act := r.j.active
	fi, err := os.Stat(act.path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size()%4096 != 0 || fi.Size() < act.written || fi.Size()-act.written >= 4096 {
		t.Fatalf("active segment file is %d bytes for %d bytes of data: want it padded to the next 4 KiB", fi.Size(), act.written)
	}

	// A crash now: copy the files as they are, padding included.
	crashed := t.TempDir()
	copyTree(t, r.dir, crashed)
	var logs bytes.Buffer
	c := &rig{t: t, dir: crashed, sizes: smallSizes, opts: Options{SegmentSize: 512 << 10, Logger: slog.New(slog.NewTextHandler(&logs, nil))}}
	c.openReplicas()
	c.open()
	after := c.j.Stats()
	if after.LastSeq != before.LastSeq || after.Records != before.Records {
		t.Fatalf("after the crash: last seq %d, %d records; before it %d, %d", after.LastSeq, after.Records, before.LastSeq, before.Records)
	}
	if !strings.Contains(logs.String(), "torn tail") {
		t.Fatalf("Open after a crash did not report the padding as a torn tail; log:\n%s", logs.String())
	}
	checkPoints(t, c.j, smallSizes, ops, spreadPoints(ops, 8, rng))
	c.close()

	// A clean stop leaves no padding.
	r.close()
	segs, err := filepath.Glob(filepath.Join(r.journalDir(), "*"+segSuffix))
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, p := range segs {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
	}
	if total != before.Bytes {
		t.Fatalf("segment files hold %d bytes after Close, the journal %d", total, before.Bytes)
	}
	var quiet bytes.Buffer
	r.opts.Logger = slog.New(slog.NewTextHandler(&quiet, nil))
	r.openReplicas()
	r.open()
	if strings.Contains(quiet.String(), "torn tail") {
		t.Fatalf("Open after a clean Close found a torn tail:\n%s", quiet.String())
	}
	checkPoints(t, r.j, smallSizes, ops, spreadPoints(ops, 8, rng))
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(dst)
		if err != nil {
			return err
		}
		defer out.Close()
		_, err = io.Copy(out, in)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// On a file system that refuses O_DIRECT (a ramfs) the journal writes its
// segments through the page cache, says so, and every point stays exact
// across a reopen.
func TestUncachedRefusedFallsBackToTheCache(t *testing.T) {
	dir := directiotest.RefusingDir(t)
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 10))
	var logs bytes.Buffer
	r := &rig{t: t, dir: dir, sizes: smallSizes, opts: Options{SegmentSize: 512 << 10, Logger: slog.New(slog.NewTextHandler(&logs, nil))}}
	for i, s := range smallSizes {
		if err := blockdev.Create(r.replicaPath(i), s); err != nil {
			t.Fatal(err)
		}
	}
	r.openReplicas()
	r.open()
	t.Cleanup(r.close) // before the unmount
	ops := genOps(seed, smallSizes, 300, 1)
	r.applyAll(ops)
	if !r.j.cached {
		t.Fatal("the ramfs took O_DIRECT: the test needs a file system that refuses it")
	}
	if !strings.Contains(logs.String(), "refuses O_DIRECT") {
		t.Fatalf("the fallback was not logged:\n%s", logs.String())
	}
	checkPoints(t, r.j, smallSizes, ops, spreadPoints(ops, 8, rng))
	r.close()
	r.openReplicas()
	r.open()
	defer r.close()
	checkPoints(t, r.j, smallSizes, ops, spreadPoints(ops, 8, rng))
}
