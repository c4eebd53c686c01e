// Package points is a machine's catalogue of recovery points and the
// retention policy that thins it: every point for a while, then one per
// interval, then none.
package points

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// Kind says how a point came to be.
type Kind string

const (
	KindCrash Kind = "crash" // an epoch boundary: what a power cut would have left
	KindApp   Kind = "app"   // freeze/thaw hooks ran around the marker
	KindTag   Kind = "tag"   // named by a user
	KindScan  Kind = "scan"  // end of a scan pass (consistent only if the source was frozen)
)

// Point is one recovery point of a machine.
type Point struct {
	ID         uint64    `json:"id"`
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Kind       Kind      `json:"kind"`
	Consistent bool      `json:"consistent"`
	Name       string    `json:"name,omitempty"`
	Group      string    `json:"group,omitempty"`
	Note       string    `json:"note,omitempty"`
}

// ErrNoPoint means the point asked for does not exist or is outside retention.
var ErrNoPoint = errors.New("no such recovery point")

// Catalogue is the persistent list of points, oldest first. It is an
// append-only JSON-lines file rewritten atomically when points are dropped,
// so a crash leaves either the old or the new list, plus at most one torn
// line at the end, which is ignored.
type Catalogue struct {
	path string

	mu     sync.Mutex
	points []Point
	nextID uint64
	f      *os.File
}

// Open reads or creates a catalogue.
func Open(path string) (*Catalogue, error) {
	c := &Catalogue{path: path, nextID: 1}
	f, err := os.Open(path)
	switch {
	case err == nil:
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		line := 0
		for sc.Scan() {
			line++
			var p Point
			if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
				// Only the last line may be torn by a crash.
				if sc.Scan() {
					f.Close()
					return nil, fmt.Errorf("points catalogue %s line %d is corrupt: %w", path, line, err)
				}
				break
			}
			c.points = append(c.points, p)
			if p.ID >= c.nextID {
				c.nextID = p.ID + 1
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("reading points catalogue: %w", err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("opening points catalogue: %w", err)
	}
	// Rewrite once so a torn tail is gone before we append after it.
	if err := c.rewriteLocked(); err != nil {
		return nil, err
	}
	return c, nil
}

// Add appends a point durably and returns it with its ID.
func (c *Catalogue) Add(p Point) (Point, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p.ID = c.nextID
	b, err := json.Marshal(p)
	if err != nil {
		return p, err
	}
	if _, err := c.f.Write(append(b, '\n')); err != nil {
		return p, fmt.Errorf("recording point: %w", err)
	}
	if err := c.f.Sync(); err != nil {
		return p, fmt.Errorf("recording point: %w", err)
	}
	c.nextID++
	c.points = append(c.points, p)
	return p, nil
}

// List returns the points, oldest first.
func (c *Catalogue) List() []Point {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Point(nil), c.points...)
}

// Get finds a point by ID.
func (c *Catalogue) Get(id uint64) (Point, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.points {
		if p.ID == id {
			return p, nil
		}
	}
	return Point{}, fmt.Errorf("%w: point %d (it may have been pruned by retention)", ErrNoPoint, id)
}

// Latest returns the newest consistent point.
func (c *Catalogue) Latest() (Point, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.points) - 1; i >= 0; i-- {
		if c.points[i].Consistent {
			return c.points[i], nil
		}
	}
	return Point{}, fmt.Errorf("%w: no consistent point yet", ErrNoPoint)
}

// AtOrBefore returns the newest consistent point not after t.
func (c *Catalogue) AtOrBefore(t time.Time) (Point, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.points) - 1; i >= 0; i-- {
		if c.points[i].Consistent && !c.points[i].Time.After(t) {
			return c.points[i], nil
		}
	}
	return Point{}, fmt.Errorf("%w: none at or before %s", ErrNoPoint, t.Format(time.RFC3339))
}

// Rename sets a point's name (a user tag).
func (c *Catalogue) Rename(id uint64, name string) (Point, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.points {
		if c.points[i].ID == id {
			c.points[i].Name = name
			if c.points[i].Kind == KindCrash {
				c.points[i].Kind = KindTag
			}
			return c.points[i], c.rewriteLocked()
		}
	}
	return Point{}, fmt.Errorf("%w: point %d", ErrNoPoint, id)
}

