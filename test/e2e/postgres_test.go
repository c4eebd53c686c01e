package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"standby/internal/agent"
	"standby/internal/mastertarget"
	"standby/internal/points"
	"standby/internal/statusapi"

	"golang.org/x/sys/unix"
)

// pgBinDir finds the directory holding initdb, pg_ctl and postgres: on PATH
// if they are there, else the newest /usr/lib/postgresql/<version>/bin
// (Debian keeps the server binaries off PATH).
func pgBinDir(t *testing.T) string {
	t.Helper()
	has := func(dir string) bool {
		for _, n := range []string{"initdb", "pg_ctl", "postgres"} {
			if st, err := os.Stat(filepath.Join(dir, n)); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
				return false
			}
		}
		return true
	}
	if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	version := func(d string) float64 {
		v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		return v
	}
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if has(d) {
			return d
		}
	}
	t.Fatal("the PostgreSQL server (initdb, pg_ctl, postgres) is required by this test and is not installed (apt-get install postgresql)")
	return ""
}

// pgUser is the unprivileged account PostgreSQL runs as: it refuses root.
func pgUser(t *testing.T) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("the postgres user is required by this test (it comes with the postgresql package): %v", err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid
}

// pgDir is a fresh directory the postgres user can reach (t.TempDir makes
// them 0700 and root's); owned by postgres when own is set.
func pgDir(t *testing.T, own bool) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{filepath.Dir(d), d} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if own {
		uid, gid := pgUser(t)
		if err := os.Chown(d, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// asPostgres runs a command as the postgres user, from a directory it may
// read. Cancelling ctx kills the command and not only runuser.
func asPostgres(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// pgInstance is one PostgreSQL server on a private unix socket directory
// (no TCP), so it never meets the system's instance.
type pgInstance struct {
	t      *testing.T
	name   string
	bin    string
	data   string
	sock   string
	port   int
	log    string
	frozen string // a mount point to thaw before stopping, if any
	up     bool
}

func newPG(t *testing.T, name, bin, data string, port int) *pgInstance {
	sock := pgDir(t, true)
	p := &pgInstance{t: t, name: name, bin: bin, data: data, sock: sock, port: port, log: filepath.Join(sock, "postgres.log")}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- tail of postgres %s log ----\n%s", p.name, p.logTail())
		}
	})
	return p
}

func (p *pgInstance) logTail() string {
	b, _ := os.ReadFile(p.log)
	return string(tail(b))
}

// run runs a PostgreSQL tool as postgres and returns its output.
func (p *pgInstance) run(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := asPostgres(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (p *pgInstance) tool(name string) string {
	if _, err := os.Stat(filepath.Join(p.bin, name)); err == nil {
		return filepath.Join(p.bin, name)
	}
	return name
}

func (p *pgInstance) connArgs() []string {
	return []string{"-h", p.sock, "-p", strconv.Itoa(p.port)}
}

// start starts the server and waits until it accepts connections (after
// crash recovery, if the data directory needs it).
func (p *pgInstance) start() {
	p.t.Helper()
	opts := fmt.Sprintf("-c listen_addresses='' -k %s -p %d", p.sock, p.port)
	p.up = true // pg_ctl may have started it even if waiting failed
	p.t.Cleanup(p.stop)
	if _, err := p.run(3*time.Minute, p.tool("pg_ctl"), "start", "-D", p.data, "-l", p.log, "-w", "-t", "150", "-o", opts); err != nil {
		p.t.Fatalf("postgres %s did not come up: %v\n---- %s ----\n%s", p.name, err, p.log, p.logTail())
	}
}

// stop stops the server the way a power cut would (it is a test copy, or
// the test is over).
func (p *pgInstance) stop() {
	if !p.up {
		return
	}
	if p.frozen != "" {
		// Writers blocked on a frozen file system cannot be stopped.
		_ = exec.Command("fsfreeze", "-u", p.frozen).Run()
	}
	pid := 0
	if b, err := os.ReadFile(filepath.Join(p.data, "postmaster.pid")); err == nil {
		pid, _ = strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	}
	if _, err := p.run(time.Minute, p.tool("pg_ctl"), "stop", "-D", p.data, "-m", "immediate", "-w", "-t", "50"); err != nil {
		p.t.Errorf("stopping postgres %s: %v", p.name, err)
		return
	}
	p.up = false
	// pg_ctl returns once the lock file is gone, which the postmaster
	// removes just before it exits, still in its data directory: wait for
	// the exit, or an unmount right after finds the file system busy.
	for deadline := time.Now().Add(10 * time.Second); pid > 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			break
		}
		if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
			break
		}
	}
}

