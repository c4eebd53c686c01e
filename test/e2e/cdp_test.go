package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sync"
	"testing"
	"time"

	"standby/internal/agent"
	"standby/internal/mastertarget"
	"standby/internal/nbd"
	"standby/internal/points"
	"standby/internal/statusapi"
)

// orderedWrite is one write of the write-order checker's workload.
type orderedWrite struct {
	id   uint64
	disk int
	off  int64
	n    int64
}

// orderWorkload writes, one at a time, blocks whose every 512-byte sector
// carries the write's number, so any image tells which write last touched
// each sector, and keeps the acknowledged order. It asks for a bookmark
// every so often, between two writes.
type orderWorkload struct {
	t        *testing.T
	c        *cluster
	size     int64
	disks    int
	mu       sync.Mutex
	log      []orderedWrite    // acknowledged, in order
	marks    map[string]uint64 // bookmark name → last write before it
	stop     chan struct{}
	done     chan struct{}
	bookmark int
}

func startOrderWorkload(t *testing.T, c *cluster, disks int, size int64, bookmarkEvery int) *orderWorkload {
	w := &orderWorkload{t: t, c: c, size: size, disks: disks, marks: map[string]uint64{}, stop: make(chan struct{}), done: make(chan struct{}), bookmark: bookmarkEvery}
	go w.run()
	return w
}

func fillSector(p []byte, id uint64, disk int, sector int64) {
	binary.LittleEndian.PutUint64(p[0:], 0x5354414e44425921) // "!YBDNATS"
	binary.LittleEndian.PutUint64(p[8:], id)
	binary.LittleEndian.PutUint64(p[16:], uint64(disk))
	binary.LittleEndian.PutUint64(p[24:], uint64(sector))
	for i := 32; i < 512; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], id*0x9E3779B97F4A7C15^uint64(sector+int64(i)))
	}
}

