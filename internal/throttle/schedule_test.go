package throttle

import (
	"context"
	"strings"
	"testing"
	"time"
)

func mustWindow(t *testing.T, s string) Window {
	t.Helper()
	w, err := ParseWindow(s)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func TestScheduleAt(t *testing.T) {
	s := Schedule{Default: 100, Windows: []Window{
		mustWindow(t, "Mon-Fri 08:00-18:00 20"),
		mustWindow(t, "Fri-Mon 22:00-06:00 0"), // Fri, Sat, Sun and Mon nights
		mustWindow(t, "sat,SUN 00:00-24:00 50"),
	}}
	// 2026-11-23 is a Monday.
	at := func(day, h, m int) time.Time { return time.Date(2026, 11, 23+day, h, m, 0, 0, time.UTC) }
	cases := []struct {
		t    time.Time
		want int64
		win  string
	}{
		{at(0, 7, 59), 100, ""},                    // Monday morning, before work; Sunday night's window ended at 06:00
		{at(0, 5, 59), 0, "Fri-Mon 22:00-06:00 0"}, // Sunday night's window, Monday 05:59
		{at(0, 8, 0), 20, "Mon-Fri 08:00-18:00 20"},
		{at(0, 17, 59), 20, "Mon-Fri 08:00-18:00 20"},
		{at(0, 18, 0), 100, ""},
		{at(0, 23, 0), 0, "Fri-Mon 22:00-06:00 0"},   // Monday night
		{at(1, 3, 0), 0, "Fri-Mon 22:00-06:00 0"},    // Tuesday 03:00: the morning after Monday
		{at(1, 23, 0), 100, ""},                      // Tuesday night is not listed
		{at(2, 3, 0), 100, ""},                       // nor is Wednesday morning
		{at(4, 23, 30), 0, "Fri-Mon 22:00-06:00 0"},  // Friday night
		{at(5, 12, 0), 50, "sat,SUN 00:00-24:00 50"}, // Saturday noon
		{at(5, 3, 0), 0, "Fri-Mon 22:00-06:00 0"},    // the first window that matches wins
		{at(6, 23, 59), 0, "Fri-Mon 22:00-06:00 0"},
	}
	for _, c := range cases {
		got, win := s.At(c.t)
		if got != c.want || win != c.win {
			t.Errorf("%s %s: rate %d (%q), want %d (%q)", c.t.Weekday(), c.t.Format("15:04"), got, win, c.want, c.win)
		}
	}
}

func TestParseWindowRefusesNonsense(t *testing.T) {
	for _, s := range []string{
		"", "Mon-Fri 08:00-18:00", "Mon-Fri 08:00-18:00 20 x", "Funday 08:00-18:00 1",
		"Mon-Fri 8-18 1", "Mon-Fri 08:00-18:60 1", "Mon-Fri 24:00-06:00 1", "Mon-Fri 08:00-24:30 1",
		"Mon-Fri 08:00-08:00 1", "Mon-Fri 08:00-18:00 -1", "Mon-Fri 08:00-18:00 20MB", "Mon- 08:00-18:00 1",
	} {
		if _, err := ParseWindow(s); err == nil {
			t.Errorf("ParseWindow(%q) accepted it", s)
		} else if !strings.Contains(err.Error(), "bandwidth window") {
			t.Errorf("ParseWindow(%q): %v does not say which entry", s, err)
		}
	}
}

func TestSetRateSwitchesBetweenLimitAndNone(t *testing.T) {
	l := NewAdjustable(0, 0)
	if l.Rate() != 0 {
		t.Fatal("an adjustable limiter at 0 has no limit")
	}
	// No limit: a terabyte passes at once.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := l.Wait(ctx, 1<<40); err != nil {
		t.Fatal(err)
	}
	l.SetRate(1 << 20)
	if l.Rate() != 1<<20 || l.l.Burst() != (1<<20)/10 {
		t.Fatalf("rate %d burst %d after SetRate(1 MiB/s)", l.Rate(), l.l.Burst())
	}
	start := time.Now()
	if err := l.Wait(context.Background(), 1<<20); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 800*time.Millisecond {
		t.Fatalf("1 MiB at 1 MiB/s passed in %v", el)
	}
	l.SetRate(0)
	if err := l.Wait(ctx, 1<<40); err != nil || l.Rate() != 0 {
		t.Fatalf("after SetRate(0): %v, rate %d", err, l.Rate())
	}
}

// FuzzParseWindow: any text is refused with an error or gives a window
// whose fields are in range, and At never panics on it.
func FuzzParseWindow(f *testing.F) {
	for _, s := range []string{"Mon-Fri 08:00-18:00 20000000", "* 00:00-24:00 0", "Fri-Mon 22:00-06:00 1", "sat,SUN 23:59-00:01 5", "Mon 8:0-9:00 1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		w, err := ParseWindow(s)
		if err != nil {
			return
		}
		if w.Start < 0 || w.Start >= 24*60 || w.End <= 0 || w.End > 24*60 || w.Start == w.End || w.Rate < 0 {
			t.Fatalf("ParseWindow(%q) = %+v", s, w)
		}
		sc := Schedule{Default: 7, Windows: []Window{w}}
		base := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
		for m := 0; m < 7*24*60; m += 97 {
			sc.At(base.Add(time.Duration(m) * time.Minute))
		}
	})
}