// query runs one SQL statement and returns its unaligned, tuples-only output.
func (p *pgInstance) query(sql string) string {
	p.t.Helper()
	args := append([]string{"-X", "-At", "-v", "ON_ERROR_STOP=1"}, p.connArgs()...)
	args = append(args, "-d", "postgres", "-c", sql)
	out, err := p.run(2*time.Minute, "psql", args...)
	if err != nil {
		p.t.Fatalf("postgres %s: %v", p.name, err)
	}
	return strings.TrimSpace(out)
}

// pgbenchState is what pgbench's invariant is checked on.
type pgbenchState struct {
	accounts, tellers, branches int64 // row counts
	aSum, tSum, bSum, hSum      int64 // balances and history deltas
	history                     int64 // history rows
}

func (p *pgInstance) pgbenchState() pgbenchState {
	p.t.Helper()
	out := p.query(`select (select count(*) from pgbench_accounts), (select count(*) from pgbench_tellers), (select count(*) from pgbench_branches),
		(select coalesce(sum(abalance),0) from pgbench_accounts), (select coalesce(sum(tbalance),0) from pgbench_tellers),
		(select coalesce(sum(bbalance),0) from pgbench_branches), (select coalesce(sum(delta),0) from pgbench_history),
		(select count(*) from pgbench_history)`)
	f := strings.Split(out, "|")
	if len(f) != 8 {
		p.t.Fatalf("postgres %s: unexpected answer %q", p.name, out)
	}
	var v [8]int64
	for i := range f {
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			p.t.Fatalf("postgres %s: unexpected answer %q", p.name, out)
		}
		v[i] = n
	}
	return pgbenchState{accounts: v[0], tellers: v[1], branches: v[2], aSum: v[3], tSum: v[4], bSum: v[5], hSum: v[6], history: v[7]}
}

// checkPgbench checks pgbench's invariant (every transaction updates one
// account, one teller and one branch by delta and logs delta in the
// history, atomically) and that the point is not empty.
func checkPgbench(t *testing.T, what string, s pgbenchState, scale int64) {
	t.Helper()
	if s.accounts != 100000*scale || s.tellers != 10*scale || s.branches != scale {
		t.Errorf("%s: %d accounts, %d tellers, %d branches; pgbench -s %d made %d, %d, %d", what, s.accounts, s.tellers, s.branches, scale, 100000*scale, 10*scale, scale)
	}
	if s.aSum != s.hSum || s.tSum != s.hSum || s.bSum != s.hSum {
		t.Errorf("%s: pgbench invariant broken: sum(abalance)=%d sum(tbalance)=%d sum(bbalance)=%d, sum(history.delta)=%d over %d rows",
			what, s.aSum, s.tSum, s.bSum, s.hSum, s.history)
	}
	if s.history == 0 {
		t.Errorf("%s: pgbench_history is empty: the point holds no transaction", what)
	}
}

