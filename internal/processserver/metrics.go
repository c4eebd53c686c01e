package processserver

import "github.com/prometheus/client_golang/prometheus"

// metricsCollector reports per-machine gauges from Status at scrape time.
type metricsCollector struct{ s *Server }

var (
	descCache  = prometheus.NewDesc("standby_ps_cache_bytes", "Bytes held in the machine's durable cache.", []string{"machine"}, nil)
	descFill   = prometheus.NewDesc("standby_ps_cache_fill_ratio", "Cache bytes over the cache limit.", []string{"machine"}, nil)
	descRatio  = prometheus.NewDesc("standby_ps_compression_ratio", "Bytes before over bytes after compression to the master target.", []string{"machine"}, nil)
	descBehind = prometheus.NewDesc("standby_ps_unforwarded_seqs", "Sequence distance between the cache head and what the master target holds durably.", []string{"machine"}, nil)
	descMTUp   = prometheus.NewDesc("standby_ps_master_target_connected", "1 while the forwarding session is up.", []string{"machine"}, nil)
)

func (c metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descCache
	ch <- descFill
	ch <- descRatio
	ch <- descBehind
	ch <- descMTUp
}

func (c metricsCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.s.Status().Machines {
		up := 0.0
		if m.MTConnected {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descCache, prometheus.GaugeValue, float64(m.CacheBytes), m.Machine)
		ch <- prometheus.MustNewConstMetric(descFill, prometheus.GaugeValue, m.CacheFill, m.Machine)
		ch <- prometheus.MustNewConstMetric(descRatio, prometheus.GaugeValue, m.CompressionRatio, m.Machine)
		ch <- prometheus.MustNewConstMetric(descBehind, prometheus.GaugeValue, float64(m.LastSeq-min(m.LastSeq, m.DurableSeq)), m.Machine)
		ch <- prometheus.MustNewConstMetric(descMTUp, prometheus.GaugeValue, up, m.Machine)
	}
}

func (s *Server) metrics() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(metricsCollector{s})
	return reg
}
