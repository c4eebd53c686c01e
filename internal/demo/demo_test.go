package demo

import (
	"context"
	"log/slog"
	"testing"
	"time"
)

// The whole data path in one process, so that the race detector (the unit
// tests run with -race) watches the agent, process server and master
// target together: NBD writes during the initial copy, the caches and
// relay, apply, a bookmark and a view at it. Run fails unless the replica
// verifies identical and the view equals the source.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	lg := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := Run(ctx, Options{Dir: t.TempDir(), DiskSize: 48 << 20, Logger: lg}); err != nil {
		t.Fatal(err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
