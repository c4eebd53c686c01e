// Package e2e runs standby's roles as separate processes, the way an
// administrator runs them, and checks real outcomes: replicas byte-identical
// to their sources after writes from real clients, crashes and cuts.
package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"standby/internal/agent"
	"standby/internal/mastertarget"
	"standby/internal/pki"
	"standby/internal/processserver"
	"standby/internal/statusapi"
	"standby/internal/verify"
)

// binary is the standby binary built once for all tests.
var standbyBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "standby-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	standbyBin = filepath.Join(dir, "standby")
	// The race detector runs on the unit tests; here it would slow every
	// role several-fold on two cores. STANDBY_E2E_RACE=1 turns it on.
	cmd := exec.Command("go", "build", "-o", standbyBin, "standby/cmd/standby")
	if os.Getenv("STANDBY_E2E_RACE") != "" {
		cmd = exec.Command("go", "build", "-race", "-o", standbyBin, "standby/cmd/standby")
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building standby:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireTools fails (never skips) when a tool the test needs is missing:
// CI installs them, and a silent skip would hide a hole in coverage.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required by this test and is not installed (apt-get install qemu-utils libnbd-bin nbdfuse fuse3 e2fsprogs systemd; scripts/test installs them all)", tool)
		}
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (loop devices, mounts, network namespaces)")
	}
}

// handedOut remembers every address freePort gave in this test binary:
// the kernel may offer a port again once its listener is closed, and two
// roles of one cluster were once given the same status port that way.
var handedOut = struct {
	sync.Mutex
	m map[string]bool
}{m: map[string]bool{}}

func freePort(t *testing.T) string {
	t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		handedOut.Lock()
		seen := handedOut.m[addr]
		handedOut.m[addr] = true
		handedOut.Unlock()
		if !seen {
			return addr
		}
	}
	t.Fatal("no unused loopback port after 100 tries")
	return ""
}

