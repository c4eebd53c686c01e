package main

import (
	"github.com/spf13/cobra"

	"standby/internal/demo"
)

func demoCmd() *cobra.Command {
	var o demo.Options
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run every role on this machine with a sample disk: initial copy under writes, continuous replication, verify",
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Logger = logger(cmd)
			return demo.Run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Dir, "dir", "", "working directory (default: a new temporary directory)")
	f.Int64Var(&o.DiskSize, "disk-size", 256<<20, "sample disk size in bytes")
	f.BoolVar(&o.Keep, "keep", false, "keep running after the demo until interrupted")
	return cmd
}
