package netsim

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// The wire emulates the part of tc-netem that replication tests need. It is
// done in Go rather than by the kernel's sch_netem because the kernels this
// project is built and tested on ship without sch_netem, and because netem
// on a sender's own interface counts its delay queue against TCP small
// queues, which caps throughput at about 1 MB per RTT: a router in between,
// which is what the wire is, does not.

// Queue limits, in packets, as netem counts them.
const (
	defaultLimit = 1000 // netem's default
	maxLimit     = 1 << 14
)

// segmentBytes is one Ethernet frame's worth of a large (GSO) frame: the
// wire moves TCP's 64 KiB super-frames whole, and counts each as the
// MTU-sized packets it stands for, so that a queue limit means what it
// would mean on a real link.
const segmentBytes = 1514

// impairment is what a Netem spec asks of one direction of a link.
type impairment struct {
	delay  time.Duration
	jitter time.Duration
	rate   float64 // bits per second; 0 = unlimited
	loss   float64 // probability that a frame is dropped
	limit  int     // packets queued before tail drop
}

// parseNetem reads the netem option syntax of tc(8): "delay 20ms 5ms",
// "rate 100mbit", "loss 1%", "limit 1000", in any combination. Options the
// wire cannot emulate are errors rather than ignored, so a test never runs
// believing in an impairment it does not get.
func parseNetem(spec string) (impairment, error) {
	imp := impairment{limit: defaultLimit}
	f := strings.Fields(strings.ToLower(spec))
	for i := 0; i < len(f); i++ {
		arg := func() (string, error) {
			if i+1 >= len(f) {
				return "", fmt.Errorf("netem %q: %s needs a value", spec, f[i])
			}
			i++
			return f[i], nil
		}
		switch opt := f[i]; opt {
		case "delay":
			v, err := arg()
			if err != nil {
				return impairment{}, err
			}
			if imp.delay, err = parseTime(v); err != nil {
				return impairment{}, fmt.Errorf("netem %q: delay: %w", spec, err)
			}
			if i+1 < len(f) {
				if j, err := parseTime(f[i+1]); err == nil {
					imp.jitter = j
					i++
				}
			}
			if i+1 < len(f) && strings.HasSuffix(f[i+1], "%") {
				return impairment{}, fmt.Errorf("netem %q: delay correlation is not emulated", spec)
			}
		case "rate":
			v, err := arg()
			if err != nil {
				return impairment{}, err
			}
			if imp.rate, err = parseRate(v); err != nil {
				return impairment{}, fmt.Errorf("netem %q: rate: %w", spec, err)
			}
		case "loss":
			v, err := arg()
			if err != nil {
				return impairment{}, err
			}
			if v == "random" {
				if v, err = arg(); err != nil {
					return impairment{}, err
				}
			}
			if imp.loss, err = parsePercent(v); err != nil {
				return impairment{}, fmt.Errorf("netem %q: loss: %w", spec, err)
			}
			if i+1 < len(f) && strings.HasSuffix(f[i+1], "%") {
				return impairment{}, fmt.Errorf("netem %q: loss correlation is not emulated", spec)
			}
		case "limit":
			v, err := arg()
			if err != nil {
				return impairment{}, err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxLimit {
				return impairment{}, fmt.Errorf("netem %q: limit must be a packet count from 1 to %d", spec, maxLimit)
			}
			imp.limit = n
		default:
			return impairment{}, fmt.Errorf("netem %q: option %q is not emulated (supported: delay TIME [JITTER], rate RATE, loss PERCENT, limit PACKETS)", spec, opt)
		}
	}
	return imp, nil
}

// parseTime accepts Go durations ("20ms", "1.5s") and tc's spellings
// ("20msec", "1secs"). A bare number is refused: tc reads it as
// microseconds, which nobody writing "delay 20" means.
func parseTime(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return 0, fmt.Errorf("negative time %q", s)
		}
		return d, nil
	}
	num, unit := splitUnit(s)
	units := map[string]time.Duration{
		"sec": time.Second, "secs": time.Second,
		"msec": time.Millisecond, "msecs": time.Millisecond,
		"usec": time.Microsecond, "usecs": time.Microsecond,
		"nsec": time.Nanosecond, "nsecs": time.Nanosecond,
	}
	scale, ok := units[unit]
	v, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not a time such as 20ms", s)
	}
	return time.Duration(v * float64(scale)), nil
}

// parseRate reads tc's rate units: bit, kbit, mbit, gbit (and the binary
// kibit, mibit, gibit), or bytes per second as bps, kbps, mbps, gbps.
func parseRate(s string) (float64, error) {
	num, unit := splitUnit(s)
	units := map[string]float64{
		"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
		"kibit": 1 << 10, "mibit": 1 << 20, "gibit": 1 << 30, "tibit": 1 << 40,
		"bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12,
		"kibps": 8 << 10, "mibps": 8 << 20, "gibps": 8 << 30, "tibps": 8 << 40,
	}
	scale, ok := units[unit]
	v, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || v <= 0 {
		return 0, fmt.Errorf("%q is not a rate such as 100mbit", s)
	}
	return v * scale, nil
}

func parsePercent(s string) (float64, error) {
	num, ok := strings.CutSuffix(s, "%")
	v, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || v < 0 || v > 100 {
		return 0, fmt.Errorf("%q is not a percentage such as 1%%", s)
	}
	return v / 100, nil
}

func splitUnit(s string) (num, unit string) {
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		return s, ""
	}
	return s[:i], s[i:]
}

// segments is how many MTU-sized packets a frame of n bytes stands for.
func segments(n int) int {
	return max(1, (n+segmentBytes-1)/segmentBytes)
}

// shaper decides when each frame of one direction leaves the wire. Only
// the goroutine reading that direction uses it.
type shaper struct {
	txFree  time.Time // when the emulated line finishes sending what it has
	lastDue time.Time
}

// schedule returns when a frame of n bytes arriving at now is delivered:
// it waits for the line (rate), crosses it (delay ± jitter), and never
// overtakes the frame before it. netem lets jitter reorder packets; the
// wire keeps order, because a real WAN path mostly does, and reordering
// would be an impairment of its own.
func (s *shaper) schedule(now time.Time, n int, imp *impairment) time.Time {
	start := now
	if s.txFree.After(start) {
		start = s.txFree
	}
	end := start
	if imp.rate > 0 {
		end = start.Add(time.Duration(float64(n) * 8 / imp.rate * float64(time.Second)))
	}
	s.txFree = end
	d := imp.delay
	if imp.jitter > 0 {
		d += time.Duration(rand.Int64N(int64(2*imp.jitter)+1)) - imp.jitter
		d = max(d, 0)
	}
	due := end.Add(d)
	if due.Before(s.lastDue) {
		due = s.lastDue
	}
	s.lastDue = due
	return due
}