// TestPostgresPgbenchPoints: PostgreSQL on ext4 on the agent's export,
// under pgbench. App-consistent bookmarks (CHECKPOINT + fsfreeze hooks)
// and crash points taken during the run are opened as copy-on-write views;
// a second PostgreSQL starts on each (recovering from WAL), its indexes
// check clean and pgbench's invariant holds on a non-empty history.
func TestPostgresPgbenchPoints(t *testing.T) {
	requireRoot(t)
	requireTools(t, "psql", "pgbench", "runuser", "fsfreeze", "mkfs.ext4", "e2fsck", "mount", "umount")
	bin := pgBinDir(t)
	pgUser(t)
	const scale = 5
	const primaryPort = 54321

	mnt := pgDir(t, false)
	primary := newPG(t, "primary", bin, filepath.Join(mnt, "pgdata"), primaryPort)
	primary.frozen = mnt
	freeze := fmt.Sprintf("cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -h %s -p %d -d postgres -c CHECKPOINT && fsfreeze -f %s",
		primary.sock, primary.port, mnt)
	thaw := "fsfreeze -u " + mnt
	c := newCluster(t, []int64{1 << 30}, func(c *cluster) {
		c.extraMT = []string{"--point-interval", "1s"}
		c.extraAgent = []string{"--freeze-hook", freeze, "--thaw-hook", thaw, "--freeze-timeout", "10s"}
	})
	c.startAll()
	begin := time.Now()
	bd := attachExport(t, c.nbdURI(0))
	run(t, "mkfs.ext4", "-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", bd.dev)
	// The initial copy is done (points from here on are consistent), checked
	// before mounting: the comparison needs a source nobody writes, and a
	// mounted ext4 commits its journal on its own.
	c.waitIdentical(2 * time.Minute)
	t.Logf("ext4 on the agent's export, initial copy done in %s", time.Since(begin).Round(time.Millisecond))
	mount(t, bd.dev, mnt)
	t.Cleanup(func() { pgUnmount(t, primary, mnt) }) // before mount's own cleanup
	uid, gid := pgUser(t)
	if err := os.Mkdir(primary.data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(primary.data, uid, gid); err != nil {
		t.Fatal(err)
	}

	// initdb without its many fsyncs, then one syncfs: the same on disk.
	if _, err := primary.run(2*time.Minute, primary.tool("initdb"), "-D", primary.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		t.Fatal(err)
	}
	syncFS(t, mnt)
	primary.start()
	t.Logf("initdb and start done at %s", time.Since(begin).Round(time.Millisecond))
	if _, err := primary.run(3*time.Minute, "pgbench", append(append([]string{"-i", "-s", strconv.Itoa(scale), "-q"}, primary.connArgs()...), "postgres")...); err != nil {
		t.Fatal(err)
	}
	// A checkpoint now, so the bookmarks' CHECKPOINTs (inside the freeze
	// bound) write only what the run dirtied.
	primary.query("checkpoint")
	t.Logf("pgbench -i -s %d and a checkpoint done at %s", scale, time.Since(begin).Round(time.Millisecond))

	// pgbench in the background, bookmarks during it.
	const benchSecs = 20
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bench := asPostgres(ctx, "pgbench", append(append([]string{"-n", "-T", strconv.Itoa(benchSecs), "-c", "4", "-j", "2"}, primary.connArgs()...), "postgres")...)
	var benchOut strings.Builder
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	benchStart := time.Now()
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	var benchErr error
	benchDone := make(chan struct{})
	go func() { benchErr = bench.Wait(); close(benchDone) }()
	t.Cleanup(func() {
		cancel()
		<-benchDone
	})
	type mark struct {
		name     string
		at, done time.Time
	}
	var marks []mark
	for i := 0; i < 3; i++ {
		time.Sleep(time.Until(benchStart.Add(time.Duration(i+1) * benchSecs * time.Second / 4)))
		name := fmt.Sprintf("pgbench-%d", i)
		var res agent.BookmarkResult
		at := time.Now()
		if err := statusapi.Call(context.Background(), c.agStat, "POST", "/bookmark", agent.BookmarkRequest{Name: name}, &res); err != nil {
			t.Fatalf("bookmark %s: %v", name, err)
		}
		t.Logf("bookmark %s: seq %d, took %s, writes held %s", name, res.Seq, time.Since(at).Round(time.Millisecond), res.Held)
		marks = append(marks, mark{name: name, at: at, done: time.Now()})
	}
	<-benchDone
	if benchErr != nil {
		t.Fatalf("pgbench: %v\n%s", benchErr, benchOut.String())
	}
	benchEnd := time.Now()
	tps := ""
	for _, l := range strings.Split(benchOut.String(), "\n") {
		if strings.HasPrefix(l, "number of transactions actually processed") || strings.HasPrefix(l, "tps") {
			tps += strings.TrimSpace(l) + "; "
		}
	}
	t.Logf("pgbench ran %s: %s", benchEnd.Sub(benchStart).Round(time.Millisecond), tps)
	checkPgbench(t, "primary after pgbench", primary.pgbenchState(), scale)

	// The points: every bookmark, and a crash point of the run, not one of
	// the bookmarks, as near as can be to half-way between the first two
	// (away from the freeze and its CHECKPOINT).
	mid := marks[0].done.Add(marks[1].at.Sub(marks[0].done) / 2)
	var app []mastertarget.PointInfo
	var crash mastertarget.PointInfo
	var pts []mastertarget.PointInfo
	waitFor(t, "the bookmark and crash points", time.Minute, func() bool {
		pts = listPoints(t, c)
		app = app[:0]
		appSeq := map[uint64]bool{}
		for _, m := range marks {
			for _, p := range pts {
				if p.Kind == points.KindApp && p.Name == m.name {
					app = append(app, p)
					appSeq[p.Seq] = true
				}
			}
		}
		crash = mastertarget.PointInfo{}
		for _, p := range pts {
			if p.Kind != points.KindCrash || !p.Consistent || appSeq[p.Seq] || p.Time.Before(benchStart.Add(time.Second)) || p.Time.After(benchEnd) {
				continue
			}
			if crash.ID == 0 || absDur(p.Time.Sub(mid)) < absDur(crash.Time.Sub(mid)) {
				crash = p
			}
		}
		return len(app) == len(marks) && crash.ID != 0
	})
	for _, p := range app {
		if !p.Consistent {
			t.Fatalf("bookmark %s: its point is not consistent (%+v)", p.Name, p)
		}
	}
	t.Logf("%d points; checking app point %d (%s, seq %d) and crash point %d (seq %d, %s after pgbench started)",
		len(pts), app[len(app)-1].ID, app[len(app)-1].Name, app[len(app)-1].Seq, crash.ID, crash.Seq, crash.Time.Sub(benchStart).Round(time.Millisecond))

	for i, p := range []mastertarget.PointInfo{app[len(app)-1], crash} {
		checkPgPoint(t, c, bin, p, primaryPort+1+i, scale)
	}
	t.Logf("total %s", time.Since(begin).Round(time.Millisecond))
}

// pgUnmount stops the server (if up) and unmounts the file system its data
// directory is on, saying why if it cannot.
func pgUnmount(t *testing.T, p *pgInstance, mnt string) {
	t.Helper()
	p.stop()
	if !pgMounted(mnt) {
		return
	}
	var out, first []byte
	var err error
	for i := 0; i < 50; i++ {
		if out, err = exec.Command("umount", mnt).CombinedOutput(); err == nil {
			if i > 0 {
				t.Logf("umount %s (postgres %s) succeeded at try %d; first refusal: %s", mnt, p.name, i+1, first)
			}
			return
		}
		if i == 0 {
			first = append(append(out, "users of the mount:\n"...), mountUsers(mnt)...)
		}
		time.Sleep(200 * time.Millisecond)
	}
	users := mountUsers(mnt)
	procs, _ := exec.Command("ps", "-u", "postgres", "-o", "pid,stat,wchan:30,args").CombinedOutput()
	t.Errorf("umount %s (postgres %s): %v: %s\nusers of the mount:\n%s\npostgres processes:\n%s\n---- %s ----\n%s", mnt, p.name, err, out, users, procs, p.log, p.logTail())
}

// mountUsers is fuser's list of the processes using a mount (without its
// complaints about processes it may not look at).
func mountUsers(mnt string) string {
	out, _ := exec.Command("fuser", "-vm", mnt).CombinedOutput()
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(l, "Cannot stat") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// pgMounted reports whether a file system is mounted at dir.
func pgMounted(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// syncFS writes out everything of the file system mounted at dir.
func syncFS(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatalf("syncfs %s: %v", dir, err)
	}
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// checkPgPoint opens a view of the machine at p, starts PostgreSQL on the
// file system in it (read-write: the view is copy-on-write) and checks the
// database.
func checkPgPoint(t *testing.T, c *cluster, bin string, p mastertarget.PointInfo, port int, scale int64) {
	t.Helper()
	what := fmt.Sprintf("point %d (%s %q, seq %d)", p.ID, p.Kind, p.Name, p.Seq)
	start := time.Now()
	var v mastertarget.ViewInfo
	if err := statusapi.Call(context.Background(), c.mtStatus, "POST", "/machines/"+c.machine+"/views", mastertarget.ViewRequest{Point: fmt.Sprint(p.ID)}, &v); err != nil {
		t.Fatalf("%s: opening a view: %v", what, err)
	}
	closed := false
	closeView := func() {
		if closed {
			return
		}
		closed = true
		if err := statusapi.Call(context.Background(), c.mtStatus, "DELETE", "/views/"+url.PathEscape(v.ID), nil, nil); err != nil {
			t.Errorf("%s: closing view %s: %v", what, v.ID, err)
		}
	}
	t.Cleanup(closeView) // runs after the detach and unmount below are cleaned up
	vd := attachExport(t, v.Exports[0].URI)
	if p.Kind == points.KindApp {
		// fsfreeze leaves a clean file system: no journal to replay.
		run(t, "e2fsck", "-fn", vd.dev)
	}
	mnt := mount(t, vd.dev, pgDir(t, false))
	data := filepath.Join(mnt, "pgdata")
	// The lock file was copied from the running primary, whose PID lives.
	if err := os.Remove(filepath.Join(data, "postmaster.pid")); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	pg := newPG(t, fmt.Sprintf("on view of point %d", p.ID), bin, data, port)
	t.Cleanup(func() { pgUnmount(t, pg, mnt) })
	pg.start()
	up := time.Since(start)
	// amcheck: the indexes agree with the tables (no torn or lost pages).
	pg.query("create extension if not exists amcheck")
	pg.query(`select bt_index_check(c.oid, true) from pg_class c where c.relname in ('pgbench_accounts_pkey', 'pgbench_tellers_pkey', 'pgbench_branches_pkey')`)
	s := pg.pgbenchState()
	checkPgbench(t, what, s, scale)
	var recovery []string
	b, _ := os.ReadFile(pg.log)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "redo ") || strings.Contains(l, "recovery") || strings.Contains(l, "not properly shut down") {
			recovery = append(recovery, strings.TrimSpace(l))
		}
	}
	pg.stop()
	pgUnmount(t, pg, mnt)
	vd.detach()
	closeView()
	t.Logf("%s: postgres up in %s, %d pgbench transactions, invariant holds, indexes check clean; log: %s",
		what, up.Round(time.Millisecond), s.history, strings.Join(recovery, " | "))
}
