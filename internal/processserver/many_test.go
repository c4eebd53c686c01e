package processserver_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"standby/internal/agent"
	"standby/internal/config"
	"standby/internal/mastertarget"
	"standby/internal/nbd"
	"standby/internal/pki"
	"standby/internal/processserver"
	"standby/internal/verify"
)

// Several agents replicate through one process server to one master
// target at once: each starts its initial copy at the same moment and is
// written to while it copies. Every replica must end identical to its own
// source, and the copies the process server and the master target hold
// in memory for all of them together must stay within each one's shared
// relay budget (the rest goes through the cache or the intake log), so
// their memory does not grow with the number of machines.
func TestManyAgentsAtOnce(t *testing.T) {
	const (
		machines   = 5
		size       = 24 << 20
		relayTotal = 9 << 20 // more than any one batch (8 MiB), less than five machines' copies want
	)
	dir := t.TempDir()
	lg := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var names []string
	for i := range machines {
		names = append(names, fmt.Sprintf("m%d", i))
	}
	tlsOf := testPKI(t, dir, names...)
	mtAddr, psAddr, mtStatus := freeAddr(t), freeAddr(t), freeAddr(t)
	mtTLS, err := config.MasterTargetTLS(tlsOf(pki.RoleMasterTarget, "mt1"))
	if err != nil {
		t.Fatal(err)
	}
	mt, err := mastertarget.New(mastertarget.Config{Name: "mt1", Listen: mtAddr, DataDir: filepath.Join(dir, "mt"), StatusListen: mtStatus, ServerTLS: mtTLS, Logger: lg, NoJournal: true,
		RelayBytes: 8 << 20, RelayTotalBytes: relayTotal})
	if err != nil {
		t.Fatal(err)
	}
	start(t, mt.Run)
	psSrv, psCli, err := config.ProcessServerTLS(tlsOf(pki.RoleProcessServer, "ps1"), mtAddr)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := processserver.New(processserver.Config{Name: "ps1", Listen: psAddr, CacheDir: filepath.Join(dir, "ps"), MasterTarget: mtAddr,
		// The link to the master target is the bottleneck (as a WAN is),
		// so copies pile up in memory as far as they may.
		RelayBytes: 8 << 20, RelayTotalBytes: relayTotal, BandwidthLimit: 40 << 20, ServerTLS: psSrv, ClientTLS: psCli, Logger: lg})
	if err != nil {
		t.Fatal(err)
	}
	start(t, ps.Run)

	// Sample both servers' relays while everything runs.
	var maxRelay, maxMTRelay int64
	sampled := make(chan struct{})
	ctx, stopSampling := context.WithCancel(context.Background())
	go func() {
		defer close(sampled)
		for ctx.Err() == nil {
			maxRelay = max(maxRelay, ps.Status().RelayBytes)
			maxMTRelay = max(maxMTRelay, mt.Status().RelayBytes)
			time.Sleep(2 * time.Millisecond)
		}
	}()

	type protected struct {
		name, status, sock string
	}
	var all []protected
	for i := range machines {
		p := protected{name: fmt.Sprintf("m%d", i), status: freeAddr(t)}
		p.sock = filepath.Join(dir, p.name+".sock")
		disk := filepath.Join(dir, p.name+".img")
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		src := make([]byte, size*3/4) // the last quarter a hole
		for j := range src {
			src[j] = byte(rng.Uint32())
		}
		if err := os.WriteFile(disk, src, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(disk, size); err != nil {
			t.Fatal(err)
		}
		aTLS, err := config.AgentTLS(tlsOf(pki.RoleAgent, p.name), psAddr)
		if err != nil {
			t.Fatal(err)
		}
		ag, err := agent.New(agent.Config{Machine: p.name, StateDir: filepath.Join(dir, p.name+"-agent"), ProcessServer: psAddr,
			NBDListen: []string{"unix:" + p.sock}, StatusListen: p.status, Disks: []agent.DiskConfig{{Name: "disk0", Path: disk}}, TLS: aTLS, Logger: lg})
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, p)
		start(t, ag.Run) // all at once: their initial copies overlap
	}

	// Each machine is written to while its copy runs.
	var wg sync.WaitGroup
	errs := make(chan error, machines)
	for i, p := range all {
		wg.Go(func() {
			var c *nbd.Client
			var err error
			for k := 0; ; k++ {
				if c, err = nbd.Dial(context.Background(), "unix", p.sock, "disk0"); err == nil {
					break
				}
				if k > 200 {
					errs <- fmt.Errorf("%s: NBD export: %w", p.name, err)
					return
				}
				time.Sleep(25 * time.Millisecond)
			}
			defer c.Close()
			rng := rand.New(rand.NewPCG(uint64(i), 8))
			buf := make([]byte, 64<<10)
			for w := range 200 {
				n := int64(4096 * (1 + rng.IntN(16)))
				off := rng.Int64N((size-n)/4096) * 4096
				for j := range buf[:n] {
					buf[j] = byte(w + j + i)
				}
				if err := c.WriteAt(buf[:n], off, w%9 == 0); err != nil {
					errs <- fmt.Errorf("%s: write %d: %w", p.name, w, err)
					return
				}
			}
			if err := c.Flush(); err != nil {
				errs <- fmt.Errorf("%s: flush: %w", p.name, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	for _, p := range all {
		res, err := verify.Pair(context.Background(), p.status, mtStatus, 0, 3*time.Minute)
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		for _, r := range res {
			if !r.Identical {
				t.Fatalf("%s: replica of %s differs in %d bytes: %v", p.name, r.Disk, r.DiffBytes, r.Differ)
			}
		}
	}
	stopSampling()
	<-sampled
	st := ps.Status()
	if len(st.Machines) != machines {
		t.Fatalf("process server serves %d machines, want %d", len(st.Machines), machines)
	}
	if maxRelay > relayTotal {
		t.Fatalf("the process server held %d bytes of copies in memory for all machines, over its budget of %d", maxRelay, relayTotal)
	}
	if maxMTRelay > relayTotal {
		t.Fatalf("the master target held %d bytes of copies in memory for all machines, over its budget of %d", maxMTRelay, relayTotal)
	}
	t.Logf("%d machines identical; copies in memory at most %d (process server) and %d (master target) of %d bytes", machines, maxRelay, maxMTRelay, relayTotal)
}
