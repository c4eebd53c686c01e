package health

import (
	"strings"
	"testing"
	"time"

	"standby/internal/agent"
	"standby/internal/mastertarget"
	"standby/internal/processserver"
)

func TestProblems(t *testing.T) {
	healthyAgent := &agent.Status{Machine: "web1", ProcessServer: "ps:7001", Connected: true, LagSeconds: 0.2,
		Disks: []agent.DiskStatus{{Name: "disk0"}}}
	cases := []struct {
		name   string
		status any
		maxLag time.Duration
		want   []string // substrings, one per problem, in order
	}{
		{"healthy agent", healthyAgent, time.Minute, nil},
		{"agent cut off", &agent.Status{Machine: "web1", ProcessServer: "ps:7001", ConnError: "connection refused", LagSeconds: 90},
			time.Minute, []string{"not connected to process server ps:7001: connection refused", "lag 90.0s, above 1m0s"}},
		{"lag not checked without a bound", &agent.Status{Machine: "web1", Connected: true, LagSeconds: 9000}, 0, nil},
		{"bitmap mode and a disk error", &agent.Status{Machine: "web1", Connected: true, BitmapMode: true,
			Disks: []agent.DiskStatus{{Name: "disk0", LastError: "reading disk0 at 0 for resync: input/output error"}}},
			0, []string{"bitmap mode", "disk disk0: reading disk0"}},
		{"process server sessions down", &processserver.Status{Name: "ps1", Machines: []processserver.MachineStatus{
			{Machine: "web1", AgentConnected: true, MTConnected: true},
			{Machine: "db1", MTError: "replica of disk0 is 1024 bytes, the agent's disk 2048"},
		}}, 0, []string{"machine db1: agent not connected", "machine db1: master target not connected: replica of disk0"}},
		{"apply stopped", &mastertarget.Status{Name: "mt1", Machines: []mastertarget.MachineStatus{
			{Machine: "web1", ApplyError: "no space left on device"}}}, 0, []string{"machine web1: apply stopped: no space left on device"}},
		// An idle machine's newest point ages without anything at risk.
		{"idle machine's old point", &mastertarget.Status{Name: "mt1", Machines: []mastertarget.MachineStatus{
			{Machine: "web1", LagSeconds: 3600}}}, time.Minute, nil},
		{"apply behind", &mastertarget.Status{Name: "mt1", Machines: []mastertarget.MachineStatus{
			{Machine: "web1", LagSeconds: 300, PendingBytes: 1 << 30}}}, time.Minute, []string{"newest recovery point 300.0s old with 1073741824 bytes not yet applied"}},
	}
	for _, c := range cases {
		got := Problems(c.status, c.maxLag)
		if len(got) != len(c.want) {
			t.Errorf("%s: problems %q, want %d like %q", c.name, got, len(c.want), c.want)
			continue
		}
		for i := range got {
			if !strings.Contains(got[i], c.want[i]) {
				t.Errorf("%s: problem %q does not say %q", c.name, got[i], c.want[i])
			}
		}
	}
}
