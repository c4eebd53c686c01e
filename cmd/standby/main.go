// Command standby is the one binary of standby: each role is a subcommand.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	lazyFree()
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
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
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

// lazyFree re-executes the binary with GODEBUG=madvdontneed=0 unless
// GODEBUG already says how to release memory. The Go runtime then gives
// freed memory back lazily (MADV_FREE) instead of at once: the roles free
// and reuse frame-sized buffers at the rate data flows, and on a VM that
// hands freed guest pages to its host (free page reporting), each reuse of
// an eagerly released page is a fault in the host. In the churn benchmark
// on such a VM the pipeline kept up with 100 MB/s for 10 s this way, and
// fell behind from the first second without it (docs/benchmarks.md).
// The setting is read only at start-up, hence the exec; if it fails, the
// process carries on as it is.
func lazyFree() {
	cur, _ := os.LookupEnv("GODEBUG")
	if strings.Contains(cur, "madvdontneed=") {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	val := "madvdontneed=0"
	if cur != "" {
		val = cur + "," + val
	}
	env := make([]string, 0, len(os.Environ())+1)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			env = append(env, kv)
		}
	}
	_ = syscall.Exec(exe, os.Args, append(env, "GODEBUG="+val))
}