func (w *orderWorkload) run() {
	defer close(w.done)
	clients := make([]*nbd.Client, w.disks)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	for d := range clients {
		c, err := nbd.Dial(context.Background(), "unix", w.c.sock, diskName(d))
		if err != nil {
			w.t.Errorf("workload: %v", err)
			return
		}
		clients[d] = c
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	buf := make([]byte, 128<<10)
	for id := uint64(1); ; id++ {
		select {
		case <-w.stop:
			return
		default:
		}
		d := rng.IntN(w.disks)
		n := int64(512 * (1 + rng.IntN(len(buf)/512)))
		off := rng.Int64N((w.size-n)/512) * 512
		for s := int64(0); s < n/512; s++ {
			fillSector(buf[s*512:], id, d, off/512+s)
		}
		if err := clients[d].WriteAt(buf[:n], off, rng.IntN(50) == 0); err != nil {
			w.t.Errorf("workload write %d: %v", id, err)
			return
		}
		w.mu.Lock()
		w.log = append(w.log, orderedWrite{id: id, disk: d, off: off, n: n})
		w.mu.Unlock()
		if rng.IntN(30) == 0 {
			if err := clients[d].Flush(); err != nil {
				w.t.Errorf("workload flush: %v", err)
				return
			}
		}
		if w.bookmark > 0 && id%uint64(w.bookmark) == 0 {
			name := fmt.Sprintf("after-%d", id)
			var res agent.BookmarkResult
			if err := statusapi.Call(context.Background(), w.c.agStat, "POST", "/bookmark", agent.BookmarkRequest{Name: name}, &res); err != nil {
				w.t.Errorf("bookmark %s: %v", name, err)
				return
			}
			w.mu.Lock()
			w.marks[name] = id
			w.mu.Unlock()
		}
	}
}

func (w *orderWorkload) finish() {
	close(w.stop)
	<-w.done
}

// model returns the disks after writes 1..upto of the log.
func (w *orderWorkload) model(upto uint64) [][]byte {
	w.mu.Lock()
	log := append([]orderedWrite(nil), w.log...)
	w.mu.Unlock()
	imgs := make([][]byte, w.disks)
	for i := range imgs {
		imgs[i] = make([]byte, w.size)
	}
	for _, wr := range log {
		if wr.id > upto {
			break
		}
		for s := int64(0); s < wr.n/512; s++ {
			fillSector(imgs[wr.disk][wr.off+s*512:], wr.id, wr.disk, wr.off/512+s)
		}
	}
	return imgs
}

// newestWrite is the highest write number found in the images.
func newestWrite(imgs [][]byte) uint64 {
	var m uint64
	for _, img := range imgs {
		for i := 0; i+512 <= len(img); i += 512 {
			if binary.LittleEndian.Uint64(img[i:]) == 0x5354414e44425921 {
				m = max(m, binary.LittleEndian.Uint64(img[i+8:]))
			}
		}
	}
	return m
}

// readView opens a view of the machine at a point, reads every disk, and
// closes it.
func readView(t *testing.T, c *cluster, pointID uint64, disks int, size int64) ([][]byte, error) {
	t.Helper()
	var v mastertarget.ViewInfo
	if err := statusapi.Call(context.Background(), c.mtStatus, "POST", "/machines/"+c.machine+"/views", mastertarget.ViewRequest{Point: fmt.Sprint(pointID)}, &v); err != nil {
		return nil, err
	}
	defer func() {
		if err := statusapi.Call(context.Background(), c.mtStatus, "DELETE", "/views/"+url.PathEscape(v.ID), nil, nil); err != nil {
			t.Errorf("closing view %s: %v", v.ID, err)
		}
	}()
	imgs := make([][]byte, disks)
	for d := 0; d < disks; d++ {
		u, err := url.Parse(v.Exports[d].URI)
		if err != nil {
			return nil, err
		}
		cl, err := nbd.Dial(context.Background(), "unix", u.Query().Get("socket"), v.Exports[d].Disk)
		if err != nil {
			return nil, err
		}
		imgs[d] = make([]byte, size)
		for off := int64(0); off < size; off += 4 << 20 {
			if err := cl.ReadAt(imgs[d][off:min(off+4<<20, size)], off); err != nil {
				cl.Close()
				return nil, err
			}
		}
		cl.Close()
	}
	return imgs, nil
}

func listPoints(t *testing.T, c *cluster) []mastertarget.PointInfo {
	t.Helper()
	var pts []mastertarget.PointInfo
	if err := statusapi.Call(context.Background(), c.mtStatus, "GET", "/machines/"+c.machine+"/points", nil, &pts); err != nil {
		t.Fatal(err)
	}
	return pts
}

// checkPoint verifies the write-order property of one point: the view is
// exactly the disks after a prefix of the acknowledged writes (for a
// bookmark: exactly the writes before it).
func checkPoint(t *testing.T, c *cluster, w *orderWorkload, p mastertarget.PointInfo) error {
	imgs, err := readView(t, c, p.ID, w.disks, w.size)
	if err != nil {
		return err
	}
	upto := newestWrite(imgs)
	w.mu.Lock()
	want, isMark := w.marks[p.Name]
	w.mu.Unlock()
	if p.Kind == points.KindApp && isMark && upto != want {
		return fmt.Errorf("bookmark %q: view holds writes up to %d, bookmark was taken after write %d", p.Name, upto, want)
	}
	model := w.model(upto)
	for d := range imgs {
		if !bytes.Equal(imgs[d], model[d]) {
			off := 0
			for off < len(imgs[d]) && imgs[d][off] == model[d][off] {
				off++
			}
			return fmt.Errorf("point %d (%s, seq %d): disk%d differs from the state after writes 1..%d at byte %d (sector written by %d, model has %d)",
				p.ID, p.Kind, p.Seq, d, upto, off, binary.LittleEndian.Uint64(imgs[d][off/512*512+8:]), binary.LittleEndian.Uint64(model[d][off/512*512+8:]))
		}
	}
	return nil
}

func cdpCluster(t *testing.T, size int64, disks int, extraMT ...string) *cluster {
	sizes := make([]int64, disks)
	for i := range sizes {
		sizes[i] = size
	}
	return newCluster(t, sizes, func(c *cluster) {
		c.extraMT = append([]string{"--point-interval", "1s"}, extraMT...)
		c.extraAgent = []string{"--epoch-interval", "200ms"}
	})
}

// TestWriteOrderAtEveryPoint: for many recovery points, the view at the
// point equals the disks after exactly a prefix of the acknowledged writes
// (for bookmarks, exactly the writes before the bookmark), checked while
// replication goes on.
func TestWriteOrderAtEveryPoint(t *testing.T) {
	const size = 16 << 20
	c := cdpCluster(t, size, 2)
	c.startAll()
	c.waitIdentical(time.Minute) // initial sync of empty disks
	w := startOrderWorkload(t, c, 2, size, 150)
	time.Sleep(8 * time.Second)
	// Check while writes continue: views must not move under replication.
	pts := listPoints(t, c)
	checked, marks := 0, 0
	rng := rand.New(rand.NewPCG(1, 1))
	for _, p := range pts {
		if !p.Consistent {
			continue
		}
		if p.Kind != points.KindApp && rng.IntN(2) == 0 {
			continue
		}
		if err := checkPoint(t, c, w, p); err != nil {
			t.Error(err)
			continue
		}
		checked++
		if p.Kind == points.KindApp {
			marks++
		}
	}
	w.finish()
	if checked < 5 || marks < 2 {
		t.Fatalf("only %d points (%d bookmarks) checked: not enough to mean anything", checked, marks)
	}
	t.Logf("%d points exact (%d bookmarks) over %d writes", checked, marks, len(w.log))
	c.waitIdentical(time.Minute)
}

// TestRetentionUnderSmallJournal: a journal far smaller than what the
// workload overwrites. Replication never stalls, the oldest points go (and
// an event says so), the newest remain, and every remaining point is exact.
func TestRetentionUnderSmallJournal(t *testing.T) {
	const size = 64 << 20
	c := cdpCluster(t, size, 1, "--journal-bytes", fmt.Sprint(128<<20))
	c.startAll()
	c.waitIdentical(time.Minute)
	w := startOrderWorkload(t, c, 1, size, 0)
	var maxLag, maxRPO float64
	deadline := time.Now().Add(25 * time.Second)
	for time.Now().Before(deadline) {
		if st, err := c.agentStatus(); err == nil {
			maxLag = max(maxLag, st.LagSeconds)
		}
		if st, err := c.mtStatusNow(); err == nil && len(st.Machines) == 1 {
			maxRPO = max(maxRPO, st.Machines[0].LagSeconds)
		}
		time.Sleep(250 * time.Millisecond)
	}
	// Generous for a loaded 2-core CI machine; a stall is minutes.
	if maxLag > 10 || maxRPO > 10 {
		t.Errorf("replication stalled: agent lag reached %.1fs, master target RPO %.1fs", maxLag, maxRPO)
	}
	w.finish()
	stopped := time.Now()
	var events []mastertarget.Event
	waitFor(t, "an event about dropped points", 30*time.Second, func() bool {
		_ = statusapi.Call(context.Background(), c.mtStatus, "GET", "/events", nil, &events)
		for _, e := range events {
			if bytes.Contains([]byte(e.Message), []byte("oldest points")) {
				return true
			}
		}
		return false
	})
	c.waitIdentical(time.Minute)
	// With writes stopped the journal holds still: every point listed
	// now must be exact.
	pts := listPoints(t, c)
	// How many survive depends on how fast this machine writes relative
	// to the bound; the newest must, and each that does must be exact.
	if len(pts) == 0 {
		t.Fatal("no point left")
	}
	if age := stopped.Sub(pts[len(pts)-1].Time); age > 5*time.Second {
		t.Errorf("newest point is %s older than the last write", age)
	}
	for _, p := range pts {
		if err := checkPoint(t, c, w, p); err != nil {
			t.Error(err)
		}
	}
	js, _ := c.mtStatusNow()
	t.Logf("max lag %.2fs, max RPO %.2fs, %d points remain and are exact, %d writes; master target: %+v", maxLag, maxRPO, len(pts), len(w.log), js.Machines)
}

// TestKill9MasterTargetWithViewsOpen kills the master target while views
// are open and while the journal is being pruned; after each restart a
// view can be opened again and is exact, and the replica loses nothing.
func TestKill9MasterTargetWithViewsOpen(t *testing.T) {
	const size = 16 << 20
	c := cdpCluster(t, size, 1, "--journal-bytes", fmt.Sprint(96<<20))
	c.startAll()
	c.waitIdentical(time.Minute)
	w := startOrderWorkload(t, c, 1, size, 100)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	for round := 0; round < 4; round++ {
		time.Sleep(time.Duration(1500+rng.IntN(1500)) * time.Millisecond)
		pts := listPoints(t, c)
		var v mastertarget.ViewInfo
		if len(pts) > 0 {
			if err := statusapi.Call(context.Background(), c.mtStatus, "POST", "/machines/"+c.machine+"/views", mastertarget.ViewRequest{Point: fmt.Sprint(pts[len(pts)/2].ID)}, &v); err != nil {
				t.Logf("round %d: opening a view: %v", round, err)
			}
		}
		time.Sleep(time.Duration(rng.IntN(500)) * time.Millisecond)
		c.mt.kill9()
		t.Logf("round %d: master target killed with view %q open", round, v.ID)
		c.mt.start()
		var p []mastertarget.PointInfo
		waitFor(t, "the master target back with points", time.Minute, func() bool {
			err := statusapi.Call(context.Background(), c.mtStatus, "GET", "/machines/"+c.machine+"/points", nil, &p)
			return err == nil && len(p) > 0
		})
		if err := checkPoint(t, c, w, p[len(p)-1]); err != nil {
			t.Errorf("round %d: %v", round, err)
		}
	}
	w.finish()
	c.waitIdentical(2 * time.Minute)
	pts := listPoints(t, c)
	for _, p := range pts[max(0, len(pts)-5):] {
		if err := checkPoint(t, c, w, p); err != nil {
			t.Error(err)
		}
	}
}
