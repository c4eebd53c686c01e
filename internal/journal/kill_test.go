package journal

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	helperEnv   = "JOURNAL_TEST_HELPER_DIR"
	killOps     = 1000
	killSegSize = 512 << 10
)

// TestHelperApply is not a test: TestKill9 runs the test binary again with
// only this function selected, as the apply loop to kill. It applies the
// model stream from index START with the master target's rules and prints
// "applied SEQ" after each record's replica write.
func TestHelperApply(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("helper process for TestKill9")
	}
	seed, _ := strconv.ParseUint(os.Getenv(helperEnv+"_SEED"), 10, 64)
	start, _ := strconv.Atoi(os.Getenv(helperEnv + "_START"))
	r := &rig{t: t, dir: dir, sizes: smallSizes, opts: Options{SegmentSize: killSegSize, Logger: quietLogger()}}
	r.openReplicas()
	r.open()
	out := bufio.NewWriter(os.Stdout)
	rng := rand.New(rand.NewPCG(seed, uint64(start)))
	a := r.j.NewApplier(1 + rng.IntN(16))
	ops := genOps(seed, smallSizes, killOps, 1)
	for _, o := range ops[start:] {
		w := r.writer(o)
		seq := o.seq
		err := a.Apply(o.seq, o.disk, o.off, o.n, o.data == nil, func() error {
			if err := w(); err != nil {
				return err
			}
			fmt.Fprintf(out, "applied %d\n", seq)
			return out.Flush()
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper apply:", err)
			os.Exit(2)
		}
	}
	if err := a.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, "helper flush:", err)
		os.Exit(2)
	}
	fmt.Fprintln(out, "done")
	out.Flush()
	// Wait to be killed: a clean exit would not test anything.
	time.Sleep(time.Minute)
}

// TestKill9 kills a process running the apply protocol at random moments,
// then recovers the way the master target will: reopen, replay from the
// last record known applied + 1, preserving only records above LastSeq.
// Every point must then read back exactly.
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 6))
	r := newRig(t, smallSizes, Options{SegmentSize: killSegSize})
	r.close() // the children own it until the end
	ops := genOps(seed, smallSizes, killOps, 1)
	index := make(map[uint64]int, len(ops))
	for i, o := range ops {
		index[o.seq] = i
	}
	next := 0
	for round := range 5 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperApply$", "-test.v=false")
		cmd.Env = append(os.Environ(), helperEnv+"="+r.dir,
			fmt.Sprintf("%s_SEED=%d", helperEnv, seed), fmt.Sprintf("%s_START=%d", helperEnv, next))
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAfter := 20 + rng.IntN(150)
		var last uint64
		seen := 0
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if line == "done" {
				break
			}
			v, ok := strings.CutPrefix(line, "applied ")
			if !ok {
				continue
			}
			seq, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatalf("helper said %q", line)
			}
			last = seq
			seen++
			if seen == killAfter {
				// Let it run on a little so the kill lands anywhere:
				// mid-Preserve, mid-Sync, mid-replica-write.
				time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
				break
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		for sc.Scan() {
			// Lines printed before the kill landed are acknowledgements too.
			if v, ok := strings.CutPrefix(sc.Text(), "applied "); ok {
				last, _ = strconv.ParseUint(v, 10, 64)
			}
		}
		cmd.Wait()
		if seen == 0 && last == 0 {
			t.Fatalf("round %d: helper applied nothing", round)
		}
		next = index[last] + 1
		t.Logf("round %d: killed after seq %d (record %d of %d)", round, last, next, len(ops))
		if next >= len(ops) {
			break
		}
	}
	// Recover as the master target will.
	r.openReplicas()
	r.open()
	ls := r.j.LastSeq()
	if w := lastDataSeq(ops[:next]); next < len(ops) && ls < w {
		t.Fatalf("LastSeq %d is below seq %d, which was written to the replica", ls, w)
	}
	t.Logf("recovered: LastSeq %d, replaying from seq %d", ls, ops[min(next, len(ops)-1)].seq)
	a := r.j.NewApplier(8)
	for _, o := range ops[next:] {
		r.apply(a, o)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	checkPoints(t, r.j, smallSizes, ops, spreadPoints(ops, 10, rng))
}
