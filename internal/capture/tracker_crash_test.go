package capture

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	crashEnv  = "STANDBY_CAPTURE_CRASH_STATE"
	crashSize = 64 << 20
)

func crashOpts() TrackerOptions {
	return TrackerOptions{BlockSize: 4 << 10, ExtentSize: 256 << 10, IdleClean: time.Millisecond,
		Logger: quietLogger(), journalSize: 16 << 10}
}

// TestHelperCrashChild is the victim process of TestTrackerKill9: it runs a
// busy agent-like workload on the tracker and reports each operation on
// stdout. Lines that add a requirement (B, T, R) are printed after the
// operation returned; lines that remove one (A, C, D's EndWrite) before the
// operation starts, so a kill between the two can only make the parent
// demand less, never more, than the tracker owes.
func TestHelperCrashChild(t *testing.T) {
	path := os.Getenv(crashEnv)
	if path == "" {
		t.Skip("only run as the child of TestTrackerKill9")
	}
	tr, err := OpenTracker(path, crashSize, crashOpts())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var outMu sync.Mutex
	emit := func(format string, args ...any) {
		// One write(2) per line keeps lines whole on the pipe.
		line := fmt.Sprintf(format+"\n", args...)
		outMu.Lock()
		os.Stdout.WriteString(line)
		outMu.Unlock()
	}
	emit("OPEN")
	ctx := context.Background()
	deadline := time.Now().Add(20 * time.Second)
	var wg sync.WaitGroup
	for w := range 4 { // workload writers
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(w)))
			var open []rg
			// Real workloads write to a moving working set, not uniformly
			// over the disk; that keeps the activity log small.
			const zone = 2 << 20
			var base int64
			for i := 0; time.Now().Before(deadline); i++ {
				if i%2000 == 0 {
					base = rnd.Int64N(crashSize/zone) * zone
				}
				if len(open) < 8 && rnd.IntN(2) == 0 {
					n := 1 + rnd.Int64N(64<<10)
					r := rg{base + rnd.Int64N(zone-n), n}
					if err := tr.BeginWrite(ctx, r.off, r.n); err != nil {
						emit("ERR %v", err)
						os.Exit(3)
					}
					emit("B %d %d", r.off, r.n)
					open = append(open, r)
				} else if len(open) > 0 {
					i := rnd.IntN(len(open))
					r := open[i]
					open = append(open[:i], open[i+1:]...)
					if rnd.IntN(20) == 0 {
						emit("D %d %d", r.off, r.n)
						tr.MarkDirty(r.off, r.n)
					} else {
						emit("A %d %d", r.off, r.n)
					}
					tr.EndWrite(r.off, r.n)
				}
			}
		})
	}
	wg.Go(func() { // resync and housekeeping
		rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 99))
		var taken []rg
		for time.Now().Before(deadline) {
			switch op := rnd.IntN(20); {
			case op < 8:
				if off, n, ok := tr.TakeDirty(1 + rnd.Int64N(1<<20)); ok {
					emit("T %d %d", off, n)
					taken = append(taken, rg{off, n})
				}
			case op < 16 && len(taken) > 0:
				i := rnd.IntN(len(taken))
				r := taken[i]
				taken = append(taken[:i], taken[i+1:]...)
				emit("C %d %d", r.off, r.n)
				tr.Complete(r.off, r.n)
			case op == 16:
				tr.Requeue()
				taken = nil
				emit("R")
			case op == 17:
				if err := tr.Persist(); err != nil {
					emit("ERR %v", err)
					os.Exit(3)
				}
			default:
				if err := tr.Clean(time.Now()); err != nil {
					emit("ERR %v", err)
					os.Exit(3)
				}
			}
			time.Sleep(time.Duration(rnd.IntN(50)) * time.Microsecond)
		}
	})
	wg.Wait()
	os.Exit(0)
}

func TestTrackerKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	path := filepath.Join(t.TempDir(), "state")
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	// Start every round from a fully synced disk, so that what is dirty
	// after the kill is only what the child's activity made so.
	tr, err := OpenTracker(path, crashSize, crashOpts())
	if err != nil {
		t.Fatal(err)
	}
	drain(t, tr)
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	const rounds = 8
	for round := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashEnv+"="+path)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The kill timer starts once the child has opened the tracker, so a
		// slow start on a loaded machine does not waste the round.
		opened := make(chan struct{})
		outc := make(chan []byte)
		go func() {
			br := bufio.NewReader(stdout)
			first, _ := br.ReadBytes('\n')
			close(opened)
			rest, _ := io.ReadAll(br)
			outc <- append(first, rest...)
		}()
		select {
		case <-opened:
		case <-time.After(2 * time.Minute):
			cmd.Process.Kill()
			t.Fatalf("round %d: child did not start; stderr:\n%s", round, stderr.Bytes())
		}
		time.Sleep(time.Duration(20+rnd.IntN(400)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		out := <-outc
		werr := cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("round %d: child was not killed (%v); stderr:\n%s\nstdout tail:\n%s", round, werr, stderr.Bytes(), tail(out))
		}

		m := newModel(geometry{diskSize: crashSize, blockShift: 12, extentShift: 18})
		open := map[rg]int{}
		lines := parseLines(t, out)
		if len(lines) == 0 || lines[0][0] != "OPEN" {
			t.Fatalf("round %d: child did not open the tracker; stderr:\n%s", round, stderr.Bytes())
		}
		for _, f := range lines[1:] {
			var r rg
			if len(f) == 3 {
				r.off, _ = strconv.ParseInt(f[1], 10, 64)
				r.n, _ = strconv.ParseInt(f[2], 10, 64)
			}
			lo, hi := m.blocks(r)
			switch f[0] {
			case "B":
				open[r]++
			case "A":
				open[r]--
			case "D":
				open[r]--
				for b := lo; b < hi; b++ {
					m.dirty[b] = true
				}
			case "T":
				for b := lo; b < hi; b++ {
					m.dirty[b] = false
					m.inflight[b] = true
				}
			case "C":
				for b := lo; b < hi; b++ {
					m.inflight[b] = false
				}
			case "R":
				for b, f := range m.inflight {
					m.dirty[b] = m.dirty[b] || f
				}
				m.inflight = make([]bool, len(m.dirty))
			case "ERR":
				t.Fatalf("round %d: child failed: %v", round, f)
			}
		}
		req := m.union()
		nreq := 0
		begun := 0
		for r, c := range open {
			if c > 0 {
				begun++
				lo, hi := m.blocks(r)
				for b := lo; b < hi; b++ {
					req[b] = true
				}
			}
		}

		tr, err := OpenTracker(path, crashSize, crashOpts())
		if err != nil {
			t.Fatalf("round %d: reopen after kill: %v", round, err)
		}
		got := trackerBits(tr)
		info := tr.Recovered()
		if miss := missing(req, got); len(miss) > 0 {
			t.Fatalf("round %d: %d blocks of acknowledged-but-unsynced writes not dirty after kill -9, first %v",
				round, len(miss), miss[:min(10, len(miss))])
		}
		for _, r := range req {
			if r {
				nreq++
			}
		}
		t.Logf("round %d: %d ops, %d writes open at kill, %d blocks required, recovered %+v",
			round, len(lines)-1, begun, nreq, info)
		if !info.Unclean {
			t.Fatalf("round %d: kill -9 not detected as unclean", round)
		}
		if info.DirtyBytes >= crashSize {
			t.Fatalf("round %d: whole disk dirty; the check proves nothing", round)
		}
		drain(t, tr)
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// parseLines splits output into fields, dropping a final partial line (a
// print cut short by the kill, whose operation the parent must not count).
func parseLines(t *testing.T, out []byte) [][]string {
	if i := bytes.LastIndexByte(out, '\n'); i >= 0 {
		out = out[:i+1]
	} else {
		out = nil
	}
	var lines [][]string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if f[0] == "PASS" || strings.HasPrefix(f[0], "---") || f[0] == "ok" {
			continue
		}
		lines = append(lines, f)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

func tail(b []byte) []byte {
	return b[max(0, len(b)-2000):]
}
