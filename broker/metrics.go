package broker

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics holds a node's Prometheus collectors, in a registry of its own
// (several nodes run in one test process; nothing is registered globally).
type metrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	connections prometheus.Gauge
	appends     prometheus.Counter
	delivered   prometheus.Counter
	rollovers   prometheus.Counter
	failovers   prometheus.Counter
	natsDropped *prometheus.CounterVec
	retained    *prometheus.CounterVec
}

func newMetrics(s *Server) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	f := promauto{m.reg}
	m.requests = f.counterVec("walrus_broker_requests_total", "Native protocol requests by verb and result.", "verb", "result")
	m.duration = f.histogramVec("walrus_broker_request_duration_seconds", "Native protocol request latency by verb.", "verb")
	m.connections = f.gauge("walrus_broker_connections", "Open native protocol connections.")
	m.appends = f.counter("walrus_broker_appended_entries_total", "Entries appended to segments this node leads.")
	m.delivered = f.counter("walrus_broker_delivered_entries_total", "Entries delivered through the shared GET cursor by this node.")
	m.rollovers = f.counter("walrus_broker_rollovers_total", "Segments this node sealed and rolled over.")
	m.natsDropped = f.counterVec("walrus_nats_publish_dropped_total",
		"Plain publishes and captured messages that were not stored, by error code.", "reason")
	m.retained = f.counterVec("walrus_storage_retention_deleted_total",
		"What retention deleted from this node's storage: unit=segments counts segments, unit=bytes their bytes.", "unit")
	m.failovers = f.counter("walrus_cluster_failovers_total", "Segments this node failed over as Raft leader.")
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "walrus_cluster_is_leader", Help: "1 if this node is the Raft leader."},
			func() float64 {
				if s.serving.Load() && s.raft.IsLeader() {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "walrus_cluster_metadata_index", Help: "Raft index of the metadata this node has applied."},
			func() float64 {
				if !s.serving.Load() {
					return 0
				}
				return float64(s.raft.Metadata().Index)
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "walrus_cluster_topics", Help: "Topics in the metadata."},
			func() float64 {
				if !s.serving.Load() {
					return 0
				}
				return float64(s.raft.Metadata().NumTopics())
			}),
	)
	return m
}

func (m *metrics) appended(n int) { m.appends.Add(float64(n)) }

// observe records one protocol request.
func (m *metrics) observe(verb string, err error, start time.Time) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.requests.WithLabelValues(verb, result).Inc()
	m.duration.WithLabelValues(verb).Observe(time.Since(start).Seconds())
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// promauto builds collectors registered in one registry.
type promauto struct{ reg *prometheus.Registry }

func (f promauto) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

func (f promauto) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	f.reg.MustRegister(g)
	return g
}

func (f promauto) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	f.reg.MustRegister(c)
	return c
}

func (f promauto) histogramVec(name, help string, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: name, Help: help,
		Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16), // 50µs .. ~1.6s
	}, labels)
	f.reg.MustRegister(h)
	return h
}
