package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"standby/internal/agent"
	"standby/internal/health"
	"standby/internal/mastertarget"
	"standby/internal/processserver"
	"standby/internal/statusapi"
)

func statusCmd() *cobra.Command {
	var output string
	var check bool
	var maxLag time.Duration
	cmd := &cobra.Command{
		Use:   "status ADDR...",
		Short: "Show the status of running roles (their --status addresses)",
		Long: `Show the status of running roles (their --status addresses).

With --check it also exits 1 when a role reports a problem (a session down,
bitmap mode, apply stopped, a disk error, or with --max-lag data older than
that not yet safe at the secondary site), listing the problems on stderr,
and 2 when a role cannot be reached: for monitoring and cron.`,
		Example: "  standby status 127.0.0.1:7101 127.0.0.1:7301 127.0.0.1:7303 --check --max-lag 1m",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var all []any
			for _, addr := range args {
				var probe struct {
					Role string `json:"role"`
				}
				if err := statusapi.Fetch(cmd.Context(), addr, &probe); err != nil {
					return err
				}
				var v any
				switch probe.Role {
				case "agent":
					v = &agent.Status{}
				case "process-server":
					v = &processserver.Status{}
				case "master-target":
					v = &mastertarget.Status{}
				default:
					return fmt.Errorf("%s: unknown role %q", addr, probe.Role)
				}
				if err := statusapi.Fetch(cmd.Context(), addr, v); err != nil {
					return err
				}
				all = append(all, v)
			}
			if output == "json" {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				var err error
				if len(all) == 1 {
					err = enc.Encode(all[0])
				} else {
					err = enc.Encode(all)
				}
				if err != nil {
					return err
				}
			} else {
				for _, v := range all {
					printStatus(v)
				}
			}
			if !check {
				return nil
			}
			var problems []string
			for _, v := range all {
				problems = append(problems, health.Problems(v, maxLag)...)
			}
			for _, p := range problems {
				fmt.Fprintln(os.Stderr, "PROBLEM:", p)
			}
			if len(problems) > 0 {
				return &exitCodeError{code: 1, err: fmt.Errorf("%d problem(s)", len(problems))}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	cmd.Flags().BoolVar(&check, "check", false, "exit 1 when a role reports a problem (listed on stderr)")
	cmd.Flags().DurationVar(&maxLag, "max-lag", 0, "with --check: also a problem when writes older than this are not yet safe at the secondary site (0: not checked)")
	return cmd
}

func printStatus(v any) {
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	defer w.Flush()
	switch s := v.(type) {
	case *agent.Status:
		conn := "connected"
		if !s.Connected {
			conn = "DISCONNECTED " + s.ConnError
		}
		fmt.Fprintf(w, "agent %s → %s (%s)  last seq %d, durable %d, queue %s, lag %.1fs", s.Machine, s.ProcessServer, conn, s.LastSeq, s.DurableSeq, bytesH(s.QueueBytes), s.LagSeconds)
		if s.BitmapMode {
			fmt.Fprint(w, ", BITMAP MODE")
		}
		if s.CopyRateLimit > 0 {
			fmt.Fprintf(w, ", copies capped at %s/s", bytesH(s.CopyRateLimit))
		}
		fmt.Fprintln(w)
		fmt.Fprintln(w, "DISK\tMODE\tSTATE\tSIZE\tPROGRESS\tRATE\tETA\tPENDING\tLAG\tAPPLIED SEQ")
		for _, d := range s.Disks {
			prog, rate, eta := "-", "-", "-"
			if d.SyncTotal > 0 {
				prog = fmt.Sprintf("%s/%s %.1f%%", bytesH(d.SyncDone), bytesH(d.SyncTotal), 100*float64(d.SyncDone)/float64(d.SyncTotal))
			}
			if d.SyncRate > 0 {
				rate = bytesH(d.SyncRate) + "/s"
			}
			if d.SyncETA > 0 {
				eta = (time.Duration(d.SyncETA) * time.Second).String()
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1fs\t%d\n", d.Name, d.Mode, d.State, bytesH(d.Size), prog, rate, eta, bytesH(d.PendingBytes), d.LagSeconds, d.AppliedSeq)
		}
	case *processserver.Status:
		fmt.Fprintf(w, "process server %s on %s → %s, compression %s", s.Name, s.Listen, s.MasterTarget, s.Compression)
		if s.Bandwidth > 0 {
			fmt.Fprintf(w, ", bandwidth %s/s", bytesH(s.Bandwidth))
		}
		if s.BandwidthWindow != "" {
			fmt.Fprintf(w, " (schedule: %s)", s.BandwidthWindow)
		}
		fmt.Fprintln(w)
		fmt.Fprintln(w, "MACHINE\tAGENT\tMASTER TARGET\tCACHE\tFILL\tLAST SEQ\tDURABLE SEQ\tCODEC\tRATIO")
		for _, m := range s.Machines {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%.1f%%\t%d\t%d\t%s\t%.2f\n", m.Machine, upDown(m.AgentConnected), upDown(m.MTConnected), bytesH(m.CacheBytes), 100*m.CacheFill, m.LastSeq, m.DurableSeq, m.Codec, m.CompressionRatio)
		}
	case *mastertarget.Status:
		fmt.Fprintf(w, "master target %s on %s, data in %s\n", s.Name, s.Listen, s.DataDir)
		fmt.Fprintln(w, "MACHINE\tDISK\tSTATE\tSIZE\tAPPLIED SEQ\tPOINT TIME\tLAG\tPENDING\tREPLICA")
		for _, m := range s.Machines {
			for _, d := range m.Disks {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%.1fs\t%s\t%s\n", m.Machine, d.Name, d.State, bytesH(d.Size), m.AppliedSeq, m.EpochTime.Format(time.RFC3339), m.LagSeconds, bytesH(m.PendingBytes), d.Replica)
			}
			if m.ApplyError != "" {
				fmt.Fprintf(w, "%s\tAPPLY STOPPED: %s\n", m.Machine, m.ApplyError)
			}
		}
	}
}

func upDown(b bool) string {
	if b {
		return "up"
	}
	return "DOWN"
}

func bytesH(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
