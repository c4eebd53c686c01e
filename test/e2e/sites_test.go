package e2e

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"standby/internal/agent"
	"standby/internal/netsim"
)

// twoSites puts the agent and process server in a "primary" network
// namespace and the master target in a "secondary" one, joined by a link
// the test can slow down or cut. Status endpoints are unix sockets, which
// reach across namespaces.
func twoSites(t *testing.T) (clusterOpt, *netsim.Link) {
	t.Helper()
	requireRoot(t)
	n := netsim.ForTest(t)
	ctx := context.Background()
	primary, err := n.AddSite(ctx, "primary")
	if err != nil {
		t.Fatal(err)
	}
	secondary, err := n.AddSite(ctx, "secondary")
	if err != nil {
		t.Fatal(err)
	}
	link, err := n.Link(ctx, primary, secondary)
	if err != nil {
		t.Fatal(err)
	}
	opt := func(c *cluster) {
		c.mtAddr = secondary.Addr(primary) + ":7003"
		c.psAddr = "127.0.0.1:7001"
		c.mtStatus = "unix:" + filepath.Join(c.dir, "mt-status.sock")
		c.psStatus = "unix:" + filepath.Join(c.dir, "ps-status.sock")
		c.agStat = "unix:" + filepath.Join(c.dir, "agent-status.sock")
		c.mtWrap = []string{"ip", "netns", "exec", secondary.Namespace()}
		c.psWrap = []string{"ip", "netns", "exec", primary.Namespace()}
		c.agWrap = c.psWrap
	}
	return opt, link
}

// TestAcrossSitesWithWANLatency replicates across two namespaces over a
// link with WAN latency and a bandwidth limit.
func TestAcrossSitesWithWANLatency(t *testing.T) {
	opt, link := twoSites(t)
	if err := link.Netem("delay 20ms rate 200mbit"); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, []int64{64 << 20}, opt)
	fillRandom(t, c.disks[0], 21, 16)
	c.startAll()
	w := startWriter(t, c, 1, 64<<20, 21)
	time.Sleep(3 * time.Second)
	w.finish()
	c.waitIdentical(3 * time.Minute)
	ps, err := c.psStatusNow()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("compression %s, ratio %.2f", ps.Machines[0].Codec, ps.Machines[0].CompressionRatio)
}

// TestCutLongerThanCaches cuts the WAN between process server and master
// target for longer than the process server's cache and the agent's queue
// can hold: the agent falls back to its dirty bitmap, says so, resyncs when
// the link returns, and the replica ends identical.
func TestCutLongerThanCaches(t *testing.T) {
	opt, link := twoSites(t)
	const size = 128 << 20
	c := newCluster(t, []int64{size}, opt, func(c *cluster) {
		c.queueBytes = 8 << 20
		c.cacheBytes = 16 << 20
		c.extraPS = []string{"--compression", "none"}
	})
	fillRandom(t, c.disks[0], 22, 16)
	c.startAll()
	c.waitIdentical(2 * time.Minute)

	if err := link.Cut(); err != nil {
		t.Fatal(err)
	}
	w := startWriter(t, c, 1, size, 22)
	waitFor(t, "the agent to fall back to its dirty bitmap", 2*time.Minute, func() bool {
		st, err := c.agentStatus()
		return err == nil && st.Overflows > 0
	})
	st, _ := c.agentStatus()
	if st.Disks[0].State != agent.StateResync {
		t.Errorf("disk state during the outage is %q, want %q", st.Disks[0].State, agent.StateResync)
	}
	if st.Drained {
		t.Error("status claims drained while changes are waiting")
	}
	t.Logf("during the cut: state %s, dirty %d bytes, queue %d bytes, overflows %d", st.Disks[0].State, st.Disks[0].DirtyBytes, st.QueueBytes, st.Overflows)
	time.Sleep(2 * time.Second)
	w.finish()
	mtBefore, _ := c.mtStatusNow()
	if len(mtBefore.Machines) == 1 && !mtBefore.Machines[0].Disks[0].Consistent {
		t.Log("master target already marks the replica inconsistent")
	}
	if err := link.Restore(); err != nil {
		t.Fatal(err)
	}
	c.waitIdentical(3 * time.Minute)
	st, _ = c.agentStatus()
	if st.Disks[0].State != agent.StateReplicating {
		t.Errorf("after resync: state %q", st.Disks[0].State)
	}
}
