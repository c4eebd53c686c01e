package e2e

import (
	"math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// TestScanMode protects a disk the agent is not in front of: it is written
// directly, and periodic fingerprint passes send only the changed blocks.
func TestScanMode(t *testing.T) {
	const size = 64 << 20
	// Scan mode: no NBD export for this disk, a pass every second.
	c := newCluster(t, []int64{size}, func(c *cluster) { c.scanEvery = "1s" })
	fillRandom(t, c.disks[0], 6, 24)
	c.mt.start()
	c.ps.start()
	c.ag.start()
	c.waitIdentical(2 * time.Minute)

	logBefore, _ := os.ReadFile(c.ag.log)
	// Change 40 blocks of 64 KiB behind the agent's back.
	f, err := os.OpenFile(c.disks[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(8, 8))
	buf := make([]byte, 64<<10)
	changed := map[int64]bool{}
	for len(changed) < 40 {
		blk := rng.Int64N(size / int64(len(buf)))
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(buf, blk*int64(len(buf))); err != nil {
			t.Fatal(err)
		}
		changed[blk] = true
	}
	f.Close()
	want := int64(len(changed)) * int64(len(buf))
	waitFor(t, "scan passes to pick up the change", time.Minute, func() bool {
		return changedSince(c.ag.log, len(logBefore)) >= want
	})
	c.waitIdentical(time.Minute)
	// Only changed blocks were sent; a block written while a pass was
	// reading it may be sent by two passes, never more.
	if got := changedSince(c.ag.log, len(logBefore)); got > 2*want {
		t.Fatalf("scan sent %d bytes for %d changed", got, want)
	}
}

var changedRE = regexp.MustCompile(`scan pass done.* changed_bytes=(\d+)`)

// changedSince sums changed_bytes of the scan passes logged after offset.
func changedSince(log string, offset int) int64 {
	b, _ := os.ReadFile(log)
	var sum int64
	for _, m := range changedRE.FindAllSubmatch(b[offset:], -1) {
		n, _ := strconv.ParseInt(string(m[1]), 10, 64)
		sum += n
	}
	return sum
}
