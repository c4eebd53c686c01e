package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// blockDevice is a real block device on the agent's export: nbdfuse makes
// the export a file, losetup makes the file a block device.
type blockDevice struct {
	t       *testing.T
	fuseDir string
	nbdfuse *exec.Cmd
	exited  chan error
	dev     string
}

func attachExport(t *testing.T, uri string) *blockDevice {
	t.Helper()
	requireRoot(t)
	requireTools(t, "nbdfuse", "fusermount3", "losetup")
	b := &blockDevice{t: t, fuseDir: t.TempDir(), exited: make(chan error, 1)}
	pid := filepath.Join(t.TempDir(), "nbdfuse.pid")
	var out bytes.Buffer
	b.nbdfuse = exec.Command("nbdfuse", "-P", pid, filepath.Join(b.fuseDir, "disk"), uri)
	b.nbdfuse.Stdout, b.nbdfuse.Stderr = &out, &out
	if err := b.nbdfuse.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.exited <- b.nbdfuse.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(pid); err == nil {
			break
		}
		select {
		case err := <-b.exited:
			t.Fatalf("nbdfuse exited: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdfuse not ready\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.dev = strings.TrimSpace(run(t, "losetup", "-f", "--show", filepath.Join(b.fuseDir, "disk")))
	t.Cleanup(b.detach)
	return b
}

func (b *blockDevice) detach() {
	if b.dev != "" {
		_ = exec.Command("losetup", "-d", b.dev).Run()
		b.dev = ""
	}
	if b.nbdfuse != nil {
		// The loop device lets go of the file asynchronously: retry the
		// unmount for a while, then detach lazily rather than leave a dead
		// FUSE mount behind.
		for i := 0; i < 50; i++ {
			if exec.Command("fusermount3", "-u", b.fuseDir).Run() == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
			if i == 49 {
				b.t.Errorf("fusermount3 -u %s kept failing; unmounting lazily", b.fuseDir)
				_ = exec.Command("fusermount3", "-uz", b.fuseDir).Run()
			}
		}
		select {
		case <-b.exited:
		case <-time.After(10 * time.Second):
			b.nbdfuse.Process.Kill()
			<-b.exited
		}
		b.nbdfuse = nil
	}
}

func mount(t *testing.T, args ...string) string {
	t.Helper()
	dir := args[len(args)-1]
	run(t, "mount", args...)
	t.Cleanup(func() { _ = exec.Command("umount", dir).Run() })
	return dir
}

// writeFiles writes random files, each fsynced, and returns their sums.
func writeFiles(t *testing.T, root string, rng *rand.Rand, n int) map[string][32]byte {
	t.Helper()
	sums := map[string][32]byte{}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("d%d/f%03d.bin", i%5, i)
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		data := make([]byte, 1+rng.IntN(3<<20))
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		f.Close()
		sums[name] = sha256.Sum256(data)
	}
	return sums
}

func checkFiles(t *testing.T, root string, sums map[string][32]byte) {
	t.Helper()
	for name, want := range sums {
		got, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Errorf("replica: %v", err)
			continue
		}
		if sha256.Sum256(got) != want {
			t.Errorf("replica: %s has different content", name)
		}
	}
}

// TestExt4OnAgentExport runs a real ext4 on a loop device over nbdfuse over
// the agent's export; the replica is a clean ext4 with the same files.
func TestExt4OnAgentExport(t *testing.T) {
	requireTools(t, "mkfs.ext4", "e2fsck", "mount", "umount")
	c := newCluster(t, []int64{512 << 20})
	c.startAll()
	bd := attachExport(t, c.nbdURI(0))
	run(t, "mkfs.ext4", "-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", bd.dev)
	fs := mount(t, bd.dev, t.TempDir())
	rng := rand.New(rand.NewPCG(9, uint64(time.Now().UnixNano())))
	sums := writeFiles(t, fs, rng, 40)
	// Churn: delete and rewrite some files so blocks are reused.
	for name := range sums {
		if rng.IntN(4) == 0 {
			if err := os.Remove(filepath.Join(fs, name)); err != nil {
				t.Fatal(err)
			}
			delete(sums, name)
		}
	}
	for k, v := range writeFiles(t, filepath.Join(fs, "second"), rng, 20) {
		sums["second/"+k] = v
	}
	unix.Sync()
	run(t, "fstrim", fs) // TRIM through the loop device and nbdfuse to the agent
	run(t, "umount", fs)
	bd.detach()

	c.waitIdentical(3 * time.Minute)
	run(t, "e2fsck", "-fn", c.replica(0))
	ro := mount(t, "-o", "loop,ro", c.replica(0), t.TempDir())
	checkFiles(t, ro, sums)
	run(t, "umount", ro)
}
