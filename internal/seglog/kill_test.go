package seglog

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

const helperDirEnv = "SEGLOG_TEST_HELPER_DIR"

// TestHelperProcess is not a test: TestKill9 runs the test binary again with
// only this function selected, as the process to kill. It appends until it
// is killed and prints "ack N" after each Append with sync=true returns.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperDirEnv)
	if dir == "" {
		t.Skip("helper process for TestKill9")
	}
	seed, _ := strconv.ParseUint(os.Getenv(helperDirEnv+"_SEED"), 10, 64)
	l, err := Open(dir, Options{SegmentSize: 1 << 20, Direct: os.Getenv(directEnv) != ""})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper open:", err)
		os.Exit(2)
	}
	rng := rand.New(rand.NewPCG(seed, 0))
	out := bufio.NewWriter(os.Stdout)
	seq := l.Stats().LastSeq + 1
	for {
		e := Entry{First: seq, Last: seq + uint64(rng.IntN(5))}
		e.Data = payload(e.First, rng.IntN(256<<10))
		// Some appends are not synced: they may or may not survive, but
		// must not damage what was acknowledged.
		sync := rng.IntN(4) != 0
		if err := l.Append(context.Background(), e, sync); err != nil {
			fmt.Fprintln(os.Stderr, "helper append:", err)
			os.Exit(2)
		}
		if sync {
			fmt.Fprintf(out, "ack %d\n", e.Last)
			out.Flush()
		}
		seq = e.Last + 1 + uint64(rng.IntN(2))
	}
}

func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	var acked []uint64
	for round := range 6 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), helperDirEnv+"="+dir, fmt.Sprintf("%s_SEED=%d", helperDirEnv, rng.Uint64()))
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		acks := make(chan uint64, 1024)
		go func() {
			defer close(acks)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if v, ok := strings.CutPrefix(sc.Text(), "ack "); ok {
					n, err := strconv.ParseUint(v, 10, 64)
					if err != nil {
						panic(err)
					}
					acks <- n
				}
			}
		}()
		// Kill at a random moment once the helper is appending.
		before := len(acked)
		select {
		case n, ok := <-acks:
			if !ok {
				t.Fatalf("round %d: helper exited before acknowledging anything", round)
			}
			acked = append(acked, n)
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: no acknowledgement from helper", round)
		}
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		if err := cmd.Process.Kill(); err != nil { // SIGKILL
			t.Fatal(err)
		}
		for n := range acks {
			acked = append(acked, n)
		}
		if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("round %d: helper ended with %v, want killed", round, err)
		}

		logger, records := newRecordingLogger()
		l, err := Open(dir, Options{SegmentSize: 1 << 20, Logger: logger})
		if err != nil {
			t.Fatalf("round %d: Open after kill: %v", round, err)
		}
		st := l.Stats()
		found := map[uint64]bool{}
		r := l.NewReader(0)
		var prev uint64
		for i := int64(0); i < st.Entries; i++ {
			e := readN(t, r, 1)[0]
			if i > 0 && e.First <= prev {
				t.Fatalf("round %d: entry [%d,%d] after %d", round, e.First, e.Last, prev)
			}
			checkPayload(t, e)
			found[e.Last] = true
			prev = e.Last
		}
		r.Close()
		for _, a := range acked {
			if !found[a] {
				t.Fatalf("round %d: acknowledged seq %d lost (log holds %d..%d)", round, a, st.FirstSeq, st.LastSeq)
			}
		}
		t.Logf("round %d: %d acks this round, log holds %d entries in %d segments up to %d, torn-tail warnings: %d",
			round, len(acked)-before, st.Entries, st.Segments, st.LastSeq, len(tornWarnings(records())))
		// Trim now and then, so recovery also meets a trimmed log.
		if round%2 == 1 {
			if err := l.TrimThrough(st.LastSeq / 2); err != nil {
				t.Fatal(err)
			}
			st = l.Stats()
			kept := acked[:0]
			for _, a := range acked {
				if a >= st.FirstSeq {
					kept = append(kept, a)
				}
			}
			acked = kept
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
