package nbd

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
		name  string
		start func(b *testing.B, img string) string // returns URI
	}{
		{"standby", func(b *testing.B, img string) string {
			d, err := blockdev.Open(img, false)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { d.Close() })
			ts := startServer(b, &Export{Name: "disk", Backend: DiskBackend{Disk: d}})
			return ts.unixURI("disk")
		}},
		{"qemu-nbd", func(b *testing.B, img string) string {
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
			return fmt.Sprintf("nbd+unix:///disk?socket=%s", sock)
		}},
	}
	for _, srv := range servers {
		b.Run(srv.name, func(b *testing.B) {
			img := filepath.Join(b.TempDir(), "fio.img")
			if err := blockdev.Create(img, size); err != nil {
				b.Fatal(err)
			}
			uri := srv.start(b, img)
			for _, w := range workloads {
				b.Run(w.name, func(b *testing.B) {
					out := filepath.Join(b.TempDir(), "fio.json")
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
					defer cancel()
					cmd := exec.CommandContext(ctx, "fio", "--name="+w.name, "--ioengine=nbd", "--uri="+uri,
						"--rw="+w.rw, "--bs="+w.bs, fmt.Sprintf("--iodepth=%d", w.depth),
						"--runtime="+runtime, "--time_based", "--output-format=json", "--output="+out)
					if msg, err := cmd.CombinedOutput(); err != nil {
						b.Fatalf("fio: %v\n%s", err, msg)
					}
					var res struct {
						Jobs []struct {
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
				})
			}
		})
	}
}
