package e2e

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// smallExt4 mounts a fresh ext4 file system of size bytes at dir (a loop
// device over an image file) for the roles of c, and returns a ballast
// file filling all of it but free bytes: removing the ballast is the
// operator freeing space. (Growing the file system online needs
// CAP_SYS_RESOURCE, which a container may not have.)
func smallExt4(t *testing.T, c *cluster, dir string, size, free int64) (ballast string) {
	t.Helper()
	requireRoot(t)
	requireTools(t, "mkfs.ext4", "losetup", "fallocate")
	img := dir + ".fs"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	run(t, "mkfs.ext4", "-q", "-F", "-m", "0", img)
	dev := loopDevice(t, img)
	run(t, "mount", dev, dir)
	// Unmounted after the roles are gone (the cluster's own cleanup runs
	// after this one), or the mount would be busy.
	t.Cleanup(func() {
		c.ag.kill9()
		c.ps.kill9()
		c.mt.kill9()
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	avail := int64(st.Bavail) * st.Bsize
	ballast = filepath.Join(dir, "ballast")
	run(t, "fallocate", "-l", fmt.Sprint(avail-free), ballast)
	return ballast
}

// TestFullMasterTargetDisk fills the master target's file system under
// writes, twice: first while the replica is still sparse (the intake and
// the replica run out of room), then once it is whole (the undo journal and
// the intake do). Each time the master target must say why it stopped, and
// once the operator frees space the replica must converge, with nothing
// lost and without a restart: a stopped apply reopens the machine from its
// files by itself.
func TestFullMasterTargetDisk(t *testing.T) {
	requireTools(t, "nbdcopy")
	const size = 64 << 20
	c := newCluster(t, []int64{size})
	dir := filepath.Join(c.dir, "secondary")
	ballast := smallExt4(t, c, dir, 512<<20, 24<<20)
	c.startAll()
	write := func(seed byte) {
		src := filepath.Join(c.dir, "random.img")
		data := make([]byte, size)
		if _, err := rand.Read(data); err != nil {
			t.Fatal(err)
		}
		data[0] = seed
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		run(t, "nbdcopy", src, c.nbdURI(0))
	}
	full := func(what string) {
		waitFor(t, what, 2*time.Minute, func() bool {
			return logContains(c.mt.log, "no space left on device")
		})
	}

	// 1. A sparse replica: 24 MiB free for 64 MiB of writes.
	write(1)
	full("the master target to report a full file system")
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	c.waitIdentical(2 * time.Minute)

	// 2. A whole replica: overwrites need the journal's before-images.
	// The intake refuses and is retried; the journal's failure stops
	// apply, and only a reopen brings it back.
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	run(t, "fallocate", "-l", fmt.Sprint(int64(st.Bavail)*st.Bsize-24<<20), ballast)
	if err := os.Truncate(c.mt.log, 0); err != nil {
		t.Fatal(err)
	}
	write(2)
	waitFor(t, "apply to stop on the full file system", 2*time.Minute, func() bool {
		return logContains(c.mt.log, "apply stopped")
	})
	ms, err := c.mtStatusNow()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms.Machines) != 1 || !strings.Contains(ms.Machines[0].ApplyError, "no space left on device") {
		t.Fatalf("master target status does not say why apply stopped: %+v", ms.Machines)
	}
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	c.waitIdentical(2 * time.Minute)
	if !logContains(c.mt.log, "machine reopened after apply stopped") {
		t.Fatal("the replica converged but the master target's log does not show the machine reopened")
	}
	if ms, err := c.mtStatusNow(); err != nil || ms.Machines[0].ApplyError != "" {
		t.Fatalf("apply error still reported after the reopen: %+v, %v", ms.Machines, err)
	}
}

// TestFullProcessServerDisk fills the process server's cache file system
// under writes: the process server must say why it refuses batches, the
// agent must keep what it could not hand over (its queue, then its dirty
// bitmap), and once space is freed the replica must converge.
func TestFullProcessServerDisk(t *testing.T) {
	requireTools(t, "nbdcopy")
	const size = 64 << 20
	c := newCluster(t, []int64{size})
	ballast := smallExt4(t, c, filepath.Join(c.dir, "ps-cache"), 256<<20, 16<<20)
	c.startAll()
	src := filepath.Join(c.dir, "random.img")
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	// Stop the master target so the cache cannot drain into it.
	c.mt.stop()
	run(t, "nbdcopy", src, c.nbdURI(0))
	waitFor(t, "the process server to report a full file system", 2*time.Minute, func() bool {
		return logContains(c.ps.log, "no space left on device")
	})
	// The agent says why, and holds what it could not hand over.
	waitFor(t, "the agent's status to give the process server's reason", time.Minute, func() bool {
		as, err := c.agentStatus()
		return err == nil && strings.Contains(as.ConnError, "no space left on device")
	})
	as, err := c.agentStatus()
	if err != nil {
		t.Fatal(err)
	}
	if as.QueueBytes == 0 && !as.BitmapMode {
		t.Fatalf("agent holds nothing while the process server refuses: %+v", as)
	}
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	c.mt.start()
	c.waitIdentical(2 * time.Minute)
}