// Drop removes the points for which drop returns true and returns them.
func (c *Catalogue) Drop(drop func(Point) bool) ([]Point, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var kept, gone []Point
	for _, p := range c.points {
		if drop(p) {
			gone = append(gone, p)
		} else {
			kept = append(kept, p)
		}
	}
	if len(gone) == 0 {
		return nil, nil
	}
	c.points = kept
	return gone, c.rewriteLocked()
}

func (c *Catalogue) rewriteLocked() error {
	tmp := c.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("rewriting points catalogue: %w", err)
	}
	w := bufio.NewWriter(f)
	for _, p := range c.points {
		b, _ := json.Marshal(p)
		w.Write(append(b, '\n'))
	}
	if err = w.Flush(); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, c.path)
	}
	if err != nil {
		return fmt.Errorf("rewriting points catalogue: %w", err)
	}
	if c.f != nil {
		c.f.Close()
	}
	c.f, err = os.OpenFile(c.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("reopening points catalogue: %w", err)
	}
	return nil
}

// Close closes the catalogue.
func (c *Catalogue) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f == nil {
		return nil
	}
	err := c.f.Close()
	c.f = nil
	return err
}

// Rule keeps one point per Interval for points younger than Within;
// Interval 0 keeps every point.
type Rule struct {
	Interval time.Duration
	Within   time.Duration
}

// Policy is a retention policy.
type Policy struct {
	Grid   []Rule        // ordered by Within, shortest first
	MaxAge time.Duration // nothing older is kept (0: the grid's longest horizon)
}

// DefaultGrid keeps every point for an hour, one per 10 minutes for a day
// and one per hour for a week.
const DefaultGrid = "all:1h,10m:24h,1h:168h"

// ParseGrid parses "all:1h,10m:24h,1h:168h": INTERVAL:WITHIN pairs, where
// INTERVAL "all" keeps every point.
func ParseGrid(s string) ([]Rule, error) {
	var rules []Rule
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		iv, within, ok := strings.Cut(part, ":")
		if !ok {
			return nil, fmt.Errorf("retention grid %q: %q is not INTERVAL:WITHIN", s, part)
		}
		var r Rule
		if iv != "all" {
			d, err := time.ParseDuration(iv)
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("retention grid %q: bad interval %q", s, iv)
			}
			r.Interval = d
		}
		d, err := time.ParseDuration(within)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("retention grid %q: bad horizon %q", s, within)
		}
		r.Within = d
		if n := len(rules); n > 0 && r.Within <= rules[n-1].Within {
			return nil, fmt.Errorf("retention grid %q: horizons must grow (%s after %s)", s, r.Within, rules[n-1].Within)
		}
		rules = append(rules, r)
	}
	if len(rules) == 0 {
		return nil, fmt.Errorf("retention grid %q is empty", s)
	}
	return rules, nil
}

// Thin decides which points to drop at time now. Named points (app
// bookmarks with a name, tags) are kept until MaxAge; within each grid
// bucket the oldest point is kept, so a kept point does not move as new
// points arrive. The newest point is always kept.
func (p Policy) Thin(pts []Point, now time.Time) map[uint64]bool {
	drop := map[uint64]bool{}
	if len(pts) == 0 || len(p.Grid) == 0 {
		return drop
	}
	maxAge := p.MaxAge
	if maxAge == 0 {
		maxAge = p.Grid[len(p.Grid)-1].Within
	}
	sorted := append([]Point(nil), pts...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Seq < sorted[j].Seq })
	newest := sorted[len(sorted)-1].ID
	seen := map[[2]int64]bool{}
	for _, pt := range sorted {
		if pt.ID == newest {
			continue
		}
		age := now.Sub(pt.Time)
		if age > maxAge {
			drop[pt.ID] = true
			continue
		}
		if pt.Name != "" {
			continue
		}
		ri := -1
		for i, r := range p.Grid {
			if age <= r.Within {
				ri = i
				break
			}
		}
		if ri < 0 {
			drop[pt.ID] = true
			continue
		}
		r := p.Grid[ri]
		if r.Interval == 0 {
			continue
		}
		key := [2]int64{int64(ri), pt.Time.UnixNano() / int64(r.Interval)}
		if seen[key] {
			drop[pt.ID] = true
			continue
		}
		seen[key] = true
	}
	return drop
}
