package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"standby/internal/agent"
)

func bookmarkCmd() *cobra.Command {
	var agents []string
	var name, group, output string
	cmd := &cobra.Command{
		Use:   "bookmark --agent ADDR [--agent ADDR ...]",
		Short: "Take an app-consistent bookmark: freeze hooks, one marker across all disks (and machines of a group), thaw",
		Example: `  standby bookmark --agent 127.0.0.1:7101 --name before-upgrade
  standby bookmark --group billing --agent unix:/run/standby/db.sock --agent unix:/run/standby/app.sock`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(agents) == 0 {
				return errors.New("give at least one --agent status address")
			}
			if len(agents) > 1 && group == "" {
				return errors.New("several agents form a consistency group: name it with --group")
			}
			res, err := agent.GroupBookmark(cmd.Context(), agents, name, group)
			if output == "json" {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				_ = enc.Encode(res)
			} else {
				for i, r := range res {
					fmt.Printf("%s: bookmark %s seq %d at %s, writes held %s, %d hooks\n", agents[i], r.ID, r.Seq, r.Time.Format(time.RFC3339Nano), r.Held.Round(time.Microsecond), r.Hooks)
				}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&agents, "agent", nil, "agent status address host:port or unix:PATH (repeatable)")
	f.StringVar(&name, "name", "", "name of the bookmark (named points are kept by retention thinning)")
	f.StringVar(&group, "group", "", "consistency group name (required with several agents)")
	f.StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}
