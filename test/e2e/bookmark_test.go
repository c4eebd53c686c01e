package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"standby/internal/agent"
	"standby/internal/mastertarget"
	"standby/internal/points"
	"standby/internal/statusapi"
)

// withFreezeHooks makes the agent freeze whatever file system is named in
// the file mntFile for app-consistent bookmarks.
func withFreezeHooks(mntFile string) clusterOpt {
	return func(c *cluster) {
		c.extraAgent = append(c.extraAgent,
			"--freeze-hook", fmt.Sprintf(`fsfreeze -f "$(cat %s)"`, mntFile),
			"--thaw-hook", fmt.Sprintf(`fsfreeze -u "$(cat %s)"`, mntFile),
			"--freeze-timeout", "3s")
	}
}

// TestAppConsistentBookmarksExt4: ext4 on the agent's export; files are
// written between bookmarks taken with fsfreeze hooks. Every bookmark point
// mounts read-only, passes e2fsck -fn, and holds exactly the files written
// before its bookmark.
func TestAppConsistentBookmarksExt4(t *testing.T) {
	requireTools(t, "mkfs.ext4", "e2fsck", "mount", "fsfreeze")
	mntFile := filepath.Join(t.TempDir(), "mountpoint")
	c := newCluster(t, []int64{256 << 20}, withFreezeHooks(mntFile), func(c *cluster) {
		c.extraMT = []string{"--point-interval", "1s"}
	})
	c.startAll()
	bd := attachExport(t, c.nbdURI(0))
	run(t, "mkfs.ext4", "-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", bd.dev)
	fs := mount(t, bd.dev, t.TempDir())
	if err := os.WriteFile(mntFile, []byte(fs), 0o600); err != nil {
		t.Fatal(err)
	}
	c.waitIdentical(2 * time.Minute) // the initial copy is done; bookmarks count from here
	rng := rand.New(rand.NewPCG(7, uint64(time.Now().UnixNano())))
	type round struct {
		name  string
		files map[string][32]byte // every file that exists at the bookmark
	}
	var rounds []round
	all := map[string][32]byte{}
	for i := 0; i < 4; i++ {
		for k, v := range writeFiles(t, filepath.Join(fs, fmt.Sprintf("round%d", i)), rng, 8) {
			all[fmt.Sprintf("round%d/%s", i, k)] = v
		}
		name := fmt.Sprintf("round-%d", i)
		var res agent.BookmarkResult
		if err := statusapi.Call(context.Background(), c.agStat, "POST", "/bookmark", agent.BookmarkRequest{Name: name}, &res); err != nil {
			t.Fatalf("bookmark %s: %v", name, err)
		}
		t.Logf("bookmark %s: seq %d, writes held %s", name, res.Seq, res.Held)
		snap := map[string][32]byte{}
		for k, v := range all {
			snap[k] = v
		}
		rounds = append(rounds, round{name: name, files: snap})
		// Writes after the bookmark that must not show in its point.
		for k, v := range writeFiles(t, filepath.Join(fs, fmt.Sprintf("late%d", i)), rng, 2) {
			all[fmt.Sprintf("late%d/%s", i, k)] = v
		}
	}
	// Wait for the last bookmark to reach the master target as a point.
	var pts []mastertarget.PointInfo
	waitFor(t, "the bookmark points", time.Minute, func() bool {
		pts = listPoints(t, c)
		n := 0
		for _, p := range pts {
			if p.Kind == points.KindApp {
				n++
			}
		}
		return n >= len(rounds)
	})
	byName := map[string]mastertarget.PointInfo{}
	for _, p := range pts {
		byName[p.Name] = p
	}
	for _, r := range rounds {
		p, ok := byName[r.name]
		if !ok || !p.Consistent {
			t.Fatalf("bookmark %s: no consistent point (%+v)", r.name, p)
		}
		var v mastertarget.ViewInfo
		if err := statusapi.Call(context.Background(), c.mtStatus, "POST", "/machines/"+c.machine+"/views", mastertarget.ViewRequest{Point: fmt.Sprint(p.ID)}, &v); err != nil {
			t.Fatal(err)
		}
		vd := attachExport(t, v.Exports[0].URI)
		run(t, "e2fsck", "-fn", vd.dev)
		ro := mount(t, "-o", "ro", vd.dev, t.TempDir())
		checkFiles(t, ro, r.files)
		var extra []string
		filepath.Walk(ro, func(path string, info os.FileInfo, err error) error {
			if err == nil && info.Mode().IsRegular() {
				rel, _ := filepath.Rel(ro, path)
				if _, ok := r.files[rel]; !ok {
					extra = append(extra, rel)
				}
			}
			return nil
		})
		if len(extra) > 0 {
			t.Errorf("point %s holds files written after its bookmark: %v", r.name, extra)
		}
		run(t, "umount", ro)
		vd.detach()
		if err := statusapi.Call(context.Background(), c.mtStatus, "DELETE", "/views/"+v.ID, nil, nil); err != nil {
			t.Fatal(err)
		}
		t.Logf("point %d (%s): e2fsck clean, %d files exact", p.ID, r.name, len(r.files))
	}
}

// TestBookmarkHoldBound: a freeze hook that takes longer than the bound
// makes the bookmark fail, the agent thaws, and no point is recorded.
func TestBookmarkHoldBound(t *testing.T) {
	flag := filepath.Join(t.TempDir(), "thawed")
	c := newCluster(t, []int64{8 << 20}, func(c *cluster) {
		c.extraAgent = []string{"--freeze-hook", "sleep 2", "--thaw-hook", "touch " + flag, "--freeze-timeout", "300ms"}
	})
	c.startAll()
	c.waitIdentical(time.Minute)
	start := time.Now()
	var res agent.BookmarkResult
	err := statusapi.Call(context.Background(), c.agStat, "POST", "/bookmark", agent.BookmarkRequest{Name: "slow"}, &res)
	if err == nil {
		t.Fatal("a bookmark whose freeze exceeded the bound succeeded")
	}
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("the failed bookmark took %s: the bound is 300ms", took)
	}
	t.Logf("refused: %v", err)
	st, _ := c.agentStatus()
	if st.BookmarkError == "" {
		t.Error("agent status does not report the failed bookmark")
	}
	if _, err := os.Stat(flag); err != nil {
		t.Error("the thaw hook did not run after the freeze timed out")
	}
	for _, p := range listPoints(t, c) {
		if p.Name == "slow" {
			t.Fatal("a point was recorded for the failed bookmark")
		}
	}
}
