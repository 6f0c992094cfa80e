package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the control plane's Prometheus metrics, in their own registry (see Server.Registry).
type metrics struct {
	reg             *prometheus.Registry
	connected       *prometheus.GaugeVec
	pushes          *prometheus.CounterVec
	pushedBytes     *prometheus.CounterVec
	nacks           *prometheus.CounterVec
	ackLatency      *prometheus.HistogramVec
	convergence     *prometheus.HistogramVec
	configBytes     *prometheus.GaugeVec
	updates         prometheus.Counter
	changed         prometheus.Counter
	translate       prometheus.Histogram
	rejectedStreams prometheus.Counter

	// byType holds the per-type series resolved once (a label lookup hashes and locks: on the push and
	// ACK paths of every stream it showed in profiles); never written after newMetrics.
	byType map[string]*typeMetrics
}

// typeMetrics are the series of one resource type ("cds", "eds", ...).
type typeMetrics struct {
	pushes, pushedBytes, nacks prometheus.Counter
	ackLatency, convergence    prometheus.Observer
}

// of returns the series of a short type name (see shortType).
func (m *metrics) of(short string) *typeMetrics {
	if tm, ok := m.byType[short]; ok {
		return tm
	}
	return m.resolve(short)
}

func (m *metrics) resolve(short string) *typeMetrics {
	return &typeMetrics{
		pushes: m.pushes.WithLabelValues(short), pushedBytes: m.pushedBytes.WithLabelValues(short),
		nacks: m.nacks.WithLabelValues(short), ackLatency: m.ackLatency.WithLabelValues(short),
		convergence: m.convergence.WithLabelValues(short),
	}
}

func newMetrics() *metrics {
	buckets := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "weft_xds_connected_proxies", Help: "xDS streams open, by client kind (weft, envoy, grpc).",
		}, []string{"kind"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_xds_pushes_total", Help: "xDS responses sent, by type (cds, eds, lds, rds, sds).",
		}, []string{"type"}),
		pushedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_xds_pushed_bytes_total", Help: "Bytes of resources sent in xDS responses, by type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_xds_nacks_total", Help: "xDS responses rejected by a client (NACK), by type.",
		}, []string{"type"}),
		ackLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "weft_xds_push_ack_seconds", Help: "Time from sending an xDS response to its ACK, by type.", Buckets: buckets,
		}, []string{"type"}),
		convergence: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "weft_xds_convergence_seconds", Help: "Time from a new discovery state to a client's ACK of the resulting push, by type.", Buckets: buckets,
		}, []string{"type"}),
		configBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "weft_xds_config_bytes", Help: "Size of the shared configuration, by type (cluster and listener variants summed).",
		}, []string{"type"}),
		updates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_discovery_updates_total", Help: "Discovery states translated.",
		}),
		changed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_xds_resources_changed_total", Help: "Resources added, changed or removed by discovery updates.",
		}),
		translate: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "weft_xds_update_seconds", Help: "Time to translate a discovery state and feed the caches.", Buckets: buckets,
		}),
		rejectedStreams: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_xds_unavailable_streams_total", Help: "Streams refused with Unavailable because discovery had not synced.",
		}),
	}
	m.reg.MustRegister(m.connected, m.pushes, m.pushedBytes, m.nacks, m.ackLatency, m.convergence, m.configBytes,
		m.updates, m.changed, m.translate, m.rejectedStreams,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.byType = map[string]*typeMetrics{}
	for _, short := range []string{"cds", "eds", "lds", "rds", "sds"} {
		m.byType[short] = m.resolve(short)
	}
	return m
}

// observeUpdate records one Update; s.mu is held.
func (m *metrics) observeUpdate(s *Server, changed int, took time.Duration) {
	m.updates.Inc()
	m.changed.Add(float64(changed))
	m.translate.Observe(took.Seconds())
	lds := s.apiLDS.bytes
	for _, g := range s.groups {
		lds += g.lds.bytes
	}
	m.configBytes.WithLabelValues("cds").Set(float64(s.clusters.bytes + s.grpcCDS.bytes))
	m.configBytes.WithLabelValues("eds").Set(float64(s.endpoints.bytes))
	m.configBytes.WithLabelValues("lds").Set(float64(lds))
	m.configBytes.WithLabelValues("rds").Set(float64(s.routes.bytes + s.grpcRDS.bytes))
}

// Registry is the registry of the server's metrics, for /metrics; callers may add their own.
func (s *Server) Registry() *prometheus.Registry { return s.metrics.reg }
