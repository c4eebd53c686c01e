package main

import (
	"github.com/spf13/cobra"

	"standby/internal/config"
	"standby/internal/mastertarget"
)

func masterTargetCmd() *cobra.Command {
	var file string
	var c config.MasterTarget
	cmd := &cobra.Command{
		Use:   "master-target",
		Short: "Receive changes at the secondary site, journal them durably and apply them to replica disks",
		RunE: func(cmd *cobra.Command, _ []string) error {
			memoryLimit(cmd)
			if file != "" {
				if err := config.Load(file, &c); err != nil {
					return err
				}
			}
			srv, err := config.MasterTargetTLS(c.TLS)
			if err != nil {
				return err
			}
			c.ServerTLS, c.Logger = srv, logger(cmd)
			s, err := mastertarget.New(c.Config)
			if err != nil {
				return err
			}
			return s.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&file, "config", "", "YAML configuration file")
	f.StringVar(&c.Listen, "listen", "", "listener for process servers host:port")
	f.StringVar(&c.DataDir, "data-dir", "", "directory of replicas, intake logs and checkpoints")
	f.DurationVar(&c.SyncInterval, "sync-interval", 0, "replica fsync/checkpoint interval (default 1s)")
	f.Int64Var(&c.RelayBytes, "relay-bytes", 0, "memory per machine for copies applied without the intake log (default 32 MiB; -1 logs them)")
	f.Int64Var(&c.RelayTotalBytes, "relay-total-bytes", 0, "memory for such copies of all machines together; past it they go to the intake log (default 64 MiB)")
	f.StringVar(&c.StatusListen, "status", "", "status/metrics/API listener host:port (loopback) or unix:PATH")
	f.DurationVar(&c.PointInterval, "point-interval", 0, "spacing of crash-consistent recovery points (default 5s, at least 1s)")
	f.StringVar(&c.Retention, "retention", "", "thinning grid INTERVAL:WITHIN,... (default all:1h,10m:24h,1h:168h)")
	f.DurationVar(&c.MaxAge, "max-age", 0, "drop points older than this (default: the grid's longest horizon)")
	f.Int64Var(&c.JournalBytes, "journal-bytes", 0, "undo journal space per machine; when full the oldest points go (0: unbounded)")
	f.BoolVar(&c.NoJournal, "no-journal", false, "keep only the newest point (no undo journal)")
	f.StringVar(&c.ViewListen, "view-listen", "", "serve views over TCP on host:port (default: a unix socket per view)")
	// No limit by default: the master target's memory grows with the
	// machines it serves, and a soft limit below the live heap makes the
	// garbage collector run all the time.
	f.Int64("memory-limit", 0, "soft memory limit in bytes for the Go runtime (0: none; GOMEMLIMIT overrides)")
	tlsFlags(cmd, &c.TLS)
	return cmd
}
