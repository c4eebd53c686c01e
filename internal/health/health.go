// Package health turns a role's status into the problems an operator must
// act on, for `standby status --check` and the monitoring that runs it.
package health

import (
	"fmt"
	"time"

	"standby/internal/agent"
	"standby/internal/mastertarget"
	"standby/internal/processserver"
)

// Problems lists what is wrong in one role's status (*agent.Status,
// *processserver.Status or *mastertarget.Status); none means healthy.
// maxLag, when positive, also flags data older than that not yet safe at
// the secondary site.
//
// The exposure is the agent's lag (the oldest write not yet durable at the
// master target, 0 when the workload is idle). The master target's
// lag_seconds is the age of its newest recovery point, which also grows
// while the protected machine writes nothing, so it counts only while the
// master target has received changes it has not applied.
func Problems(v any, maxLag time.Duration) []string {
	var p []string
	add := func(format string, a ...any) { p = append(p, fmt.Sprintf(format, a...)) }
	late := func(sec float64) bool { return maxLag > 0 && sec > maxLag.Seconds() }
	switch s := v.(type) {
	case *agent.Status:
		if !s.Connected {
			add("agent %s: not connected to process server %s: %s", s.Machine, s.ProcessServer, s.ConnError)
		}
		if s.BitmapMode {
			add("agent %s: bitmap mode (the change queue overflowed): no new recovery point until the resync ends", s.Machine)
		}
		if late(s.LagSeconds) {
			add("agent %s: lag %.1fs, above %v: writes that old are not yet safe at the secondary site", s.Machine, s.LagSeconds, maxLag)
		}
		for _, d := range s.Disks {
			if d.LastError != "" {
				add("agent %s disk %s: %s", s.Machine, d.Name, d.LastError)
			}
		}
	case *processserver.Status:
		for _, m := range s.Machines {
			if !m.AgentConnected {
				add("process server %s: machine %s: agent not connected", s.Name, m.Machine)
			}
			if !m.MTConnected {
				why := ""
				if m.MTError != "" {
					why = ": " + m.MTError
				}
				add("process server %s: machine %s: master target not connected%s", s.Name, m.Machine, why)
			}
		}
	case *mastertarget.Status:
		for _, m := range s.Machines {
			if m.ApplyError != "" {
				add("master target %s: machine %s: apply stopped: %s", s.Name, m.Machine, m.ApplyError)
			}
			if m.PendingBytes > 0 && late(m.LagSeconds) {
				add("master target %s: machine %s: newest recovery point %.1fs old with %d bytes not yet applied, above %v", s.Name, m.Machine, m.LagSeconds, m.PendingBytes, maxLag)
			}
		}
	default:
		add("unknown status %T", v)
	}
	return p
}
