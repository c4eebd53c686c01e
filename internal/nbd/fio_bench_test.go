package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"standby/internal/blockdev"
)

// BenchmarkFio compares this server with qemu-nbd under fio's libnbd engine
// on the same kind of sparse image file. Each sub-benchmark is one timed fio
// run; read the iops and MB/s metrics, not ns/op:
//
//	go test -run=^$ -bench=Fio -benchtime=1x ./internal/nbd
func BenchmarkFio(b *testing.B) {
	requireTool(b, "fio", "qemu-nbd")
	type workload struct {
		name, rw string
		bs       string
		depth    int
	}
	workloads := []workload{
		{"randwrite-4k-qd1", "randwrite", "4k", 1},
		{"randwrite-4k-qd32", "randwrite", "4k", 32},
		{"randread-4k-qd32", "randread", "4k", 32},
		{"write-1m-qd4", "write", "1m", 4},
		{"read-1m-qd4", "read", "1m", 4},
	}
	const size = 1 << 30
	runtime := os.Getenv("NBD_FIO_RUNTIME")
	if runtime == "" {
		runtime = "5"
	}
	servers := []struct {
		name string
		// start serves img and returns its URI and a function reporting
		// the server's CPU time so far.
		start func(b *testing.B, img string) (string, func() time.Duration)
	}{
		{"standby", func(b *testing.B, img string) (string, func() time.Duration) {
			d, err := blockdev.Open(img, false)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { d.Close() })
			ts := startServer(b, &Export{Name: "disk", Backend: DiskBackend{Disk: d}})
			// The server runs in this process; fio is a child and not
			// counted by RUSAGE_SELF.
			return ts.unixURI("disk"), func() time.Duration {
				var ru syscall.Rusage
				syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
				return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			}
		}},
		{"qemu-nbd", func(b *testing.B, img string) (string, func() time.Duration) {
			sock := filepath.Join(filepath.Dir(img), "q.sock")
			cmd := exec.Command("qemu-nbd", "-f", "raw", "-x", "disk", "-k", sock, "-t", "-e", "8", "--cache=writeback", img)
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				cmd.Process.Kill()
				cmd.Wait()
			})
			deadline := time.Now().Add(10 * time.Second)
			for {
				if _, err := os.Stat(sock); err == nil {
					break
				}
				if time.Now().After(deadline) {
					b.Fatal("qemu-nbd did not create its socket")
				}
				time.Sleep(20 * time.Millisecond)
			}
			return fmt.Sprintf("nbd+unix:///disk?socket=%s", sock), func() time.Duration {
				return procCPU(b, cmd.Process.Pid)
			}
		}},
	}
	for _, srv := range servers {
		b.Run(srv.name, func(b *testing.B) {
			img := filepath.Join(b.TempDir(), "fio.img")
			if err := blockdev.Create(img, size); err != nil {
				b.Fatal(err)
			}
			uri, cpu := srv.start(b, img)
			for _, w := range workloads {
				b.Run(w.name, func(b *testing.B) {
					out := filepath.Join(b.TempDir(), "fio.json")
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
					defer cancel()
					cmd := exec.CommandContext(ctx, "fio", "--name="+w.name, "--ioengine=nbd", "--uri="+uri,
						"--rw="+w.rw, "--bs="+w.bs, fmt.Sprintf("--iodepth=%d", w.depth),
						"--runtime="+runtime, "--time_based", "--output-format=json", "--output="+out)
					cpu0 := cpu()
					msg, err := cmd.CombinedOutput()
					used := cpu() - cpu0
					if err != nil {
						b.Fatalf("fio: %v\n%s", err, msg)
					}
					var res struct {
						Jobs []struct {
							Runtime     int64 `json:"job_runtime"` // ms
							Read, Write struct {
								IOPS  float64 `json:"iops"`
								BW    float64 `json:"bw_bytes"`
								LatNS struct {
									Mean float64 `json:"mean"`
								} `json:"lat_ns"`
							}
						} `json:"jobs"`
					}
					raw, err := os.ReadFile(out)
					if err != nil {
						b.Fatal(err)
					}
					if err := json.Unmarshal(raw, &res); err != nil || len(res.Jobs) == 0 {
						b.Fatalf("parsing fio output: %v\n%s", err, raw)
					}
					j := res.Jobs[0]
					st := j.Write
					if j.Read.IOPS > 0 {
						st = j.Read
					}
					b.ReportMetric(st.IOPS, "iops")
					b.ReportMetric(st.BW/1e6, "MB/s")
					b.ReportMetric(st.LatNS.Mean/1e3, "lat-µs")
					if ops := st.IOPS * float64(j.Runtime) / 1e3; ops > 0 {
						b.ReportMetric(float64(used.Microseconds())/ops, "srv-cpu-µs/op")
					}
				})
			}
		})
	}
}

// procCPU returns the user+system time of another process from
// /proc/PID/stat (fields 14 and 15, in clock ticks of 1/100 s).
func procCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The command name may contain spaces; fields start after ")".
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}
