package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"standby/internal/agent"
)

// fillRandom writes n MiB of pseudo-random data at random MiB offsets of
// a disk, leaving the rest as holes, so the initial copy has both data to
// send and zeros to skip.
func fillRandom(t *testing.T, path string, seed uint64, mib int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd) // a block device's Stat says 0
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	buf := make([]byte, 1<<20)
	for i := 0; i < mib; i++ {
		for j := 0; j < len(buf); j += 8 {
			v := rng.Uint64()
			for k := 0; k < 8; k++ {
				buf[j+k] = byte(v >> (8 * k))
			}
		}
		off := rng.Int64N(size>>20) << 20
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
}

// qemuIOScript makes a random workload for qemu-io: overlapping writes of
// 512 B to 1 MiB, some in parallel (aio), TRIM, WRITE_ZEROES and flushes.
func qemuIOScript(rng *rand.Rand, size int64, n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		length := int64(512) << rng.IntN(12) // 512 B .. 1 MiB
		if length > 1<<20 {
			length = 1 << 20
		}
		off := rng.Int64N((size-length)/512) * 512
		switch r := rng.IntN(100); {
		case r < 60:
			fmt.Fprintf(&b, "write -P 0x%02x %d %d\n", rng.IntN(255)+1, off, length)
		case r < 75:
			// a burst of overlapping parallel writes
			for k := 0; k < 4; k++ {
				o := off + int64(rng.IntN(8))*512
				if o+length > size {
					o = size - length
				}
				fmt.Fprintf(&b, "aio_write -P 0x%02x %d %d\n", rng.IntN(255)+1, o, length)
			}
			b.WriteString("aio_flush\n")
		case r < 85:
			fmt.Fprintf(&b, "discard %d %d\n", off, length)
		case r < 95:
			fmt.Fprintf(&b, "write -z %d %d\n", off, length)
		default:
			b.WriteString("flush\n")
		}
	}
	return b.String()
}

func runQemuIO(t *testing.T, uri, script string) {
	t.Helper()
	cmd := exec.Command("qemu-io", "-f", "raw", uri)
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io failed: %v\n%s", err, tail(out))
	}
	if bytes.Contains(out, []byte("failed")) || bytes.Contains(out, []byte("error")) {
		t.Fatalf("qemu-io reported an error:\n%s", tail(out))
	}
}

func tail(b []byte) []byte {
	if len(b) > 4000 {
		return b[len(b)-4000:]
	}
	return b
}

// TestQemuIORandomWritesDuringInitialSync: a machine with two disks, real
// qemu-io writes through the agent's NBD export while the initial copy is
// still running; after draining, both replicas are byte-identical.
func TestQemuIORandomWritesDuringInitialSync(t *testing.T) {
	requireTools(t, "qemu-io")
	const size = 256 << 20
	c := newCluster(t, []int64{size, size / 2})
	fillRandom(t, c.disks[0], 1, 96)
	fillRandom(t, c.disks[1], 2, 32)
	c.startAll()

	rng := rand.New(rand.NewPCG(42, uint64(time.Now().UnixNano())))
	sawInitial := false
	for round := 0; round < 6; round++ {
		if st, err := c.agentStatus(); err == nil {
			for _, d := range st.Disks {
				if d.State == agent.StateInitialSync {
					sawInitial = true
				}
			}
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			runQemuIO(t, c.nbdURI(1), qemuIOScript(rng, size/2, 100))
		}()
		runQemuIO(t, c.nbdURI(0), qemuIOScript(rng, size, 150))
		<-done
	}
	if !sawInitial {
		t.Log("note: the initial copy finished before the first status sample")
	}
	c.waitIdentical(3 * time.Minute)
	st, err := c.agentStatus()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range st.Disks {
		if d.State != agent.StateReplicating {
			t.Errorf("disk %s state %s after drain, want replicating", d.Name, d.State)
		}
	}
	// Replicas are sparse: the holes of the source were not sent as data.
	if used, src := allocated(t, c.replica(0)), allocated(t, c.disks[0]); used > src+16<<20 {
		t.Errorf("replica of disk0 allocates %d MiB, the source %d MiB: holes should stay holes", used>>20, src>>20)
	}
}

// TestLoopDeviceProtected: a machine whose first disk is a block device (a
// loop device) and whose second is an image file. The agent protects both
// through the initial copy, qemu-io writes and a kill -9 of the agent; the
// replicas end identical to the device and the file.
func TestLoopDeviceProtected(t *testing.T) {
	requireTools(t, "qemu-io")
	const size = 64 << 20
	c := newCluster(t, []int64{size, size / 2}, withLoopDisks(0))
	if !strings.HasPrefix(c.disks[0], "/dev/loop") {
		t.Fatalf("disk0 is %s, not a loop device", c.disks[0])
	}
	fillRandom(t, c.disks[0], 3, 24) // through the block device
	fillRandom(t, c.disks[1], 4, 8)
	c.startAll()
	rng := rand.New(rand.NewPCG(43, uint64(time.Now().UnixNano())))
	runQemuIO(t, c.nbdURI(0), qemuIOScript(rng, size, 150))
	runQemuIO(t, c.nbdURI(1), qemuIOScript(rng, size/2, 80))
	c.ag.kill9()
	c.ag.start()
	c.waitSocket()
	runQemuIO(t, c.nbdURI(0), qemuIOScript(rng, size, 100))
	c.waitIdentical(3 * time.Minute)
	st, err := c.agentStatus()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Disks) != 2 || st.Disks[0].Size != size || st.Disks[1].Size != size/2 {
		t.Fatalf("agent reports disks %+v, want sizes %d and %d", st.Disks, size, size/2)
	}
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}
