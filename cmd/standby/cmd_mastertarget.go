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
	f.StringVar(&c.StatusListen, "status", "", "status/metrics HTTP listener host:port (loopback)")
	tlsFlags(cmd, &c.TLS)
	return cmd
}
