// Package demo runs every role of standby in one process on loopback with
// a sample disk, so a new user sees the whole data path work in a minute.
package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"standby/internal/agent"
	"standby/internal/blockdev"
	"standby/internal/config"
	"standby/internal/mastertarget"
	"standby/internal/nbd"
	"standby/internal/pki"
	"standby/internal/processserver"
	"standby/internal/statusapi"
	"standby/internal/verify"
)

// Options of the demo.
type Options struct {
	Dir      string
	DiskSize int64
	Keep     bool
	Logger   *slog.Logger
}

const machine = "demo-web"

// Run runs the demo.
func Run(ctx context.Context, o Options) error {
	if o.DiskSize == 0 {
		o.DiskSize = 256 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "standby-demo-")
		if err != nil {
			return err
		}
		o.Dir = d
	}
	say := func(format string, a ...any) { fmt.Printf("==> "+format+"\n", a...) }
	say("working directory %s", o.Dir)
	files, err := pki.DevPKI(filepath.Join(o.Dir, "pki"), []string{"127.0.0.1", "localhost"},
		pki.Identity{Role: pki.RoleAgent, Name: machine}, pki.Identity{Role: pki.RoleProcessServer, Name: "ps1"}, pki.Identity{Role: pki.RoleMasterTarget, Name: "mt1"})
	if err != nil {
		return err
	}
	tlsOf := func(r pki.Role, n string) config.TLS {
		f := files[pki.Identity{Role: r, Name: n}]
		return config.TLS{CA: f.CA, Cert: f.Cert, Key: f.Key}
	}
	diskPath := filepath.Join(o.Dir, "primary", "disk0.img")
	if err := sampleDisk(ctx, diskPath, o.DiskSize); err != nil {
		return err
	}
	say("sample disk %s (%d MiB)", diskPath, o.DiskSize>>20)

	ctx, cancel := context.WithCancel(ctx)
	// The roles are stopped, and waited for, whatever way Run returns.
	var roles sync.WaitGroup
	defer roles.Wait()
	defer cancel()
	errc := make(chan error, 3)
	run := func(f func(context.Context) error) {
		roles.Add(1)
		go func() {
			defer roles.Done()
			errc <- f(ctx)
		}()
	}

	mtTLS, err := config.MasterTargetTLS(tlsOf(pki.RoleMasterTarget, "mt1"))
	if err != nil {
		return err
	}
	mtStatus := freeAddr()
	mt, err := mastertarget.New(mastertarget.Config{Name: "mt1", Listen: "127.0.0.1:0", DataDir: filepath.Join(o.Dir, "secondary"), StatusListen: mtStatus, ServerTLS: mtTLS, Logger: o.Logger})
	if err != nil {
		return err
	}
	run(mt.Run)
	mtAddr := waitAddr(ctx, mt.Addr)

	psSrv, psCli, err := config.ProcessServerTLS(tlsOf(pki.RoleProcessServer, "ps1"), mtAddr)
	if err != nil {
		return err
	}
	psStatus := freeAddr()
	ps, err := processserver.New(processserver.Config{Name: "ps1", Listen: "127.0.0.1:0", CacheDir: filepath.Join(o.Dir, "ps-cache"), MasterTarget: mtAddr, StatusListen: psStatus, ServerTLS: psSrv, ClientTLS: psCli, Logger: o.Logger})
	if err != nil {
		return err
	}
	run(ps.Run)
	psAddr := waitAddr(ctx, ps.Addr)

	aTLS, err := config.AgentTLS(tlsOf(pki.RoleAgent, machine), psAddr)
	if err != nil {
		return err
	}
	sock := filepath.Join(o.Dir, "nbd.sock")
	agStatus := freeAddr()
	ag, err := agent.New(agent.Config{Machine: machine, StateDir: filepath.Join(o.Dir, "agent-state"), ProcessServer: psAddr,
		NBDListen: []string{"unix:" + sock}, StatusListen: agStatus, Disks: []agent.DiskConfig{{Name: "disk0", Path: diskPath}}, TLS: aTLS, Logger: o.Logger})
	if err != nil {
		return err
	}
	run(ag.Run)
	say("master target %s, process server %s, agent exporting disk0 at nbd+unix:///disk0?socket=%s", mtAddr, psAddr, sock)

	// The workload writes while the initial copy runs.
	var c *nbd.Client
	for i := 0; ; i++ {
		c, err = nbd.Dial(ctx, "unix", sock, "disk0")
		if err == nil {
			break
		}
		if i > 100 {
			return fmt.Errorf("connecting to the agent's NBD export: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer c.Close()
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	buf := make([]byte, 1<<20)
	writes := 0
	for ag.Status().Disks[0].State != agent.StateReplicating || writes < 200 {
		n := int64(512 * (1 + rng.IntN(2048)))
		off := rng.Int64N((o.DiskSize-n)/512) * 512
		for i := range buf[:n] {
			buf[i] = byte(rng.Uint32())
		}
		if err := c.WriteAt(buf[:n], off, false); err != nil {
			return fmt.Errorf("workload write: %w", err)
		}
		writes++
		if writes%50 == 0 {
			if err := c.Flush(); err != nil {
				return err
			}
			st := ag.Status().Disks[0]
			say("workload: %d writes; disk0 %s %d/%d bytes copied", writes, st.State, st.SyncDone, st.SyncTotal)
		}
		select {
		case err := <-errc:
			return fmt.Errorf("a role stopped: %w", err)
		default:
		}
	}
	if err := c.Flush(); err != nil {
		return err
	}
	say("initial copy done; %d writes during it; waiting for the replica to drain", writes)
	res, err := verify.Pair(ctx, agStatus, mtStatus, 0, 5*time.Minute)
	if err != nil {
		return err
	}
	for _, r := range res {
		if !r.Identical {
			return fmt.Errorf("replica of %s differs in %d bytes", r.Disk, r.DiffBytes)
		}
		say("verify: %s identical to replica %s (%d bytes)", r.Disk, r.Replica, r.Size)
	}
	// A recovery point and a test failover: an app-consistent bookmark,
	// then the disk at that point opened as a copy-on-write NBD export
	// while replication goes on, read back and compared with the source.
	bm, err := ag.Bookmark(ctx, "demo-golden")
	if err != nil {
		return fmt.Errorf("bookmark: %w", err)
	}
	say("app-consistent bookmark %q at seq %d (writes held %s)", bm.Name, bm.Seq, bm.Held.Round(time.Microsecond))
	var v mastertarget.ViewInfo
	for i := 0; ; i++ {
		err = statusapi.Call(ctx, mtStatus, "POST", "/machines/"+machine+"/views", mastertarget.ViewRequest{Point: "latest"}, &v)
		if err == nil && v.Point.Name == bm.Name {
			break
		}
		if err == nil {
			_ = statusapi.Call(ctx, mtStatus, "DELETE", "/views/"+v.ID, nil, nil)
		}
		if i > 100 {
			return fmt.Errorf("opening a view at the bookmark: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	say("test failover: point %d (%s, %s) served at %s", v.Point.ID, v.Point.Kind, v.Point.Time.Format(time.RFC3339), v.Exports[0].URI)
	if err := compareExport(ctx, v.Exports[0].URI, diskPath); err != nil {
		return err
	}
	say("the view at the bookmark equals the source disk")
	if !o.Keep {
		_ = statusapi.Call(ctx, mtStatus, "DELETE", "/views/"+v.ID, nil, nil)
	}
	say("points:  standby points list --master-target %s --machine %s", mtStatus, machine)
	say("status:  standby status %s %s %s", agStatus, psStatus, mtStatus)
	say("metrics: http://%s/metrics", agStatus)
	if !o.Keep {
		say("demo complete (use --keep to leave it running)")
		return nil
	}
	say("running until interrupted")
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// sampleDisk makes a disk with a real file system when mkfs.ext4 can fill
// one from a directory, otherwise with patterned data and holes.
func sampleDisk(ctx context.Context, path string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	_ = os.Remove(path)
	if err := blockdev.Create(path, size); err != nil {
		return err
	}
	if mkfs, err := exec.LookPath("mkfs.ext4"); err == nil {
		cmd := exec.CommandContext(ctx, mkfs, "-q", "-F", "-d", "/usr/share/doc", path)
		if out, err := cmd.CombinedOutput(); err == nil {
			return nil
		} else if len(out) > 0 && !errors.Is(err, context.Canceled) {
			// /usr/share/doc may not fit: fall through to an empty file system plus data.
			cmd = exec.CommandContext(ctx, mkfs, "-q", "-F", path)
			if _, err := cmd.CombinedOutput(); err == nil {
				return nil
			}
		}
	}
	d, err := blockdev.Open(path, false)
	if err != nil {
		return err
	}
	defer d.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size/2; off += int64(len(buf)) {
		for i := range buf {
			buf[i] = byte(off>>20) ^ byte(i)
		}
		if _, err := d.WriteAt(buf, off); err != nil {
			return err
		}
	}
	return d.Sync()
}

// compareExport reads an NBD export (a view) and compares it with a file.
func compareExport(ctx context.Context, uri, path string) error {
	u, err := url.Parse(uri)
	if err != nil {
		return err
	}
	c, err := nbd.Dial(ctx, "unix", u.Query().Get("socket"), strings.TrimPrefix(u.Path, "/"))
	if err != nil {
		return fmt.Errorf("connecting to the view: %w", err)
	}
	defer c.Close()
	src, err := blockdev.Open(path, true)
	if err != nil {
		return err
	}
	defer src.Close()
	a, b := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); off < src.Size(); off += int64(len(a)) {
		n := min(int64(len(a)), src.Size()-off)
		if err := c.ReadAt(a[:n], off); err != nil {
			return fmt.Errorf("reading the view: %w", err)
		}
		if _, err := src.ReadAt(b[:n], off); err != nil {
			return err
		}
		if !bytes.Equal(a[:n], b[:n]) {
			return fmt.Errorf("the view differs from the source near byte %d", off)
		}
	}
	return nil
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:0"
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitAddr(ctx context.Context, f func() string) string {
	for ctx.Err() == nil {
		if a := f(); a != "" {
			return a
		}
		time.Sleep(10 * time.Millisecond)
	}
	return ""
}
