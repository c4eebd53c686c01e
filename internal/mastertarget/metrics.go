package mastertarget

import "github.com/prometheus/client_golang/prometheus"

type metricsCollector struct{ s *Server }

var (
	descLag     = prometheus.NewDesc("standby_mt_rpo_seconds", "Age of the newest applied crash-consistent point.", []string{"machine"}, nil)
	descIntake  = prometheus.NewDesc("standby_mt_intake_bytes", "Bytes in the intake log not yet applied and trimmed.", []string{"machine"}, nil)
	descConsist = prometheus.NewDesc("standby_mt_disk_consistent", "1 when the replica disk is at a consistent point.", []string{"machine", "disk"}, nil)
	descApplied = prometheus.NewDesc("standby_mt_applied_bytes_total", "Bytes applied to replicas.", []string{"machine"}, nil)
)

func (c metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descLag
	ch <- descIntake
	ch <- descConsist
	ch <- descApplied
}

func (c metricsCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.s.Status().Machines {
		ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, m.LagSeconds, m.Machine)
		ch <- prometheus.MustNewConstMetric(descIntake, prometheus.GaugeValue, float64(m.IntakeBytes), m.Machine)
		ch <- prometheus.MustNewConstMetric(descApplied, prometheus.CounterValue, float64(m.BytesApplied), m.Machine)
		for _, d := range m.Disks {
			v := 0.0
			if d.Consistent {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descConsist, prometheus.GaugeValue, v, m.Machine, d.Name)
		}
	}
}

func (s *Server) metrics() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(metricsCollector{s})
	return reg
}
