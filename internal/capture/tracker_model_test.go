package capture

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// model is the obviously-correct reference: a block is required (must be
// dirty after a crash) when it is dirty, in flight, or inside an extent
// with a write begun and not ended.
type model struct {
	g        geometry
	dirty    []bool
	inflight []bool
	pendE    map[int64]int
	open     []rg // writes begun, not ended
	taken    []rg // ranges taken, not completed
}

type rg struct{ off, n int64 }

func newModel(g geometry) *model {
	return &model{g: g, dirty: make([]bool, g.nBlocks()), inflight: make([]bool, g.nBlocks()), pendE: map[int64]int{}}
}

func (m *model) blocks(r rg) (int64, int64) {
	return r.off >> m.g.blockShift, (r.off + r.n + m.g.blockSize() - 1) >> m.g.blockShift
}

func (m *model) extents(r rg) (int64, int64) {
	return r.off >> m.g.extentShift, (r.off + r.n - 1) >> m.g.extentShift
}

func (m *model) union() []bool {
	u := make([]bool, len(m.dirty))
	for b := range u {
		u[b] = m.dirty[b] || m.inflight[b]
	}
	return u
}

func (m *model) required() []bool {
	u := m.union()
	bpe := int64(1) << m.g.blocksPerExtentShift()
	for e, c := range m.pendE {
		if c > 0 {
			for b := e * bpe; b < min((e+1)*bpe, m.g.nBlocks()); b++ {
				u[b] = true
			}
		}
	}
	return u
}

func (m *model) bytes(set []bool) int64 {
	var n int64
	for b, ok := range set {
		if ok {
			n += min(m.g.blockSize(), m.g.diskSize-int64(b)<<m.g.blockShift)
		}
	}
	return n
}

// reset makes the model match a freshly opened tracker.
func (m *model) reset(got []bool) {
	m.dirty, m.inflight, m.pendE = got, make([]bool, len(got)), map[int64]int{}
	m.open, m.taken = nil, nil
}

// trackerBits returns the dirty|in-flight blocks of a tracker.
func trackerBits(tr *Tracker) []bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	out := make([]bool, tr.geo.nBlocks())
	for b := range out {
		out[b] = (tr.dirty[b>>6]|tr.inflight[b>>6])&(1<<uint(b&63)) != 0
	}
	return out
}

// missing lists the blocks set in want and not in got.
func missing(want, got []bool) []int64 {
	var out []int64
	for b := range want {
		if want[b] && !got[b] {
			out = append(out, int64(b))
		}
	}
	return out
}

// head shortens a block list for failure messages.
func head(xs []int64) string {
	if len(xs) > 12 {
		return fmt.Sprintf("%v... (%d blocks)", xs[:12], len(xs))
	}
	return fmt.Sprint(xs)
}

func sameSet(a, b []bool) bool { return slices.Equal(a, b) }

func TestTrackerModel(t *testing.T) {
	geoms := []struct {
		opts TrackerOptions
		size int64
	}{
		{TrackerOptions{BlockSize: 4 << 10, ExtentSize: 64 << 10}, 2<<20 + 3<<10},
		{TrackerOptions{BlockSize: 512, ExtentSize: 4 << 10}, 2<<20 + 3<<10},
		// A bitmap of several pages, so incremental slot writes matter.
		{TrackerOptions{BlockSize: 512, ExtentSize: 64 << 10}, 20<<20 + 1536},
	}
	seeds := uint64(4)
	if testing.Short() {
		seeds = 1
	}
	for gi, geo := range geoms {
		for seed := range seeds {
			t.Run(fmt.Sprintf("geom%d/seed%d", gi, seed), func(t *testing.T) {
				opts := geo.opts
				opts.IdleClean = time.Second
				opts.Logger = quietLogger()
				opts.journalSize = 8192 // overflow into slot writes now and then
				runModel(t, rand.New(rand.NewPCG(seed, uint64(gi))), opts, geo.size, 3000)
			})
		}
	}
}

