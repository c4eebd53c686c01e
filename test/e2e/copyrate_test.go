package e2e

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var resyncTookRE = regexp.MustCompile(`resync complete.* disk=disk0 took=(\S+)`)

// TestCopyRateCapsInitialCopy runs the initial copy under --copy-rate: it
// reads the disk's data no faster than the cap, does not count the holes
// of a sparse disk, leaves writes through the export unheld, and the
// replica comes out identical.
func TestCopyRateCapsInitialCopy(t *testing.T) {
	requireTools(t, "qemu-io")
	const size = 1 << 30 // mostly holes: at the cap they would take 128 s
	const capRate = 8 << 20
	c := newCluster(t, []int64{size}, func(c *cluster) {
		c.extraAgent = []string{"--copy-rate", fmt.Sprint(capRate)}
	})
	fillRandom(t, c.disks[0], 11, 24)
	var st syscall.Stat_t
	if err := syscall.Stat(c.disks[0], &st); err != nil {
		t.Fatal(err)
	}
	data := st.Blocks * 512
	c.mt.start()
	c.ps.start()
	c.ag.start()
	c.waitSocket()

	// The cap shows in the status, and a workload write during the copy
	// goes through.
	as, err := c.agentStatus()
	if err != nil {
		t.Fatal(err)
	}
	if as.CopyRateLimit != capRate {
		t.Fatalf("status copy_rate_limit_bytes_per_sec = %d, want %d", as.CopyRateLimit, capRate)
	}
	if out := cli(t, "status", c.agStat); !strings.Contains(out, "copies capped at 8.0MiB/s") {
		t.Fatalf("standby status does not show the cap:\n%s", out)
	}
	if as.Disks[0].State == "replicating" {
		t.Fatalf("initial copy of %d bytes at %d bytes/s already done when the export came up: nothing was capped", data, capRate)
	}
	runQemuIO(t, c.nbdURI(0), "write -P 0x5a 512M 1M\nflush\n")
	c.waitIdentical(2 * time.Minute)

	b, _ := os.ReadFile(c.ag.log)
	m := resyncTookRE.FindSubmatch(b)
	if m == nil {
		t.Fatal("agent log has no 'resync complete' for disk0")
	}
	took, err := time.ParseDuration(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	// The bucket starts full (a tenth of a second's worth, at least one
	// 4 MiB chunk); the rest of the data can go no faster than the cap.
	burst := max(int64(capRate/10), 4<<20)
	floor := time.Duration(float64(data-burst) / capRate * float64(time.Second))
	t.Logf("initial copy of %d data bytes (%d-byte disk) took %v at a cap of %d bytes/s (floor %v)", data, size, took, capRate, floor)
	if took < floor-100*time.Millisecond {
		t.Fatalf("initial copy of %d bytes took %v: faster than the cap of %d bytes/s allows (%v)", data, took, capRate, floor)
	}
	// Holes are not read and must not be paced: at the cap the whole
	// disk would take 128 s.
	if took > 60*time.Second {
		t.Fatalf("initial copy took %v: the cap is charging the disk's holes", took)
	}
}

var scanTookRE = regexp.MustCompile(`scan pass done.* disk=disk0 .*took=(\S+)`)

// TestCopyRateCapsScanPass: a scan pass reads the whole disk, holes too,
// and --copy-rate paces all of it.
func TestCopyRateCapsScanPass(t *testing.T) {
	const size = 48 << 20
	const capRate = 16 << 20
	c := newCluster(t, []int64{size}, func(c *cluster) {
		c.extraAgent = []string{"--copy-rate", fmt.Sprint(capRate)}
	})
	fillRandom(t, c.disks[0], 12, 8)
	for i, a := range c.ag.args {
		if a == "--disk" {
			c.ag.args[i+1] += ",mode=scan,interval=1h"
		}
	}
	c.mt.start()
	c.ps.start()
	c.ag.start()
	c.waitIdentical(2 * time.Minute)
	b, _ := os.ReadFile(c.ag.log)
	m := scanTookRE.FindSubmatch(b)
	if m == nil {
		t.Fatal("agent log has no 'scan pass done' for disk0")
	}
	took, err := time.ParseDuration(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	burst := max(int64(capRate/10), 4<<20)
	floor := time.Duration(float64(size-burst) / capRate * float64(time.Second))
	t.Logf("scan pass of a %d-byte disk took %v at a cap of %d bytes/s (floor %v)", size, took, capRate, floor)
	if took < floor-100*time.Millisecond {
		t.Fatalf("scan pass of %d bytes took %v: faster than the cap of %d bytes/s allows (%v)", size, took, capRate, floor)
	}
}

// TestBandwidthScheduleThrottlesTheLink: a bandwidth_schedule entry in
// force holds the process server's link to its rate, and the status says
// which entry it is.
func TestBandwidthScheduleThrottlesTheLink(t *testing.T) {
	const size = 64 << 20
	const linkRate = 4 << 20
	entry := fmt.Sprintf("* 00:00-24:00 %d", linkRate)
	c := newCluster(t, []int64{size}, func(c *cluster) {
		c.extraPS = []string{"--bandwidth", "0", "--bandwidth-schedule", entry}
	})
	fillRandom(t, c.disks[0], 13, 24)
	var st syscall.Stat_t
	if err := syscall.Stat(c.disks[0], &st); err != nil {
		t.Fatal(err)
	}
	data := st.Blocks * 512
	c.mt.start()
	c.ps.start()
	c.ag.start()
	c.waitSocket()
	ps, err := c.psStatusNow()
	if err != nil {
		t.Fatal(err)
	}
	if ps.Bandwidth != linkRate || ps.BandwidthWindow != entry {
		t.Fatalf("process server status: bandwidth %d, window %q; want %d, %q", ps.Bandwidth, ps.BandwidthWindow, linkRate, entry)
	}
	if out := cli(t, "status", c.psStatus); !strings.Contains(out, "bandwidth 4.0MiB/s (schedule: "+entry+")") {
		t.Fatalf("standby status does not show the limit and its entry:\n%s", out)
	}
	c.waitIdentical(2 * time.Minute)
	b, _ := os.ReadFile(c.ag.log)
	m := resyncTookRE.FindSubmatch(b)
	if m == nil {
		t.Fatal("agent log has no 'resync complete' for disk0")
	}
	took, err := time.ParseDuration(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	// Random data does not compress: every byte crosses the link. The
	// bucket starts with 8 MiB (the process server's least burst).
	floor := time.Duration(float64(data-8<<20) / linkRate * float64(time.Second))
	t.Logf("initial copy of %d data bytes over a %d bytes/s link took %v (floor %v)", data, linkRate, took, floor)
	if took < floor-100*time.Millisecond {
		t.Fatalf("initial copy of %d bytes took %v: faster than the scheduled %d bytes/s allow (%v)", data, took, linkRate, floor)
	}
}
