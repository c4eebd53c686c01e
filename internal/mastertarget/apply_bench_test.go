package mastertarget

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"standby/internal/seglog"
	"standby/internal/wire"
)

// BenchmarkApply4KRandom measures apply alone: intake entries of 64 random
// 4 KiB writes each (a queue-depth-32 workload as the process server
// forwards it), an epoch marker every 16 entries, applied to a 1 GiB
// replica that is allocated and not in the page cache (as after an
// initial copy, which bypasses it). Reports records applied per second
// and the process's CPU per record.
func BenchmarkApply4KRandom(b *testing.B) {
	for _, nj := range []bool{false, true} {
		name := "journal"
		if nj {
			name = "no-journal"
		}
		b.Run(name, func(b *testing.B) { benchApply(b, nj) })
	}
}

func benchApply(b *testing.B, noJournal bool) {
	const (
		diskSize   = 1 << 30
		perEntry   = 64
		perEpoch   = 16
		recordSize = 4096
	)
	dir := b.TempDir()
	s, err := New(Config{Listen: "127.0.0.1:0", DataDir: dir, NoJournal: noJournal, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	disks := []wire.DiskInfo{{Index: 0, Name: "disk0", Size: diskSize}}
	m, err := openMachine(s, "m1", disks)
	if err != nil {
		b.Fatal(err)
	}
	fillUncached(b, m.replicaPath("disk0"), diskSize)

	rng := rand.New(rand.NewPCG(1, 2))
	payload := make([]byte, recordSize)
	for i := range payload {
		payload[i] = byte(rng.Uint32())
	}
	// Entries are encoded before the clock starts.
	n := max(b.N, perEntry*perEpoch)
	var entries []seglog.Entry
	seq := uint64(0)
	var epochs []uint64
	for written := 0; written < n; {
		var bt wire.Batch
		for k := 0; k < perEntry && written < n; k++ {
			seq++
			off := uint64(rng.IntN(diskSize/recordSize)) * recordSize
			bt.Records = append(bt.Records, wire.Record{Seq: seq, Op: wire.OpWrite, Disk: 0, Offset: off, Length: recordSize, Data: payload})
			written++
		}
		if len(entries)%perEpoch == perEpoch-1 || written == n {
			seq++
			bt.Records = append(bt.Records, wire.Record{Seq: seq, Op: wire.OpEpoch, Offset: uint64(time.Now().UnixNano())})
			epochs = append(epochs, seq)
		}
		bt.First, bt.Last = bt.Records[0].Seq, seq
		entries = append(entries, seglog.Entry{First: bt.First, Last: bt.Last, Data: wire.AppendBatch(nil, &bt)})
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		cancel()
		m.wg.Wait()
		m.close()
	}()
	cpu0 := processCPU()
	b.ResetTimer()
	start := time.Now()
	m.start(ctx)
	ei := 0
	for _, e := range entries {
		if err := m.intake.Append(ctx, e, false); err != nil {
			b.Fatal(err)
		}
		m.mu.Lock()
		m.lastSeq = e.Last
		for ei < len(epochs) && epochs[ei] <= e.Last {
			m.epochLimit = epochs[ei]
			ei++
		}
		m.cond.Broadcast()
		m.mu.Unlock()
	}
	for {
		m.mu.Lock()
		done, applyErr := m.live.AppliedSeq >= seq, m.applyErr
		m.mu.Unlock()
		if applyErr != "" {
			b.Fatal(applyErr)
		}
		if done {
			break
		}
		time.Sleep(time.Millisecond)
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(n)/el.Seconds(), "records/s")
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(n), "cpu-µs/record")
	b.SetBytes(recordSize)
}

// fillUncached writes random data over the whole file and drops it from
// the page cache.
func fillUncached(b *testing.B, path string, size int64) {
	b.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	for off := int64(0); off < size; off += int64(len(buf)) {
		for i := 0; i < len(buf); i += 8 {
			v := rng.Uint64()
			for k := 0; k < 8; k++ {
				buf[i+k] = byte(v >> (8 * k))
			}
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, size, unix.FADV_DONTNEED); err != nil {
		b.Fatal(err)
	}
}

func processCPU() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
