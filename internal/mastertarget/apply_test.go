package mastertarget_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"standby/internal/config"
	"standby/internal/mastertarget"
	"standby/internal/pki"
	"standby/internal/transport"
	"standby/internal/wire"
)

// feeder speaks to a master target as a process server would.
type feeder struct {
	t   *testing.T
	c   *transport.Conn
	seq uint64
}

func startMasterTarget(t *testing.T, disks []wire.DiskInfo) (*mastertarget.Server, *feeder) {
	t.Helper()
	dir := t.TempDir()
	files, err := pki.DevPKI(filepath.Join(dir, "pki"), []string{"127.0.0.1"},
		pki.Identity{Role: pki.RoleProcessServer, Name: "ps1"}, pki.Identity{Role: pki.RoleMasterTarget, Name: "mt1"})
	if err != nil {
		t.Fatal(err)
	}
	tlsOf := func(r pki.Role, n string) config.TLS {
		f := files[pki.Identity{Role: r, Name: n}]
		return config.TLS{CA: f.CA, Cert: f.Cert, Key: f.Key}
	}
	mtTLS, err := config.MasterTargetTLS(tlsOf(pki.RoleMasterTarget, "mt1"))
	if err != nil {
		t.Fatal(err)
	}
	lg := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	mt, err := mastertarget.New(mastertarget.Config{Name: "mt1", Listen: "127.0.0.1:0", DataDir: filepath.Join(dir, "mt"), ServerTLS: mtTLS, Logger: lg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mt.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("master target: %v", err)
		}
	})
	for i := 0; mt.Addr() == ""; i++ {
		if i > 400 {
			t.Fatal("master target did not start listening")
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, cli, err := config.ProcessServerTLS(tlsOf(pki.RoleProcessServer, "ps1"), mt.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c, err := transport.Dial(ctx, mt.Addr(), cli)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.WriteJSON(wire.TypeHello, wire.Hello{Role: "process-server", Machine: "m1", Disks: disks}); err != nil {
		t.Fatal(err)
	}
	var w wire.Welcome
	if err := c.ReadJSON(wire.TypeWelcome, &w); err != nil {
		t.Fatal(err)
	}
	return mt, &feeder{t: t, c: c}
}

// send sends the records as one batch, numbering them.
func (f *feeder) send(recs ...wire.Record) {
	f.t.Helper()
	b := wire.Batch{First: f.seq + 1}
	for _, r := range recs {
		f.seq++
		r.Seq = f.seq
		b.Records = append(b.Records, r)
	}
	b.Last = f.seq
	if err := f.c.WriteFrame(wire.TypeBatch, wire.AppendBatch(nil, &b), wire.CodecNone); err != nil {
		f.t.Fatal(err)
	}
}

// waitApplied waits until the master target has applied everything sent.
func (f *feeder) waitApplied(mt *mastertarget.Server, within time.Duration) {
	f.t.Helper()
	deadline := time.Now().Add(within)
	for {
		st := mt.Status()
		var applied uint64
		if len(st.Machines) == 1 {
			applied = st.Machines[0].AppliedSeq
			if e := st.Machines[0].ApplyError; e != "" {
				f.t.Fatalf("apply stopped: %s", e)
			}
		}
		if applied == f.seq {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("applied seq %d of %d after %s", applied, f.seq, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An agent whose queue overflows drops its queued epoch markers with its
// writes: the master target then holds captured writes of an epoch that no
// marker will close, followed by a sync-start. When those writes exceed
// what apply reads ahead (64 MiB), the sync-start is beyond its window, and
// apply must still learn of it and go on; it waited forever before (CI,
// e2e TestOverflowMidEpochDoesNotStallApply: applied stuck 1026 seqs below
// durable, 64 KiB writes).
func TestUnclosedEpochLargerThanReadAheadThenResync(t *testing.T) {
	const size = 128 << 20
	mt, f := startMasterTarget(t, []wire.DiskInfo{{Index: 0, Name: "disk0", Size: size}})
	want := make([]byte, size)
	// The initial copy: the whole disk zero, then consistent, one epoch.
	f.send(wire.Record{Op: wire.OpSyncStart})
	var zero []wire.Record
	for off := uint64(0); off < size; off += 32 << 20 {
		zero = append(zero, wire.Record{Op: wire.OpCopyZero, Offset: off, Length: 32 << 20})
	}
	f.send(append(zero, wire.Record{Op: wire.OpSyncDone})...)
	f.send(wire.Record{Op: wire.OpEpoch, Offset: uint64(time.Now().UnixNano())})
	f.waitApplied(mt, 10*time.Second)

	// 96 MiB of 64 KiB writes and no marker: more than apply reads ahead.
	rng := rand.New(rand.NewPCG(3, 4))
	const bs = 64 << 10
	for range 12 {
		var recs []wire.Record
		for range 128 {
			off := rng.Int64N(size/bs) * bs
			data := make([]byte, bs)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			copy(want[off:], data)
			recs = append(recs, wire.Record{Op: wire.OpWrite, Offset: uint64(off), Length: bs, Data: data})
		}
		f.send(recs...)
	}
	// The resync: a region copied again from the source, then done.
	f.send(wire.Record{Op: wire.OpSyncStart})
	src := make([]byte, 1<<20)
	for i := range src {
		src[i] = byte(rng.Uint32())
	}
	copy(want[4<<20:], src)
	f.send(wire.Record{Op: wire.OpCopy, Offset: 4 << 20, Length: uint32(len(src)), Data: src})
	f.send(wire.Record{Op: wire.OpSyncDone})
	// No marker follows: in the deployment the process server's cache is
	// then full of what the master target has not made durable (the
	// relayed copies become durable only once applied), so the agent's
	// next marker cannot come.
	t0 := time.Now()
	f.waitApplied(mt, 30*time.Second)
	t.Logf("applied %.2fs after the last batch", time.Since(t0).Seconds()) // 30 s timeout before the fix

	st := mt.Status().Machines[0]
	if !st.Disks[0].Consistent {
		t.Fatalf("replica not consistent after the resync: %+v", st.Disks[0])
	}
	got, err := os.ReadFile(st.Disks[0].Replica)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("replica differs from what was sent")
	}
}

// An intake smaller than a few epochs could deadlock: apply holds an epoch
// while it waits for the marker, and the marker waits for room in the
// intake that only applying the epoch frees. Such a size is refused.
func TestIntakeTooSmallForAnEpochIsRefused(t *testing.T) {
	_, err := mastertarget.New(mastertarget.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), IntakeBytes: 16 << 20})
	if err == nil || !strings.Contains(err.Error(), "intake_bytes") || !strings.Contains(err.Error(), "minimum") {
		t.Fatalf("a 16 MiB intake: got %v, want it refused", err)
	}
}
