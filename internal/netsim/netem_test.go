package netsim

import (
	"strings"
	"testing"
	"time"
)

func TestParseNetem(t *testing.T) {
	for _, tc := range []struct {
		spec string
		want impairment
	}{
		{"", impairment{limit: 1000}},
		{"delay 20ms", impairment{delay: 20 * time.Millisecond, limit: 1000}},
		{"delay 20msec 5ms rate 100mbit", impairment{delay: 20 * time.Millisecond, jitter: 5 * time.Millisecond, rate: 100e6, limit: 1000}},
		{"rate 1.5Mbit loss 0.5% limit 50", impairment{rate: 1.5e6, loss: 0.005, limit: 50}},
		{"loss random 1%", impairment{loss: 0.01, limit: 1000}},
		{"rate 10mbps", impairment{rate: 80e6, limit: 1000}},
		{"rate 1kibit delay 1.5s", impairment{rate: 1024, delay: 1500 * time.Millisecond, limit: 1000}},
	} {
		got, err := parseNetem(tc.spec)
		if err != nil {
			t.Errorf("parseNetem(%q): %v", tc.spec, err)
			continue
		}
		if got != tc.want {
			t.Errorf("parseNetem(%q) = %+v, want %+v", tc.spec, got, tc.want)
		}
	}
	for spec, why := range map[string]string{
		"delay":                   "needs a value",
		"delay 20":                "not a time",
		"delay 20ms 5ms 25%":      "correlation",
		"loss 1":                  "percentage",
		"loss 1% 25%":             "correlation",
		"rate fast":               "not a rate",
		"rate 100":                "not a rate",
		"limit 0":                 "limit",
		"duplicate 1%":            `option "duplicate" is not emulated`,
		"delay 10ms reorder 25%":  `option "reorder" is not emulated`,
		"delay 10ms distribution": "not emulated",
	} {
		_, err := parseNetem(spec)
		if err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("parseNetem(%q) = %v, want an error about %q", spec, err, why)
		}
	}
}

func TestShaperSchedule(t *testing.T) {
	t0 := time.Unix(1000, 0)
	t.Run("delay", func(t *testing.T) {
		var s shaper
		imp := &impairment{delay: 20 * time.Millisecond}
		if got := s.schedule(t0, 1500, imp); !got.Equal(t0.Add(20 * time.Millisecond)) {
			t.Errorf("due %v after arrival, want 20ms", got.Sub(t0))
		}
	})
	t.Run("rate serialises frames back to back", func(t *testing.T) {
		var s shaper
		imp := &impairment{rate: 8e6, delay: 10 * time.Millisecond} // 1 byte per µs
		first := s.schedule(t0, 1000, imp)
		second := s.schedule(t0, 1000, imp) // arrives together, waits for the line
		if want := t0.Add(1*time.Millisecond + 10*time.Millisecond); !first.Equal(want) {
			t.Errorf("first due %v, want %v", first.Sub(t0), want.Sub(t0))
		}
		if want := t0.Add(2*time.Millisecond + 10*time.Millisecond); !second.Equal(want) {
			t.Errorf("second due %v, want %v", second.Sub(t0), want.Sub(t0))
		}
		// After the line has been idle, a frame does not inherit old debt.
		later := t0.Add(time.Second)
		if got, want := s.schedule(later, 1000, imp), later.Add(11*time.Millisecond); !got.Equal(want) {
			t.Errorf("after idle due %v, want %v", got.Sub(later), want.Sub(later))
		}
	})
	t.Run("jitter never reorders", func(t *testing.T) {
		var s shaper
		imp := &impairment{delay: 5 * time.Millisecond, jitter: 5 * time.Millisecond}
		var last time.Time
		for i := range 1000 {
			now := t0.Add(time.Duration(i) * 100 * time.Microsecond)
			due := s.schedule(now, 100, imp)
			if due.Before(last) {
				t.Fatalf("frame %d due %v before its predecessor %v", i, due, last)
			}
			if d := due.Sub(now); d > 10*time.Millisecond {
				t.Fatalf("frame %d delayed %v, more than delay+jitter", i, d)
			}
			last = due
		}
	})
}

func TestSegments(t *testing.T) {
	for n, want := range map[int]int{1: 1, 60: 1, 1514: 1, 1515: 2, 65536 + 14: 44} {
		if got := segments(n); got != want {
			t.Errorf("segments(%d) = %d, want %d", n, got, want)
		}
	}
}
