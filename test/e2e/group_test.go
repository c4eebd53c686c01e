package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"standby/internal/points"
)

// TestConsistencyGroupBookmark: two machines take one bookmark through a
// coordinated barrier (prepare both, mark both, release); each gets a
// point with the group's name and the same bookmark ID, and each point is
// an exact prefix of its machine's writes. When one machine cannot
// freeze, neither gets a marker and both are released.
func TestConsistencyGroupBookmark(t *testing.T) {
	const size = 8 << 20
	mk := func(name string, hook ...string) *cluster {
		return newCluster(t, []int64{size}, func(c *cluster) {
			c.machine = name
			c.extraMT = []string{"--point-interval", "1s"}
			c.extraAgent = hook
		})
	}
	a := mk("app1")
	failFile := filepath.Join(t.TempDir(), "fail-freeze")
	b := mk("db1", "--freeze-hook", "test ! -e "+failFile, "--thaw-hook", "true")
	a.startAll()
	b.startAll()
	a.waitIdentical(time.Minute)
	b.waitIdentical(time.Minute)
	wa := startOrderWorkload(t, a, 1, size, 0)
	wb := startOrderWorkload(t, b, 1, size, 0)
	time.Sleep(2 * time.Second)

	out, err := exec.Command(standbyBin, "bookmark", "--group", "billing", "--name", "month-end", "--agent", a.agStat, "--agent", b.agStat).CombinedOutput()
	if err != nil {
		t.Fatalf("group bookmark: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	time.Sleep(2 * time.Second)
	ids := map[string]bool{}
	for _, pair := range []struct {
		c *cluster
		w *orderWorkload
	}{{a, wa}, {b, wb}} {
		var found bool
		waitFor(t, "the group point on "+pair.c.machine, 30*time.Second, func() bool {
			for _, p := range listPoints(t, pair.c) {
				if p.Group == "billing" && p.Name == "month-end" && p.Kind == points.KindApp {
					found = true
					ids[p.Note[strings.Index(p.Note, "id "):]] = true
					if err := checkPoint(t, pair.c, pair.w, p); err != nil {
						t.Error(err)
					}
					return true
				}
			}
			return false
		})
		if !found {
			t.Fatalf("%s has no group point", pair.c.machine)
		}
	}
	if len(ids) != 1 {
		t.Errorf("the machines' points carry different bookmark ids: %v", ids)
	}

	// Now db1 cannot freeze: the whole group aborts, nobody gets a marker,
	// and app1 (already held) is released.
	if err := os.WriteFile(failFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	wa.mu.Lock()
	before := len(wa.log)
	wa.mu.Unlock()
	out, err = exec.Command(standbyBin, "bookmark", "--group", "billing", "--name", "aborted", "--agent", a.agStat, "--agent", b.agStat).CombinedOutput()
	if err == nil {
		t.Fatalf("group bookmark succeeded although db1 could not freeze:\n%s", out)
	}
	t.Logf("aborted as expected: %s", strings.TrimSpace(string(out)))
	time.Sleep(2 * time.Second)
	wa.mu.Lock()
	after := len(wa.log)
	wa.mu.Unlock()
	if after <= before {
		t.Error("app1's writes did not resume after the aborted group bookmark")
	}
	for _, c := range []*cluster{a, b} {
		for _, p := range listPoints(t, c) {
			if p.Name == "aborted" {
				t.Errorf("%s recorded a point for the aborted group bookmark", c.machine)
			}
		}
	}
	wa.finish()
	wb.finish()
}
