package agent

import "github.com/prometheus/client_golang/prometheus"

// metrics exposes the status as Prometheus gauges, read at scrape time so
// there is one source of truth.
func (a *Agent) metrics() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	labels := prometheus.Labels{"machine": a.cfg.Machine}
	gauge := func(name, help string, f func(Status) float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "standby_agent", Name: name, Help: help, ConstLabels: labels}, func() float64 { return f(a.Status()) }))
	}
	gauge("queue_bytes", "Bytes of changes held in memory waiting for the process server.", func(s Status) float64 { return float64(s.QueueBytes) })
	gauge("lag_seconds", "Age of the oldest change not yet durable at the master target.", func(s Status) float64 { return s.LagSeconds })
	gauge("connected", "1 while a session with the process server is up.", func(s Status) float64 {
		if s.Connected {
			return 1
		}
		return 0
	})
	gauge("overflows_total", "Times the change queue overflowed into bitmap mode.", func(s Status) float64 { return float64(s.Overflows) })
	gauge("held_writes_total", "Writes that waited for room in a full change queue (queue_hold).", func(s Status) float64 { return float64(s.HeldWrites) })
	gauge("dirty_bytes", "Bytes waiting for resync on all disks.", func(s Status) float64 {
		var n int64
		for _, d := range s.Disks {
			n += d.DirtyBytes
		}
		return float64(n)
	})
	return reg
}