// proc is one role process.
type proc struct {
	t    *testing.T
	name string
	args []string
	log  string
	wrap []string // e.g. ip netns exec NS

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *proc) start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	fmt.Fprintf(f, "=== start %s %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(p.args, " "))
	argv := append(append([]string(nil), p.wrap...), standbyBin)
	argv = append(argv, p.args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		p.t.Fatalf("starting %s: %v", p.name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(done) }()
	p.cmd, p.done = cmd, done
}

// kill9 kills the process (and anything it started) with SIGKILL.
func (p *proc) kill9() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// stop asks the process to shut down cleanly.
func (p *proc) stop() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		p.t.Errorf("%s did not stop within 20s after SIGTERM; killing", p.name)
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// cluster is one protected machine with its process server and master target.
type cluster struct {
	t       *testing.T
	dir     string
	machine string
	pki     map[pki.Identity]pki.Files
	disks   []string // source paths
	sock    string   // NBD unix socket

	mtAddr, psAddr             string
	mtStatus, psStatus, agStat string

	mt, ps, ag *proc

	// options
	queueBytes int64
	cacheBytes int64
	loopDisks  map[int]bool // these disks are loop devices over their image files
	scanEvery  string       // non-empty: every disk in scan mode, a pass this often
	extraAgent []string
	extraPS    []string
	extraMT    []string
	mtWrap     []string
	psWrap     []string
	agWrap     []string
}

type clusterOpt func(*cluster)

func newCluster(t *testing.T, diskSizes []int64, opts ...clusterOpt) *cluster {
	t.Helper()
	dir := t.TempDir()
	c := &cluster{t: t, dir: dir, machine: "m1", sock: filepath.Join(dir, "nbd.sock")}
	for _, o := range opts {
		o(c)
	}
	ids := []pki.Identity{{Role: pki.RoleAgent, Name: c.machine}, {Role: pki.RoleProcessServer, Name: "ps1"}, {Role: pki.RoleMasterTarget, Name: "mt1"}}
	files, err := pki.DevPKI(filepath.Join(dir, "pki"), hostsFor(c), ids...)
	if err != nil {
		t.Fatal(err)
	}
	c.pki = files
	for i, sz := range diskSizes {
		p := filepath.Join(dir, "primary", fmt.Sprintf("disk%d.img", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, sz); err != nil {
			t.Fatal(err)
		}
		if c.loopDisks[i] {
			p = loopDevice(t, p)
		}
		c.disks = append(c.disks, p)
	}
	if c.mtAddr == "" {
		c.mtAddr = freePort(t)
	}
	if c.psAddr == "" {
		c.psAddr = freePort(t)
	}
	if c.mtStatus == "" {
		c.mtStatus, c.psStatus, c.agStat = freePort(t), freePort(t), freePort(t)
	}
	tlsArgs := func(r pki.Role, n string) []string {
		f := files[pki.Identity{Role: r, Name: n}]
		return []string{"--ca", f.CA, "--cert", f.Cert, "--key", f.Key}
	}
	c.mt = &proc{t: t, name: "master-target", log: filepath.Join(dir, "mt.log"), wrap: c.mtWrap,
		args: append(append([]string{"master-target", "--listen", c.mtAddr, "--data-dir", filepath.Join(dir, "secondary"), "--status", c.mtStatus}, tlsArgs(pki.RoleMasterTarget, "mt1")...), c.extraMT...)}
	psArgs := []string{"process-server", "--listen", c.psAddr, "--cache-dir", filepath.Join(dir, "ps-cache"), "--master-target", c.mtAddr, "--status", c.psStatus}
	if c.cacheBytes > 0 {
		psArgs = append(psArgs, "--cache-bytes", fmt.Sprint(c.cacheBytes))
	}
	c.ps = &proc{t: t, name: "process-server", log: filepath.Join(dir, "ps.log"), wrap: c.psWrap, args: append(append(psArgs, tlsArgs(pki.RoleProcessServer, "ps1")...), c.extraPS...)}
	agArgs := []string{"agent", "--machine", c.machine, "--state-dir", filepath.Join(dir, "agent-state"), "--process-server", c.psAddr, "--nbd", "unix:" + c.sock, "--status", c.agStat}
	for i, p := range c.disks {
		spec := fmt.Sprintf("disk%d=%s", i, p)
		if c.scanEvery != "" {
			spec += ",mode=scan,interval=" + c.scanEvery
		}
		agArgs = append(agArgs, "--disk", spec)
	}
	if c.queueBytes > 0 {
		agArgs = append(agArgs, "--queue-bytes", fmt.Sprint(c.queueBytes))
	}
	c.ag = &proc{t: t, name: "agent", log: filepath.Join(dir, "agent.log"), wrap: c.agWrap, args: append(append(agArgs, tlsArgs(pki.RoleAgent, c.machine)...), c.extraAgent...)}
	t.Cleanup(func() {
		c.ag.kill9()
		c.ps.kill9()
		c.mt.kill9()
		// With STANDBY_E2E_RACE=1 the roles run under the race detector,
		// which reports in their logs and lets them go on.
		for _, l := range []string{c.ag.log, c.ps.log, c.mt.log} {
			if logContains(l, "WARNING: DATA RACE") {
				t.Errorf("data race reported in %s", l)
			}
		}
		if keep := os.Getenv("STANDBY_E2E_KEEP_LOGS"); keep != "" {
			dst := filepath.Join(keep, strings.ReplaceAll(t.Name(), "/", "_"))
			_ = os.MkdirAll(dst, 0o755)
			for _, l := range []string{c.ag.log, c.ps.log, c.mt.log} {
				if b, err := os.ReadFile(l); err == nil {
					_ = os.WriteFile(filepath.Join(dst, filepath.Base(l)), b, 0o644)
				}
			}
		}
		if t.Failed() {
			for _, l := range []string{c.ag.log, c.ps.log, c.mt.log} {
				b, _ := os.ReadFile(l)
				if len(b) > 6000 {
					b = b[len(b)-6000:]
				}
				t.Logf("---- tail of %s ----\n%s", filepath.Base(l), b)
			}
		}
	})
	return c
}

// withLoopDisks makes the given disks loop devices over their image files:
// the agent protects a block device.
func withLoopDisks(idx ...int) clusterOpt {
	return func(c *cluster) {
		c.loopDisks = map[int]bool{}
		for _, i := range idx {
			c.loopDisks[i] = true
		}
	}
}

// loopDevice attaches file to a free loop device, detached at cleanup.
func loopDevice(t *testing.T, file string) string {
	t.Helper()
	requireRoot(t)
	requireTools(t, "losetup")
	out, err := exec.Command("losetup", "-f", "--show", file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup %s: %v\n%s", file, err, out)
	}
	dev := strings.TrimSpace(string(out))
	// Registered before the cluster's cleanup, so it runs after the roles
	// are killed and the device is no longer open.
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	return dev
}

func hostsFor(c *cluster) []string {
	hosts := []string{"127.0.0.1", "localhost"}
	for _, a := range []string{c.mtAddr, c.psAddr} {
		if h, _, err := net.SplitHostPort(a); err == nil {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

func (c *cluster) startAll() {
	c.mt.start()
	c.ps.start()
	c.ag.start()
	c.waitSocket()
}

// waitSocket waits until the agent's NBD socket accepts connections.
func (c *cluster) waitSocket() {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if conn, err := net.Dial("unix", c.sock); err == nil {
			conn.Close()
			return
		}
		if !c.ag.running() {
			c.t.Fatalf("agent exited; see %s", c.ag.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatal("agent NBD socket did not come up")
}

func (c *cluster) agentStatus() (agent.Status, error) {
	var s agent.Status
	err := statusapi.Fetch(context.Background(), c.agStat, &s)
	return s, err
}

func (c *cluster) psStatusNow() (processserver.Status, error) {
	var s processserver.Status
	err := statusapi.Fetch(context.Background(), c.psStatus, &s)
	return s, err
}

func (c *cluster) mtStatusNow() (mastertarget.Status, error) {
	var s mastertarget.Status
	err := statusapi.Fetch(context.Background(), c.mtStatus, &s)
	return s, err
}

// waitIdentical waits for the pair to drain and then requires every
// replica to be byte-identical to its source.
func (c *cluster) waitIdentical(timeout time.Duration) {
	c.t.Helper()
	res, err := verify.Pair(context.Background(), c.agStat, c.mtStatus, 0, timeout)
	if err != nil {
		as, _ := c.agentStatus()
		ms, _ := c.mtStatusNow()
		c.t.Fatalf("waiting for identical replicas: %v\nagent: %+v\nmaster target: %+v", err, as, ms)
	}
	for _, r := range res {
		if !r.Identical {
			c.t.Fatalf("replica of %s differs from source in %d bytes: first ranges %v", r.Disk, r.DiffBytes, r.Differ[:min(len(r.Differ), 10)])
		}
	}
}

func (c *cluster) replica(i int) string {
	return filepath.Join(c.dir, "secondary", c.machine, fmt.Sprintf("disk%d.img", i))
}

func (c *cluster) nbdURI(disk int) string {
	return fmt.Sprintf("nbd+unix:///disk%d?socket=%s", disk, c.sock)
}

// logContains reports whether a role's log has s.
func logContains(path, s string) bool {
	b, _ := os.ReadFile(path)
	return strings.Contains(string(b), s)
}

func waitFor(t *testing.T, what string, timeout time.Duration, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
