package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"standby/internal/agent"
	"standby/internal/config"
)

func agentCmd() *cobra.Command {
	var file string
	var c config.Agent
	var disks, freeze, thaw []string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Protect this machine's disks: serve them over NBD (or scan them) and stream every write to a process server",
		Example: `  standby agent --config agent.yaml
  standby agent --machine web1 --state-dir /var/lib/standby --process-server ps:7001 \
      --disk disk0=/dev/loop0 --nbd unix:/run/standby.sock --ca ca.crt --cert agent.crt --key agent.key`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file != "" {
				if err := config.Load(file, &c); err != nil {
					return err
				}
			}
			for _, d := range disks {
				dc, err := agent.ParseDiskFlag(d)
				if err != nil {
					return err
				}
				c.Disks = append(c.Disks, dc)
			}
			if len(freeze) != len(thaw) {
				return fmt.Errorf("--freeze-hook and --thaw-hook come in pairs (%d and %d given)", len(freeze), len(thaw))
			}
			for i := range freeze {
				c.Hooks = append(c.Hooks, agent.HookConfig{Name: fmt.Sprintf("hook%d", i), Freeze: freeze[i], Thaw: thaw[i]})
			}
			tlsc, err := config.AgentTLS(c.TLS, c.ProcessServer)
			if err != nil {
				return err
			}
			c.Config.TLS = tlsc
			c.Logger = logger(cmd)
			memoryLimit(cmd)
			a, err := agent.New(c.Config)
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&file, "config", "", "YAML configuration file")
	f.StringVar(&c.Machine, "machine", "", "machine name (must match the agent certificate)")
	f.StringVar(&c.StateDir, "state-dir", "", "directory for the activity log, dirty bitmaps and scan fingerprints")
	f.StringVar(&c.ProcessServer, "process-server", "", "process server address host:port")
	f.StringSliceVar(&c.NBDListen, "nbd", nil, "NBD listener for intercepted disks: unix:PATH or tcp:HOST:PORT (repeatable)")
	f.StringVar(&c.StatusListen, "status", "", "status/metrics HTTP listener host:port (loopback)")
	f.StringArrayVar(&disks, "disk", nil, "protected disk NAME=PATH[,mode=scan][,interval=30s] (repeatable)")
	f.Int64Var(&c.QueueBytes, "queue-bytes", 0, "in-memory change queue bound before bitmap fallback (default 128 MiB)")
	f.DurationVar(&c.QueueHold, "queue-hold", 0, "longest a write waits for room in a full queue (and most waited per second) before bitmap fallback (default 200ms; negative: none)")
	f.DurationVar(&c.SendLinger, "send-linger", 0, "how long a small batch waits for more writes before it is sent (default 2ms; negative: none)")
	f.DurationVar(&c.EpochInterval, "epoch-interval", 0, "crash-consistent marker interval when the workload does not flush (default 1s)")
	f.IntVar(&c.ResyncReaders, "resync-readers", 0, "copy reads in flight per disk during initial copy and resync (default 16)")
	f.Int64Var(&c.CopyRate, "copy-rate", 0, "cap in bytes per second on what the initial copy, resyncs and scans read from the disks, all together (0: none); captured writes are never held")
	f.StringArrayVar(&freeze, "freeze-hook", nil, "shell command freezing an application for app-consistent bookmarks (repeatable, paired with --thaw-hook)")
	f.StringArrayVar(&thaw, "thaw-hook", nil, "shell command thawing it again")
	f.DurationVar(&c.FreezeTimeout, "freeze-timeout", 0, "longest time writes are held for a bookmark; past it the agent thaws and reports failure (default 500ms)")
	f.DurationVar(&c.BookmarkInterval, "bookmark-interval", 0, "take an app-consistent bookmark this often (0: on demand only)")
	// Above the 128 MiB queue bound plus the buffers recycled around it:
	// at 160 MiB the collector ran without pause at a full queue and gave
	// pages back that the next writes faulted in again (docs/benchmarks.md).
	f.Int64("memory-limit", 208<<20, "soft memory limit in bytes for the Go runtime (GOMEMLIMIT overrides)")
	tlsFlags(cmd, &c.TLS)
	return cmd
}

func tlsFlags(cmd *cobra.Command, t *config.TLS) {
	f := cmd.Flags()
	f.StringVar(&t.CA, "ca", "", "CA certificate (PEM)")
	f.StringVar(&t.Cert, "cert", "", "this component's certificate (PEM)")
	f.StringVar(&t.Key, "key", "", "this component's private key (PEM)")
}
