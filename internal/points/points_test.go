package points

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestCatalogueSurvivesTornTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "points.jsonl")
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := 0; i < 5; i++ {
		if _, err := c.Add(Point{Seq: uint64(10 * (i + 1)), Time: now.Add(time.Duration(i) * time.Second), Kind: KindCrash, Consistent: true}); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"id":6,"seq":60,"ti`) // a crash mid-append
	f.Close()
	c, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := len(c.List()); n != 5 {
		t.Fatalf("%d points after torn tail, want 5", n)
	}
	p, err := c.Add(Point{Seq: 70, Time: now, Kind: KindApp, Consistent: true, Name: "before-upgrade"})
	if err != nil || p.ID != 6 {
		t.Fatalf("add after recovery: %+v %v", p, err)
	}
	if _, err := c.Get(42); !errors.Is(err, ErrNoPoint) {
		t.Fatalf("missing point: %v", err)
	}
}

func TestCorruptMiddleLineRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "points.jsonl")
	os.WriteFile(path, []byte("{\"id\":1,\"seq\":1}\ngarbage\n{\"id\":2,\"seq\":2}\n"), 0o600)
	if _, err := Open(path); err == nil {
		t.Fatal("a corrupt line in the middle was accepted")
	}
}

func TestThinGrid(t *testing.T) {
	grid, err := ParseGrid(DefaultGrid)
	if err != nil {
		t.Fatal(err)
	}
	pol := Policy{Grid: grid}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	var pts []Point
	id := uint64(0)
	// One point every 5 s for 9 days back.
	for age := 9 * 24 * time.Hour; age >= 0; age -= 5 * time.Second {
		id++
		pts = append(pts, Point{ID: id, Seq: id, Time: now.Add(-age), Kind: KindCrash, Consistent: true})
	}
	pts[10].Name = "named" // 9 days old: past max age, goes anyway
	named := len(pts) - 3*720
	pts[named].Name = "keep-me"
	drop := pol.Thin(pts, now)
	var lastHour, day, week, older int
	for _, p := range pts {
		if drop[p.ID] {
			continue
		}
		switch age := now.Sub(p.Time); {
		case age <= time.Hour:
			lastHour++
		case age <= 24*time.Hour:
			day++
		case age <= 168*time.Hour:
			week++
		default:
			older++
		}
	}
	if lastHour != 721 {
		t.Errorf("last hour keeps %d points, want all 721", lastHour)
	}
	if day < 23*6 || day > 23*6+3 {
		t.Errorf("last day keeps %d points, want about one per 10 min (138)", day)
	}
	if week < 6*24 || week > 6*24+3 {
		t.Errorf("last week keeps %d points, want about one per hour (144)", week)
	}
	if older != 0 {
		t.Errorf("%d points older than a week kept", older)
	}
	if drop[pts[named].ID] {
		t.Error("a named point inside max age was thinned")
	}
	if !drop[pts[10].ID] {
		t.Error("a named point past max age was kept")
	}
	if drop[pts[len(pts)-1].ID] {
		t.Error("the newest point was dropped")
	}
}

func TestParseGridErrors(t *testing.T) {
	for _, s := range []string{"", "10m", "all:1h,10m:30m", "x:1h", "10m:-1h"} {
		if _, err := ParseGrid(s); err == nil {
			t.Errorf("ParseGrid(%q) accepted", s)
		}
	}
}
