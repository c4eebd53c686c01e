// Command benchutil is the small helper bench/run.sh uses to watch standby
// while it is benchmarked: wait until a pair has synced, sample lag and
// memory once a second, and read fio's JSON. It talks to the roles only
// through their status endpoints (GET /status) and /proc, and decodes the
// few fields it needs into its own structs, so it does not depend on the
// internal packages it measures.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "wait-up":
		err = waitUp(os.Args[2:])
	case "wait-sync":
		err = waitSync(os.Args[2:])
	case "monitor":
		err = monitor(os.Args[2:])
	case "fio":
		err = fioSummary(os.Args[2:])
	case "agent":
		err = agentField(os.Args[2:])
	case "cpu":
		if len(os.Args) != 3 {
			usage()
		}
		var pid int
		if pid, err = strconv.Atoi(os.Args[2]); err == nil {
			var c float64
			if c, err = procCPU(pid); err == nil {
				fmt.Printf("%.2f\n", c)
			}
		}
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchutil:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage:
  benchutil wait-up ADDR [TIMEOUT]
  benchutil wait-sync --agent ADDR --mt ADDR [--start UNIXNANO] [--timeout D] [--poll D]
  benchutil monitor --agent ADDR [--mt ADDR] [--pid NAME=PID]... [--interval D] [--csv FILE]   (runs until SIGTERM/SIGINT)
  benchutil fio FILE.json
  benchutil agent ADDR   (one line of key=value from the agent's status)
  benchutil cpu PID      (user+system CPU seconds of a process so far)`)
	os.Exit(2)
}

// The status fields used here (see internal/agent/status.go and
// internal/mastertarget/apply.go).
type agentStatus struct {
	Machine    string  `json:"machine"`
	Connected  bool    `json:"connected"`
	LastSeq    uint64  `json:"last_seq"`
	DurableSeq uint64  `json:"durable_seq"`
	QueueBytes int64   `json:"queue_bytes"`
	BitmapMode bool    `json:"bitmap_mode"`
	Overflows  uint64  `json:"overflows"`
	LagSeconds float64 `json:"lag_seconds"`
	Drained    bool    `json:"drained"`
	Disks      []struct {
		Name       string `json:"name"`
		State      string `json:"state"`
		DirtyBytes int64  `json:"dirty_bytes"`
	} `json:"disks"`
}

type mtStatus struct {
	Machines []struct {
		Machine    string  `json:"machine"`
		AppliedSeq uint64  `json:"last_applied_seq"`
		LagSeconds float64 `json:"lag_seconds"`
		Disks      []struct {
			Consistent bool `json:"consistent"`
		} `json:"disks"`
	} `json:"machines"`
}

var client = &http.Client{Timeout: 5 * time.Second}

func fetch(addr string, v any) error {
	resp, err := client.Get("http://" + addr + "/status")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", addr, resp.Status)
	}
	return json.Unmarshal(b, v)
}

func waitUp(args []string) error {
	if len(args) < 1 {
		usage()
	}
	timeout := 30 * time.Second
	if len(args) > 1 {
		d, err := time.ParseDuration(args[1])
		if err != nil {
			return err
		}
		timeout = d
	}
	deadline := time.Now().Add(timeout)
	for {
		var v map[string]any
		err := fetch(args[0], &v)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not up after %s: %w", args[0], timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// synced is the condition "the replica is identical to the source as of
// now": every disk replicating with nothing dirty, the agent drained (all
// it sequenced is durable at the master target) and the master target has
// applied through the agent's last sequence number with consistent disks.
func synced(a *agentStatus, m *mtStatus) bool {
	if !a.Connected || !a.Drained || a.DurableSeq < a.LastSeq || a.QueueBytes != 0 || len(a.Disks) == 0 {
		return false
	}
	for _, d := range a.Disks {
		if d.State != "replicating" || d.DirtyBytes != 0 {
			return false
		}
	}
	for _, mm := range m.Machines {
		if mm.Machine != a.Machine {
			continue
		}
		if mm.AppliedSeq < a.LastSeq {
			return false
		}
		for _, d := range mm.Disks {
			if !d.Consistent {
				return false
			}
		}
		return true
	}
	return false
}

func waitSync(args []string) error {
	fs := flag.NewFlagSet("wait-sync", flag.ExitOnError)
	agentAddr := fs.String("agent", "", "agent status address")
	mtAddr := fs.String("mt", "", "master target status address")
	start := fs.Int64("start", 0, "unix nanoseconds to measure from (default: now)")
	timeout := fs.Duration("timeout", 30*time.Minute, "give up after")
	poll := fs.Duration("poll", 100*time.Millisecond, "poll interval")
	_ = fs.Parse(args)
	if *agentAddr == "" || *mtAddr == "" {
		usage()
	}
	t0 := time.Now()
	if *start != 0 {
		t0 = time.Unix(0, *start)
	}
	deadline := time.Now().Add(*timeout)
	connectedAt := -1.0
	var a agentStatus
	for {
		a = agentStatus{}
		var m mtStatus
		errA := fetch(*agentAddr, &a)
		errM := fetch(*mtAddr, &m)
		now := time.Now()
		if errA == nil && a.Connected && connectedAt < 0 {
			connectedAt = now.Sub(t0).Seconds()
		}
		if errA == nil && errM == nil && synced(&a, &m) {
			fmt.Printf("elapsed=%.3f connected_at=%.3f last_seq=%d overflows=%d\n", now.Sub(t0).Seconds(), connectedAt, a.LastSeq, a.Overflows)
			return nil
		}
		if now.After(deadline) {
			return fmt.Errorf("not synced after %s (agent err %v, master target err %v, last status %+v)", *timeout, errA, errM, a)
		}
		time.Sleep(*poll)
	}
}

type pidFlag []string

func (p *pidFlag) String() string     { return strings.Join(*p, ",") }
func (p *pidFlag) Set(s string) error { *p = append(*p, s); return nil }

// procKiB reads VmRSS and VmHWM (KiB) of a process.
func procKiB(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	return rss, hwm, nil
}

// procCPU is the user+system CPU time of a process in seconds (USER_HZ is
// 100 on every Linux architecture Go supports here).
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("unexpected /proc stat format")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100, nil
}

// monitor samples the agent's lag and the processes' memory until it is
// told to stop, then prints a one-line summary of key=value pairs.
func monitor(args []string) error {
	fs := flag.NewFlagSet("monitor", flag.ExitOnError)
	agentAddr := fs.String("agent", "", "agent status address (optional)")
	mtAddr := fs.String("mt", "", "master target status address (optional): samples its apply lag, the age of the newest applied epoch")
	interval := fs.Duration("interval", time.Second, "sample interval")
	csvPath := fs.String("csv", "", "write every sample here")
	var pids pidFlag
	fs.Var(&pids, "pid", "NAME=PID of a process whose memory to sample (repeatable)")
	_ = fs.Parse(args)
	type proc struct {
		name        string
		pid         int
		maxRSS, hwm int64
		cpu0, cpu1  float64
		haveCPU     bool
	}
	var procs []*proc
	for _, p := range pids {
		n, v, ok := strings.Cut(p, "=")
		pid, err := strconv.Atoi(v)
		if !ok || err != nil {
			return fmt.Errorf("--pid %q: want NAME=PID", p)
		}
		procs = append(procs, &proc{name: n, pid: pid})
	}
	var csv io.Writer = io.Discard
	if *csvPath != "" {
		f, err := os.Create(*csvPath)
		if err != nil {
			return err
		}
		defer f.Close()
		csv = f
	}
	hdr := "t,lag_s,queue_bytes,bitmap_mode,overflows,state,connected,dirty_bytes,unconfirmed_seqs,mt_lag_s"
	for _, p := range procs {
		hdr += ",rss_kib_" + p.name
	}
	fmt.Fprintln(csv, hdr)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	t0 := time.Now()
	var maxLag, maxMTLag float64
	var lags, mtLags []float64
	var ovStart, ovEnd uint64
	first := true
	bitmapSeen, disconnected := false, false
	samples := 0
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	sample := func() {
		samples++
		line := fmt.Sprintf("%.2f", time.Since(t0).Seconds())
		if *agentAddr != "" {
			var a agentStatus
			if err := fetch(*agentAddr, &a); err == nil {
				if first {
					ovStart, first = a.Overflows, false
				}
				ovEnd = a.Overflows
				maxLag = max(maxLag, a.LagSeconds)
				lags = append(lags, a.LagSeconds)
				bitmapSeen = bitmapSeen || a.BitmapMode
				disconnected = disconnected || !a.Connected
				st := ""
				var dirty int64
				for _, d := range a.Disks {
					st += d.State + ";"
					dirty += d.DirtyBytes
				}
				line += fmt.Sprintf(",%.3f,%d,%v,%d,%s,%v,%d,%d", a.LagSeconds, a.QueueBytes, a.BitmapMode, a.Overflows, strings.TrimSuffix(st, ";"), a.Connected, dirty, a.LastSeq-min(a.DurableSeq, a.LastSeq))
			} else {
				line += ",,,,,,,,"
			}
		} else {
			line += ",,,,,,,,"
		}
		line += ","
		if *mtAddr != "" {
			var m mtStatus
			// The master target's lag is the age of its newest applied
			// epoch, which grows while no writes come: the first seconds
			// show how long the pair was idle before the job, not how
			// far apply is behind.
			if err := fetch(*mtAddr, &m); err == nil && len(m.Machines) > 0 {
				l := m.Machines[0].LagSeconds
				line += fmt.Sprintf("%.3f", l)
				if time.Since(t0) > 3*time.Second {
					maxMTLag = max(maxMTLag, l)
					mtLags = append(mtLags, l)
				}
			}
		}
		for _, p := range procs {
			rss, hwm, err := procKiB(p.pid)
			if err == nil {
				p.maxRSS = max(p.maxRSS, rss)
				p.hwm = max(p.hwm, hwm)
			}
			if c, err := procCPU(p.pid); err == nil {
				if !p.haveCPU {
					p.cpu0, p.haveCPU = c, true
				}
				p.cpu1 = c
			}
			line += fmt.Sprintf(",%d", rss)
		}
		fmt.Fprintln(csv, line)
	}
	sample()
loop:
	for {
		select {
		case <-stop:
			break loop
		case <-tick.C:
			sample()
		}
	}
	sample()
	p50 := 0.0
	if len(lags) > 0 {
		s := append([]float64(nil), lags...)
		sort.Float64s(s)
		p50 = s[len(s)/2]
	}
	out := fmt.Sprintf("samples=%d max_lag=%.3f median_lag=%.3f overflows=%d bitmap_seen=%v disconnected_seen=%v", samples, maxLag, p50, ovEnd-ovStart, bitmapSeen, disconnected)
	if *mtAddr != "" {
		m50 := 0.0
		if len(mtLags) > 0 {
			s := append([]float64(nil), mtLags...)
			sort.Float64s(s)
			m50 = s[len(s)/2]
		}
		out += fmt.Sprintf(" max_mt_lag=%.3f median_mt_lag=%.3f", maxMTLag, m50)
	}
	for _, p := range procs {
		out += fmt.Sprintf(" rss_max_kib_%s=%d hwm_kib_%s=%d cpu_s_%s=%.2f", p.name, p.maxRSS, p.name, p.hwm, p.name, p.cpu1-p.cpu0)
	}
	fmt.Println(out)
	return nil
}

// fioSummary prints the write figures of the first job of a fio JSON file.
func fioSummary(args []string) error {
	if len(args) != 1 {
		usage()
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	// fio's nbd engine prints a line before the JSON when --output is not used.
	if i := bytes.IndexByte(b, '{'); i > 0 {
		b = b[i:]
	}
	var r struct {
		Jobs []struct {
			Error int `json:"error"`
			Write struct {
				IOPS    float64 `json:"iops"`
				BWBytes float64 `json:"bw_bytes"`
				IOBytes int64   `json:"io_bytes"`
				Runtime int64   `json:"runtime"`
				ClatNS  struct {
					Mean       float64            `json:"mean"`
					Percentile map[string]float64 `json:"percentile"`
				} `json:"clat_ns"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	if len(r.Jobs) == 0 {
		return errors.New("no jobs in fio output")
	}
	w := r.Jobs[0].Write
	p99 := w.ClatNS.Percentile["99.000000"]
	fmt.Printf("iops=%.0f bw_bytes=%.0f lat_mean_us=%.1f lat_p99_us=%.1f io_bytes=%d runtime_ms=%d error=%d\n",
		w.IOPS, w.BWBytes, w.ClatNS.Mean/1000, p99/1000, w.IOBytes, w.Runtime, r.Jobs[0].Error)
	return nil
}

func agentField(args []string) error {
	if len(args) != 1 {
		usage()
	}
	var a agentStatus
	if err := fetch(args[0], &a); err != nil {
		return err
	}
	st := ""
	for _, d := range a.Disks {
		st += d.State + ";"
	}
	fmt.Printf("connected=%v last_seq=%d durable_seq=%d queue_bytes=%d bitmap_mode=%v overflows=%d lag=%.3f drained=%v state=%s\n",
		a.Connected, a.LastSeq, a.DurableSeq, a.QueueBytes, a.BitmapMode, a.Overflows, a.LagSeconds, a.Drained, strings.TrimSuffix(st, ";"))
	return nil
}