func runModel(t *testing.T, rnd *rand.Rand, opts TrackerOptions, size int64, steps int) {
	path := filepath.Join(memTempDir(t), "state")
	tr := openT(t, path, size, opts)
	// Start synced: a fresh all-dirty disk would hide most bitmap changes.
	drain(t, tr)
	m := newModel(tr.geo)
	m.reset(trackerBits(tr))
	ctx := context.Background()
	now := time.Unix(1e9, 0)
	randRange := func() rg {
		n := 1 + rnd.Int64N(96<<10)
		if rnd.IntN(4) == 0 {
			n = 1 + rnd.Int64N(600) // small, often inside one block
		}
		off := rnd.Int64N(size - n + 1)
		return rg{off, n}
	}
	var log []string
	fail := func(format string, args ...any) {
		t.Helper()
		start := max(0, len(log)-30)
		t.Fatalf("after ops ...%v:\n"+format, append([]any{log[start:]}, args...)...)
	}
	for step := range steps {
		op := rnd.IntN(100)
		switch {
		case op < 25: // a workload write begins
			r := randRange()
			if err := tr.BeginWrite(ctx, r.off, r.n); err != nil {
				t.Fatal(err)
			}
			m.open = append(m.open, r)
			lo, hi := m.extents(r)
			for e := lo; e <= hi; e++ {
				m.pendE[e]++
			}
			log = append(log, fmt.Sprintf("B%v", r))
		case op < 45 && len(m.open) > 0: // acknowledged downstream, or dropped on overflow
			i := rnd.IntN(len(m.open))
			r := m.open[i]
			m.open = append(m.open[:i], m.open[i+1:]...)
			if rnd.IntN(3) == 0 {
				tr.MarkDirty(r.off, r.n)
				lo, hi := m.blocks(r)
				for b := lo; b < hi; b++ {
					m.dirty[b] = true
				}
				log = append(log, fmt.Sprintf("D%v", r))
			} else {
				log = append(log, fmt.Sprintf("A%v", r))
			}
			tr.EndWrite(r.off, r.n)
			lo, hi := m.extents(r)
			for e := lo; e <= hi; e++ {
				m.pendE[e]--
			}
		case op < 60: // resync takes a run
			maxLen := 1 + rnd.Int64N(256<<10)
			off, n, ok := tr.TakeDirty(maxLen)
			takeable := 0
			for b := range m.dirty {
				if m.dirty[b] && !m.inflight[b] {
					takeable++
				}
			}
			if ok != (takeable > 0) {
				fail("TakeDirty ok=%v with %d takeable blocks in the model", ok, takeable)
			}
			if !ok {
				break
			}
			r := rg{off, n}
			lo, hi := m.blocks(r)
			if off&(m.g.blockSize()-1) != 0 || (off+n != m.g.diskSize && (off+n)&(m.g.blockSize()-1) != 0) ||
				n > max(maxLen&^(m.g.blockSize()-1), m.g.blockSize()) {
				fail("TakeDirty(%d) = %v: misaligned or too long", maxLen, r)
			}
			for b := lo; b < hi; b++ {
				if !m.dirty[b] || m.inflight[b] {
					fail("TakeDirty returned block %d which is dirty=%v inflight=%v", b, m.dirty[b], m.inflight[b])
				}
				m.dirty[b] = false
				m.inflight[b] = true
			}
			m.taken = append(m.taken, r)
			log = append(log, fmt.Sprintf("T%v", r))
		case op < 72 && len(m.taken) > 0: // far end confirms
			i := rnd.IntN(len(m.taken))
			r := m.taken[i]
			m.taken = append(m.taken[:i], m.taken[i+1:]...)
			tr.Complete(r.off, r.n)
			lo, hi := m.blocks(r)
			for b := lo; b < hi; b++ {
				m.inflight[b] = false
			}
			log = append(log, fmt.Sprintf("C%v", r))
		case op < 75: // connection reset
			tr.Requeue()
			for b, f := range m.inflight {
				m.dirty[b] = m.dirty[b] || f
			}
			m.inflight = make([]bool, len(m.dirty))
			m.taken = nil
			log = append(log, "R")
		case op < 82:
			if err := tr.Persist(); err != nil {
				t.Fatal(err)
			}
			log = append(log, "P")
			// What is on disk now is exactly what is in memory.
			st := decodeOrFail(t, path)
			disk := make([]bool, m.g.nBlocks())
			for b := range disk {
				disk[b] = st.dirty[b>>6]&(1<<uint(b&63)) != 0
			}
			if want := m.union(); !sameSet(disk, want) {
				fail("persisted bitmap differs from memory: missing %v, extra %v", head(missing(want, disk)), head(missing(disk, want)))
			}
		case op < 92:
			now = now.Add(time.Duration(rnd.Int64N(int64(700 * time.Millisecond))))
			if err := tr.Clean(now); err != nil {
				t.Fatal(err)
			}
			log = append(log, "L")
		case op < 93:
			tr.MarkAllDirty()
			if err := tr.Persist(); err != nil {
				t.Fatal(err)
			}
			for b := range m.g.nBlocks() {
				m.dirty[b] = true
			}
			log = append(log, "ALL")
		case op < 97: // kill -9 and restart
			req := m.required()
			crash(tr)
			tr = openT(t, path, size, opts)
			got := trackerBits(tr)
			if miss := missing(req, got); len(miss) > 0 {
				fail("after crash %d required blocks not dirty, first %v", len(miss), miss[:min(10, len(miss))])
			}
			if !tr.Recovered().Unclean {
				fail("crash not reported as unclean")
			}
			m.reset(got)
			log = append(log, "CRASH")
		default: // clean restart: exactly the required set survives
			req := m.required()
			if err := tr.Close(); err != nil {
				t.Fatal(err)
			}
			tr = openT(t, path, size, opts)
			got := trackerBits(tr)
			if !sameSet(req, got) {
				fail("after clean restart dirty set differs: missing %v, extra %v", head(missing(req, got)), head(missing(got, req)))
			}
			if tr.Recovered().Unclean {
				fail("clean close reported as unclean")
			}
			m.reset(got)
			log = append(log, "CLOSE")
		}
		// The in-memory state must match the model exactly. Comparing
		// every block is O(disk) per step, so do it every few steps; any
		// divergence persists until then (nothing in the model forgets).
		if step%8 != 0 {
			continue
		}
		if got, want := trackerBits(tr), m.union(); !sameSet(got, want) {
			fail("step %d: tracker dirty set differs from model: missing %v, extra %v", step, head(missing(want, got)), head(missing(got, want)))
		}
		if got, want := tr.DirtyBytes(), m.bytes(m.union()); got != want {
			fail("DirtyBytes = %d, model %d", got, want)
		}
		if got, want := tr.InflightBytes(), m.bytes(m.inflight); got != want {
			fail("InflightBytes = %d, model %d", got, want)
		}
	}
	tr.Close()
}
