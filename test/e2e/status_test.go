package e2e

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// statusCheck runs standby status --check and returns its exit code and
// output.
func statusCheck(t *testing.T, args ...string) (int, string) {
	t.Helper()
	out, err := exec.Command(standbyBin, append([]string{"status", "--check"}, args...)...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	default:
		t.Fatal(err)
		return 0, ""
	}
}

// TestStatusCheck: `standby status --check` exits 0 for a healthy pair, 1
// with the problem named when the process server is gone, and 2 for a role
// it cannot reach.
func TestStatusCheck(t *testing.T) {
	c := newCluster(t, []int64{16 << 20})
	fillRandom(t, c.disks[0], 14, 4)
	c.startAll()
	c.waitIdentical(time.Minute)
	if code, out := statusCheck(t, c.agStat, c.psStatus, c.mtStatus, "--max-lag", "1m"); code != 0 {
		t.Fatalf("healthy pair: exit %d\n%s", code, out)
	}
	c.ps.kill9()
	waitFor(t, "the agent to notice", 30*time.Second, func() bool {
		st, err := c.agentStatus()
		return err == nil && !st.Connected
	})
	code, out := statusCheck(t, c.agStat, c.mtStatus)
	if code != 1 || !strings.Contains(out, "PROBLEM: agent m1: not connected to process server") {
		t.Fatalf("process server killed: exit %d, want 1 naming the lost session\n%s", code, out)
	}
	if code, out := statusCheck(t, c.psStatus); code != 2 {
		t.Fatalf("unreachable process server: exit %d, want 2\n%s", code, out)
	}
}
