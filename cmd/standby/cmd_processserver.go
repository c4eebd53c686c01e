package main

import (
	"github.com/spf13/cobra"

	"standby/internal/config"
	"standby/internal/processserver"
)

func processServerCmd() *cobra.Command {
	var file string
	var c config.ProcessServer
	cmd := &cobra.Command{
		Use:   "process-server",
		Short: "Cache agents' changes durably, compress and throttle them, forward them to the master target",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file != "" {
				if err := config.Load(file, &c); err != nil {
					return err
				}
			}
			srv, cli, err := config.ProcessServerTLS(c.TLS, c.MasterTarget)
			if err != nil {
				return err
			}
			c.ServerTLS, c.ClientTLS, c.Logger = srv, cli, logger(cmd)
			memoryLimit(cmd)
			s, err := processserver.New(c.Config)
			if err != nil {
				return err
			}
			return s.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&file, "config", "", "YAML configuration file")
	f.StringVar(&c.Listen, "listen", "", "listener for agents host:port")
	f.StringVar(&c.CacheDir, "cache-dir", "", "directory of the durable per-machine caches")
	f.StringVar(&c.MasterTarget, "master-target", "", "master target address host:port")
	f.Int64Var(&c.CacheBytes, "cache-bytes", 0, "cache bound per machine (default 2 GiB)")
	f.Int64Var(&c.RelayBytes, "relay-bytes", 0, "memory per machine for copies forwarded without the cache (default 32 MiB; -1 sends them through the cache)")
	f.Int64Var(&c.RelayTotalBytes, "relay-total-bytes", 0, "memory for such copies of all machines together; past it they go through the cache (default 64 MiB)")
	f.StringVar(&c.Compression, "compression", "", "none, s2, zstd or adaptive (default adaptive)")
	f.Int64Var(&c.BandwidthLimit, "bandwidth", 0, "bytes per second toward the master target (0: unlimited)")
	f.StringArrayVar(&c.BandwidthSchedule, "bandwidth-schedule", nil, "limit by local time: \"DAYS HH:MM-HH:MM BYTES_PER_SEC\", e.g. \"Mon-Fri 08:00-18:00 20000000\" (repeatable; the first match wins, --bandwidth outside them)")
	f.StringVar(&c.StatusListen, "status", "", "status/metrics HTTP listener host:port (loopback)")
	f.Int64("memory-limit", 160<<20, "soft memory limit in bytes for the Go runtime (GOMEMLIMIT overrides)")
	tlsFlags(cmd, &c.TLS)
	return cmd
}
