package processserver

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The bandwidth limit follows the schedule as the clock moves: business
// hours, the default outside them, no limit at weekends; the status and
// the log say which entry is in force.
func TestBandwidthScheduleFollowsTheClock(t *testing.T) {
	var logs syncBuf
	s, err := New(Config{Name: "ps1", Listen: "127.0.0.1:0", CacheDir: t.TempDir(), MasterTarget: "127.0.0.1:9",
		BandwidthLimit:    50_000_000,
		BandwidthSchedule: []string{"Mon-Fri 08:00-18:00 20000000", "Sat,Sun 00:00-24:00 0"},
		Logger:            slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	monday := time.Date(2026, 11, 23, 0, 0, 0, 0, time.Local)
	for _, c := range []struct {
		at     time.Time
		rate   int64
		window string
	}{
		{monday.Add(9 * time.Hour), 20_000_000, "Mon-Fri 08:00-18:00 20000000"},
		{monday.Add(19 * time.Hour), 50_000_000, ""},
		{monday.Add(5*24*time.Hour + 12*time.Hour), 0, "Sat,Sun 00:00-24:00 0"},
		{monday.Add(7*24*time.Hour + 8*time.Hour), 20_000_000, "Mon-Fri 08:00-18:00 20000000"},
	} {
		s.applySchedule(c.at)
		st := s.Status()
		if st.Bandwidth != c.rate || st.BandwidthWindow != c.window || s.limiter.Rate() != c.rate {
			t.Errorf("%s %s: status bandwidth %d window %q, limiter %d; want %d %q",
				c.at.Weekday(), c.at.Format("15:04"), st.Bandwidth, st.BandwidthWindow, s.limiter.Rate(), c.rate, c.window)
		}
	}
	if n := strings.Count(logs.String(), "bandwidth limit changed"); n < 3 {
		t.Errorf("%d 'bandwidth limit changed' log lines for 3 changes:\n%s", n, logs.String())
	}
}

func TestBandwidthScheduleRefusedWithTheEntry(t *testing.T) {
	_, err := New(Config{Name: "ps1", Listen: "127.0.0.1:0", CacheDir: t.TempDir(), MasterTarget: "127.0.0.1:9",
		BandwidthSchedule: []string{"Mon-Fri 08:00-18:00 20000000", "Weekdays 9-5 1MB"}})
	if err == nil || !strings.Contains(err.Error(), "bandwidth_schedule") || !strings.Contains(err.Error(), "Weekdays 9-5 1MB") {
		t.Fatalf("New with a bad schedule entry: %v; want an error naming bandwidth_schedule and the entry", err)
	}
}
