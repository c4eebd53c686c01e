package mastertarget

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"standby/internal/seglog"
	"standby/internal/wire"
)

// A master target restarted with records in its intake that apply had not
// reached must know at once how far apply may go: up to the newest epoch
// marker, or to a sync-start after the last marker (an agent's overflow
// dropped the markers of the epoch before it, so no marker will ever close
// that epoch; see endsWait). Found only by scanEpochs at open, not by
// apply's read-ahead, which is bounded.
func TestRestartHonoursAnUnappliedSyncStart(t *testing.T) {
	cases := []struct {
		name string
		ops  []wire.Op
		want uint64 // epochLimit after the reopen: the seq (1-based) of the record apply may go up to
	}{
		{"writes then a sync-start", []wire.Op{wire.OpWrite, wire.OpWrite, wire.OpSyncStart, wire.OpCopy, wire.OpSyncDone}, 3},
		{"a marker after the sync-start", []wire.Op{wire.OpWrite, wire.OpSyncStart, wire.OpCopy, wire.OpSyncDone, wire.OpEpoch, wire.OpWrite}, 5},
		{"a marker, then an unclosed epoch", []wire.Op{wire.OpWrite, wire.OpEpoch, wire.OpWrite, wire.OpWrite}, 2},
		{"nothing closes", []wire.Op{wire.OpWrite, wire.OpWrite}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &Server{cfg: Config{DataDir: t.TempDir()}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			disks := []wire.DiskInfo{{Index: 0, Name: "disk0", Size: 1 << 20}}
			m, err := openMachine(s, "m1", disks)
			if err != nil {
				t.Fatal(err)
			}
			// One record per intake entry, as a process server would
			// forward them one batch at a time.
			for i, op := range tc.ops {
				seq := uint64(i + 1)
				r := wire.Record{Seq: seq, Op: op}
				switch op {
				case wire.OpWrite, wire.OpCopy:
					r.Offset, r.Length, r.Data = 4096*seq, 4096, make([]byte, 4096)
				case wire.OpEpoch:
					r.Offset = 1
				}
				b := wire.Batch{First: seq, Last: seq, Records: []wire.Record{r}}
				if err := m.intake.Append(context.Background(), seglog.Entry{First: seq, Last: seq, Data: wire.AppendBatch(nil, &b)}, true); err != nil {
					t.Fatal(err)
				}
			}
			m.close()

			m, err = openMachine(s, "m1", disks)
			if err != nil {
				t.Fatal(err)
			}
			defer m.close()
			if m.cp.AppliedSeq != 0 {
				t.Fatalf("applied seq %d at reopen: the test needs nothing applied", m.cp.AppliedSeq)
			}
			if m.epochLimit != tc.want {
				t.Fatalf("after the restart apply may go up to seq %d, want %d", m.epochLimit, tc.want)
			}
		})
	}
}

// A machine opened from its data directory with the disks of a Hello (its
// state was not loaded at start-up) is checked against its own replicas:
// the check once compared against a layout not yet read and refused every
// such Hello with "0 replica disks here".
func TestReopenChecksTheHelloAgainstTheReplicas(t *testing.T) {
	s := &Server{cfg: Config{DataDir: t.TempDir()}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	disks := []wire.DiskInfo{{Index: 0, Name: "disk0", Size: 1 << 20}}
	m, err := openMachine(s, "m1", disks)
	if err != nil {
		t.Fatal(err)
	}
	m.close()
	if m, err = openMachine(s, "m1", disks); err != nil {
		t.Fatalf("reopening with the same disks: %v", err)
	}
	m.close()
	wrong := []wire.DiskInfo{{Index: 0, Name: "disk0", Size: 2 << 20}}
	if _, err := openMachine(s, "m1", wrong); err == nil || !strings.Contains(err.Error(), "wrong size") {
		t.Fatalf("reopening with a disk of another size: %v, want a wrong-size refusal", err)
	}
}
