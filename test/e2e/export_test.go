package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"standby/internal/mastertarget"
)

func cli(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(standbyBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("standby %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestExportAndViewsThroughCLI drives the operator's commands: bookmark,
// points list, view open/list/close, and export of a point as raw, qcow2
// and VMDK; qemu-img must read each image, qcow2 must pass qemu-img check,
// and every image must equal the source at the bookmark.
func TestExportAndViewsThroughCLI(t *testing.T) {
	requireTools(t, "qemu-img", "nbdinfo")
	const size = 96 << 20
	c := newCluster(t, []int64{size}, func(c *cluster) { c.extraMT = []string{"--point-interval", "1s"} })
	fillRandom(t, c.disks[0], 31, 40)
	c.startAll()
	w := startWriter(t, c, 1, size, 31)
	time.Sleep(3 * time.Second)
	w.finish()
	// The source holds still from here: a bookmark marks exactly it.
	out := cli(t, "bookmark", "--agent", c.agStat, "--name", "golden")
	t.Log(strings.TrimSpace(out))
	c.waitIdentical(time.Minute)
	source := filepath.Join(t.TempDir(), "source.raw")
	run(t, "cp", "--sparse=always", c.disks[0], source)

	var pts []mastertarget.PointInfo
	if err := json.Unmarshal([]byte(cli(t, "points", "list", "--master-target", c.mtStatus, "--machine", c.machine, "-o", "json")), &pts); err != nil {
		t.Fatal(err)
	}
	var golden *mastertarget.PointInfo
	for i := range pts {
		if pts[i].Name == "golden" {
			golden = &pts[i]
		}
	}
	if golden == nil {
		t.Fatalf("no point named golden in %+v", pts)
	}
	id := strings.TrimSpace(strings.Split(cli(t, "points", "tag", "--master-target", c.mtStatus, "--machine", c.machine, "--name", "kept", "latest"), " ")[1])
	t.Logf("tagged latest point %s", id)

	// A view through the CLI; nbdinfo (a client we did not write) reads it.
	var v mastertarget.ViewInfo
	if err := json.Unmarshal([]byte(cli(t, "view", "open", "--master-target", c.mtStatus, "--machine", c.machine, "--point", jsonID(golden.ID), "-o", "json")), &v); err != nil {
		t.Fatal(err)
	}
	info := run(t, "nbdinfo", v.Exports[0].URI)
	if !strings.Contains(info, "96M") && !strings.Contains(info, "100663296") {
		t.Errorf("nbdinfo of the view:\n%s", info)
	}
	viewCopy := filepath.Join(t.TempDir(), "view.raw")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", v.Exports[0].URI, viewCopy)
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", viewCopy, source)
	if !strings.Contains(cli(t, "view", "list", "--master-target", c.mtStatus), v.ID) {
		t.Error("view list does not show the open view")
	}
	cli(t, "view", "close", "--master-target", c.mtStatus, v.ID)

	dir := t.TempDir()
	for _, f := range []struct{ format, file, qemuFmt string }{{"raw", "golden.raw", "raw"}, {"qcow2", "golden.qcow2", "qcow2"}, {"vmdk", "golden.vmdk", "vmdk"}} {
		path := filepath.Join(dir, f.file)
		out := cli(t, "export", "--master-target", c.mtStatus, "--machine", c.machine, "--point", jsonID(golden.ID), "--format", f.format, "--path", path)
		t.Logf("%s: %s", f.format, strings.TrimSpace(out))
		if f.format == "qcow2" {
			run(t, "qemu-img", "check", "-f", "qcow2", path)
		}
		run(t, "qemu-img", "compare", "-f", f.qemuFmt, "-F", "raw", path, source)
	}
	// Sparse: the raw export allocates about the data, not the disk.
	if used := allocated(t, filepath.Join(dir, "golden.raw")); used > 80<<20 {
		t.Errorf("raw export allocates %d MiB of a 96 MiB disk holding ~45 MiB", used>>20)
	}
	// A point outside retention is a clear error.
	out2, err := exec.Command(standbyBin, "export", "--master-target", c.mtStatus, "--machine", c.machine, "--point", "999999", "--format", "raw", "--path", filepath.Join(dir, "x.raw")).CombinedOutput()
	if err == nil || !strings.Contains(string(out2), "no such recovery point") {
		t.Errorf("export of a missing point: %v %s", err, out2)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.raw")); err == nil {
		t.Error("a failed export left a file")
	}
}

func jsonID(id uint64) string {
	b, _ := json.Marshal(id)
	return string(b)
}
