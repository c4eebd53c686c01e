package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"standby/internal/verify"
)

func verifyCmd() *cobra.Command {
	var output, agentAddr, mtAddr string
	var block int64
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "verify [SOURCE REPLICA]",
		Short: "Compare a disk with its replica by block fingerprints; exit 1 on any difference",
		Example: `  standby verify /dev/loop0 /srv/standby/web1/disk0.img
  standby verify --agent 127.0.0.1:7101 --master-target 127.0.0.1:7301`,
		Args: cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var results []verify.Result
			switch {
			case len(args) == 2:
				r, err := verify.Files(cmd.Context(), args[0], args[1], block)
				if err != nil {
					return err
				}
				results = []verify.Result{r}
			case len(args) == 0 && agentAddr != "" && mtAddr != "":
				rs, err := verify.Pair(cmd.Context(), agentAddr, mtAddr, block, timeout)
				if err != nil && rs == nil {
					return err
				}
				results = rs
			default:
				return errors.New("give SOURCE and REPLICA, or --agent and --master-target status addresses")
			}
			differ := false
			if output == "json" {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				_ = enc.Encode(results)
			}
			for _, r := range results {
				if !r.Identical {
					differ = true
				}
				if output == "json" {
					continue
				}
				name := r.Disk
				if name == "" {
					name = r.Source
				}
				if r.Error != "" {
					fmt.Printf("%s: ERROR %s\n", name, r.Error)
					continue
				}
				if r.Identical {
					fmt.Printf("%s: identical (%d bytes) to %s\n", name, r.Size, r.Replica)
					continue
				}
				fmt.Printf("%s: DIFFERS from %s in %d bytes, %d ranges:\n", name, r.Replica, r.DiffBytes, len(r.Differ))
				for i, d := range r.Differ {
					if i == 50 {
						fmt.Printf("  … %d more\n", len(r.Differ)-50)
						break
					}
					fmt.Printf("  %d+%d\n", d.Off, d.Len)
				}
			}
			if differ {
				return &exitCodeError{code: 1, err: errors.New("replica differs from source")}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&output, "output", "o", "text", "text or json")
	f.Int64Var(&block, "block-size", verify.DefaultBlockSize, "comparison block size in bytes")
	f.StringVar(&agentAddr, "agent", "", "agent status address host:port (running pair)")
	f.StringVar(&mtAddr, "master-target", "", "master target status address host:port (running pair)")
	f.DurationVar(&timeout, "timeout", 10*time.Minute, "how long to wait for the pair to drain")
	return cmd
}
