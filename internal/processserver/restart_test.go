package processserver_test

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
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

// role runs one role's Run until stopped.
type role struct {
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, run func(context.Context) error) *role {
	ctx, cancel := context.WithCancel(context.Background())
	r := &role{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *role) stop(t *testing.T) {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("role stopped with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("role did not stop within 30 s")
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// testPKI makes certificates for an agent of each machine, process server
// "ps1" and master target "mt1", and returns where each identity's files
// are.
func testPKI(t *testing.T, dir string, machines ...string) func(pki.Role, string) config.TLS {
	t.Helper()
	ids := []pki.Identity{{Role: pki.RoleProcessServer, Name: "ps1"}, {Role: pki.RoleMasterTarget, Name: "mt1"}}
	for _, m := range machines {
		ids = append(ids, pki.Identity{Role: pki.RoleAgent, Name: m})
	}
	files, err := pki.DevPKI(filepath.Join(dir, "pki"), []string{"127.0.0.1"}, ids...)
	if err != nil {
		t.Fatal(err)
	}
	return func(r pki.Role, n string) config.TLS {
		f := files[pki.Identity{Role: r, Name: n}]
		return config.TLS{CA: f.CA, Cert: f.Cert, Key: f.Key}
	}
}

// The process server and the master target are stopped and started again,
// on the same directories and addresses, while a workload writes through
// the agent; all three roles run in this process, so the race detector
// sees their goroutines together. Afterwards the replica is identical.
func TestRestartsUnderWrites(t *testing.T) {
	dir := t.TempDir()
	lg := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tlsOf := testPKI(t, dir, "web")
	mtAddr, psAddr := freeAddr(t), freeAddr(t)
	mtStatus, agStatus := freeAddr(t), freeAddr(t)

	mtTLS, err := config.MasterTargetTLS(tlsOf(pki.RoleMasterTarget, "mt1"))
	if err != nil {
		t.Fatal(err)
	}
	startMT := func() *role {
		mt, err := mastertarget.New(mastertarget.Config{Name: "mt1", Listen: mtAddr, DataDir: filepath.Join(dir, "mt"), StatusListen: mtStatus, ServerTLS: mtTLS, Logger: lg})
		if err != nil {
			t.Fatal(err)
		}
		return start(t, mt.Run)
	}
	var psSrv, psCli *tls.Config
	if psSrv, psCli, err = config.ProcessServerTLS(tlsOf(pki.RoleProcessServer, "ps1"), mtAddr); err != nil {
		t.Fatal(err)
	}
	startPS := func() *role {
		ps, err := processserver.New(processserver.Config{Name: "ps1", Listen: psAddr, CacheDir: filepath.Join(dir, "ps"), MasterTarget: mtAddr, ServerTLS: psSrv, ClientTLS: psCli, Logger: lg})
		if err != nil {
			t.Fatal(err)
		}
		return start(t, ps.Run)
	}

	const size = 32 << 20
	disk := filepath.Join(dir, "disk0.img")
	src := make([]byte, size/2)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range src {
		src[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(disk, src, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, size); err != nil { // the second half a hole
		t.Fatal(err)
	}
	aTLS, err := config.AgentTLS(tlsOf(pki.RoleAgent, "web"), psAddr)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "nbd.sock")
	ag, err := agent.New(agent.Config{Machine: "web", StateDir: filepath.Join(dir, "agent"), ProcessServer: psAddr,
		NBDListen: []string{"unix:" + sock}, StatusListen: agStatus, Disks: []agent.DiskConfig{{Name: "disk0", Path: disk}}, TLS: aTLS, Logger: lg})
	if err != nil {
		t.Fatal(err)
	}
	mt := startMT()
	ps := startPS()
	start(t, ag.Run)

	var c *nbd.Client
	for i := 0; ; i++ {
		if c, err = nbd.Dial(context.Background(), "unix", sock, "disk0"); err == nil {
			break
		}
		if i > 200 {
			t.Fatalf("agent's NBD export: %v", err)
		}
		time.Sleep(25 * time.Millisecond)
	}
	defer c.Close()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writes atomic.Int64
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 256<<10)
		for {
			select {
			case <-stop:
				werr = c.Flush()
				return
			default:
			}
			n := int64(4096 * (1 + rng.IntN(64)))
			off := rng.Int64N((size-n)/4096) * 4096
			for i := range buf[:n] {
				buf[i] = byte(int(writes.Load()) + i)
			}
			if werr = c.WriteAt(buf[:n], off, writes.Load()%7 == 0); werr != nil {
				return
			}
			if writes.Add(1)%32 == 0 {
				if werr = c.Flush(); werr != nil {
					return
				}
			}
		}
	}()
	for round := range 2 {
		time.Sleep(700 * time.Millisecond)
		ps.stop(t)
		time.Sleep(300 * time.Millisecond) // the agent's queue holds the writes meanwhile
		ps = startPS()
		time.Sleep(700 * time.Millisecond)
		mt.stop(t)
		time.Sleep(300 * time.Millisecond) // the process server's cache holds them
		mt = startMT()
		t.Logf("round %d: %d writes so far", round, writes.Load())
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if werr != nil {
		t.Fatalf("workload: %v", werr)
	}
	if writes.Load() < 50 {
		t.Fatalf("only %d writes went through the restarts", writes.Load())
	}
	res, err := verify.Pair(context.Background(), agStatus, mtStatus, 0, 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if !r.Identical {
			t.Fatalf("replica of %s differs in %d bytes: %v", r.Disk, r.DiffBytes, r.Differ)
		}
	}
	t.Logf("%d writes, replica identical after two restarts of each of the process server and master target", writes.Load())
}
