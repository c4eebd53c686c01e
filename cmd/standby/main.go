// Command standby is the one binary of standby: each role is a subcommand.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{
		Use:           "standby",
		Short:         "Disaster recovery: continuous block replication of servers to a second site",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().String("log-level", "info", "log level: debug, info, warn, error")
	var profile string
	var profFile *os.File
	root.PersistentFlags().StringVar(&profile, "cpu-profile", "", "write a Go CPU profile of the whole run to this file (for diagnosing throughput)")
	var maxProcs int
	root.PersistentFlags().IntVar(&maxProcs, "max-procs", 0, "run Go code on at most this many CPUs at once (GOMAXPROCS; 0: all)")
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		if maxProcs > 0 {
			runtime.GOMAXPROCS(maxProcs)
		}
		if profile == "" {
			return nil
		}
		f, err := os.Create(profile)
		if err != nil {
			return fmt.Errorf("creating CPU profile: %w", err)
		}
		profFile = f
		return pprof.StartCPUProfile(f)
	}
	defer func() {
		if profFile != nil {
			pprof.StopCPUProfile()
			profFile.Close()
		}
	}()
	root.AddCommand(agentCmd(), processServerCmd(), masterTargetCmd(), statusCmd(), verifyCmd(), certsCmd(), demoCmd(), bookmarkCmd(), pointsCmd(), viewCmd(), exportCmd())
	if err := root.ExecuteContext(ctx); err != nil {
		if profFile != nil {
			pprof.StopCPUProfile()
			profFile.Close()
		}
		fmt.Fprintln(os.Stderr, "standby:", err)
		os.Exit(exitCode(err))
	}
}

// exitCodeError lets a command choose its exit status (verify: 1 = differ).
type exitCodeError struct {
	code int
	err  error
}

func (e *exitCodeError) Error() string { return e.err.Error() }

func exitCode(err error) int {
	if e, ok := err.(*exitCodeError); ok {
		return e.code
	}
	return 2
}

// memoryLimit applies --memory-limit unless GOMEMLIMIT is set: the agent
// and process server hold bounded queues, and a soft limit makes the
// garbage collector keep their resident size near those bounds instead of
// letting it grow to twice the live heap.
func memoryLimit(cmd *cobra.Command) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	if n, _ := cmd.Flags().GetInt64("memory-limit"); n > 0 {
		debug.SetMemoryLimit(n)
	}
}

func logger(cmd *cobra.Command) *slog.Logger {
	lvl := slog.LevelInfo
	s, _ := cmd.Flags().GetString("log-level")
	_ = lvl.UnmarshalText([]byte(s))
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}
