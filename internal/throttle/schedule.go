package throttle

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Schedule is a rate that follows the local time of day and week, as
// administrators throttle replication during business hours: the first
// window containing a moment gives its rate; outside every window,
// Default applies. Rates are bytes per second, 0 for no limit.
type Schedule struct {
	Default int64
	Windows []Window
}

// Window is one entry of a schedule.
type Window struct {
	Text       string  // as written, for logs and status
	Days       [7]bool // indexed by time.Weekday: the days the window starts on
	Start, End int     // minutes after midnight; End ≤ Start runs past midnight
	Rate       int64
}

var dayNames = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// ParseWindow reads "DAYS HH:MM-HH:MM RATE": DAYS is "*" (every day) or a
// comma list of days and day ranges ("Mon-Fri", "Sat,Sun", "Fri-Mon");
// the end may be 24:00, and an end at or before the start means the window
// runs into the next day ("Mon-Fri 22:00-06:00 0": weeknights from 22:00
// until 06:00 the morning after); RATE is bytes per second, 0 for none.
func ParseWindow(s string) (Window, error) {
	w := Window{Text: s}
	f := strings.Fields(s)
	if len(f) != 3 {
		return w, fmt.Errorf("bandwidth window %q: want \"DAYS HH:MM-HH:MM BYTES_PER_SEC\", e.g. \"Mon-Fri 08:00-18:00 20000000\"", s)
	}
	if err := parseDays(f[0], &w.Days); err != nil {
		return w, fmt.Errorf("bandwidth window %q: %w", s, err)
	}
	start, end, ok := strings.Cut(f[1], "-")
	if !ok {
		return w, fmt.Errorf("bandwidth window %q: times %q: want HH:MM-HH:MM", s, f[1])
	}
	var err error
	if w.Start, err = parseClock(start, false); err != nil {
		return w, fmt.Errorf("bandwidth window %q: %w", s, err)
	}
	if w.End, err = parseClock(end, true); err != nil {
		return w, fmt.Errorf("bandwidth window %q: %w", s, err)
	}
	if w.Start == w.End {
		return w, fmt.Errorf("bandwidth window %q: starts and ends at the same time (for a whole day write 00:00-24:00)", s)
	}
	if w.Rate, err = strconv.ParseInt(f[2], 10, 64); err != nil || w.Rate < 0 {
		return w, fmt.Errorf("bandwidth window %q: rate %q: want bytes per second, 0 for no limit", s, f[2])
	}
	return w, nil
}

func parseDays(s string, days *[7]bool) error {
	if s == "*" {
		for i := range days {
			days[i] = true
		}
		return nil
	}
	for part := range strings.SplitSeq(strings.ToLower(s), ",") {
		from, to, isRange := strings.Cut(part, "-")
		a, ok := dayNames[from]
		if !ok {
			return fmt.Errorf("day %q: want Mon, Tue, Wed, Thu, Fri, Sat, Sun, a range like Mon-Fri, or *", from)
		}
		b := a
		if isRange {
			if b, ok = dayNames[to]; !ok {
				return fmt.Errorf("day %q: want Mon, Tue, Wed, Thu, Fri, Sat, Sun", to)
			}
		}
		for d := a; ; d = (d + 1) % 7 {
			days[d] = true
			if d == b {
				break
			}
		}
	}
	return nil
}

func parseClock(s string, end bool) (int, error) {
	hh, mm, ok := strings.Cut(s, ":")
	h, err1 := strconv.Atoi(hh)
	m, err2 := strconv.Atoi(mm)
	if !ok || err1 != nil || err2 != nil || len(mm) != 2 || h < 0 || m < 0 || m > 59 || h > 24 || (h == 24 && (m != 0 || !end)) {
		return 0, fmt.Errorf("time %q: want HH:MM between 00:00 and 23:59 (24:00 as an end)", s)
	}
	return h*60 + m, nil
}

// contains reports whether the window covers minute m of a day whose
// weekday is d.
func (w Window) contains(d time.Weekday, m int) bool {
	if w.Start < w.End {
		return w.Days[d] && m >= w.Start && m < w.End
	}
	// Past midnight: the evening of a listed day, or the morning after one.
	return (w.Days[d] && m >= w.Start) || (w.Days[(d+6)%7] && m < w.End)
}

// At returns the rate at t, in t's location, and the text of the window
// that gives it ("" for the default).
func (s Schedule) At(t time.Time) (int64, string) {
	m := t.Hour()*60 + t.Minute()
	for _, w := range s.Windows {
		if w.contains(t.Weekday(), m) {
			return w.Rate, w.Text
		}
	}
	return s.Default, ""
}
