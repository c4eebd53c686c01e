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

var (
	resyncTookRE = regexp.MustCompile(`resync complete.* disk=disk0 took=(\S+)`)
	scanTookRE   = regexp.MustCompile(`scan pass done.* disk=disk0 .*took=(\S+)`)
)

// pacedCluster is a one-disk cluster with random data written into a
// sparse disk, its roles started; data is what the disk holds allocated.
func pacedCluster(t *testing.T, size int64, seed uint64, opt clusterOpt) (c *cluster, data int64) {
	t.Helper()
	c = newCluster(t, []int64{size}, opt)
	fillRandom(t, c.disks[0], seed, 24)
	var st syscall.Stat_t
	if err := syscall.Stat(c.disks[0], &st); err != nil {
		t.Fatal(err)
	}
	c.mt.start()
	c.ps.start()
	c.ag.start()
	c.waitSocket()
	return c, st.Blocks * 512
}

// tookFromLog is the duration an agent log line matching re reports.
func tookFromLog(t *testing.T, c *cluster, re *regexp.Regexp) time.Duration {
	t.Helper()
	b, _ := os.ReadFile(c.ag.log)
	m := re.FindSubmatch(b)
	if m == nil {
		t.Fatalf("agent log has no line matching %s", re)
	}
	took, err := time.ParseDuration(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	return took
}

// requirePaced fails when n bytes passed in less time than a token bucket
// of rate bytes/s starting with burst bytes allows. Only the lower bound is
// checked: a busy machine may take longer.
func requirePaced(t *testing.T, what string, took time.Duration, n, burst, rate int64) {
	t.Helper()
	floor := time.Duration(float64(n-burst) / float64(rate) * float64(time.Second))
	t.Logf("%s: %d bytes took %v at %d bytes/s (floor %v)", what, n, took, rate, floor)
	if took < floor-100*time.Millisecond {
		t.Fatalf("%s: %d bytes took %v, faster than %d bytes/s allow (%v)", what, n, took, rate, floor)
	}
}

// TestCopyRateCapsInitialCopy runs the initial copy under --copy-rate: it
// reads the disk's data no faster than the cap, does not count the holes
// of a sparse disk, leaves writes through the export unheld, and the
// replica comes out identical.
func TestCopyRateCapsInitialCopy(t *testing.T) {
	requireTools(t, "qemu-io")
	const size = 1 << 30 // mostly holes: at the cap they would take 128 s
	const capRate = 8 << 20
	c, data := pacedCluster(t, size, 11, func(c *cluster) {
		c.extraAgent = []string{"--copy-rate", fmt.Sprint(capRate)}
	})
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

	took := tookFromLog(t, c, resyncTookRE)
	// The bucket starts full (a tenth of a second's worth, at least one
	// 4 MiB chunk); the rest of the data can go no faster than the cap.
	requirePaced(t, "initial copy", took, data, max(capRate/10, 4<<20), capRate)
	// Holes are not read and must not be paced: at the cap the whole
	// disk would take 128 s.
	if took > 60*time.Second {
		t.Fatalf("initial copy took %v: the cap is charging the disk's holes", took)
	}
}

// TestCopyRateCapsScanPass: a scan pass reads the whole disk, holes too,
// and --copy-rate paces all of it.
func TestCopyRateCapsScanPass(t *testing.T) {
	const size = 48 << 20
	const capRate = 16 << 20
	c, _ := pacedCluster(t, size, 12, func(c *cluster) {
		c.extraAgent = []string{"--copy-rate", fmt.Sprint(capRate)}
		c.scanEvery = "1h"
	})
	c.waitIdentical(2 * time.Minute)
	requirePaced(t, "scan pass", tookFromLog(t, c, scanTookRE), size, max(capRate/10, 4<<20), capRate)
}

// TestBandwidthScheduleThrottlesTheLink: a bandwidth_schedule entry in
// force holds the process server's link to its rate, and the status says
// which entry it is.
func TestBandwidthScheduleThrottlesTheLink(t *testing.T) {
	const linkRate = 4 << 20
	entry := fmt.Sprintf("* 00:00-24:00 %d", linkRate)
	c, data := pacedCluster(t, 64<<20, 13, func(c *cluster) {
		c.extraPS = []string{"--bandwidth", "0", "--bandwidth-schedule", entry}
	})
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
	// Random data does not compress: every byte crosses the link. The
	// bucket starts with 8 MiB (the process server's least burst).
	requirePaced(t, "initial copy over the link", tookFromLog(t, c, resyncTookRE), data, 8<<20, linkRate)
}
