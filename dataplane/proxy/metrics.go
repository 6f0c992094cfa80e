package proxy

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's golden metrics, labelled as Linkerd's: direction, authority, target
// cluster, tls, client_id and server_id.
type Metrics struct {
	requests  *prometheus.CounterVec
	responses *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	tcpOpens  *prometheus.CounterVec
	tcpCloses *prometheus.CounterVec
	tcpRead   *prometheus.CounterVec
	tcpWrite  *prometheus.CounterVec
}

var (
	httpLabels = []string{"direction", "authority", "target_cluster", "tls", "client_id", "server_id"}
	respLabels = append(append([]string{}, httpLabels...), "status_code", "classification")
	tcpLabels  = []string{"direction", "authority", "target_cluster", "tls", "client_id", "server_id"}
)

// NewMetrics registers the proxy's metrics.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "request_total", Help: "HTTP requests received."}, httpLabels),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "response_total", Help: "HTTP responses sent, by status and classification."}, respLabels),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "response_latency_ms", Help: "Time to the end of the response, in milliseconds.",
			Buckets: []float64{1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000}}, respLabels),
		tcpOpens:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tcp_open_total", Help: "TCP connections opened."}, tcpLabels),
		tcpCloses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tcp_close_total", Help: "TCP connections closed."}, tcpLabels),
		tcpRead:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tcp_read_bytes_total", Help: "Bytes read from the downstream peer."}, tcpLabels),
		tcpWrite:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tcp_write_bytes_total", Help: "Bytes written to the downstream peer."}, tcpLabels),
	}
	reg.MustRegister(m.requests, m.responses, m.latency, m.tcpOpens, m.tcpCloses, m.tcpRead, m.tcpWrite)
	return m
}

func boolLabel(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func (m *Metrics) ids(rs *reqState, p *Proxy) (tls bool, client, server string) {
	if rs.info.direction == "inbound" {
		return rs.info.tls, rs.info.peerID, ""
	}
	return rs.upTLS, "", rs.serverID
}

func clusterName(rs *reqState) string {
	if rs.cluster == nil {
		return ""
	}
	return rs.cluster.cfg.Name
}

// observeHTTP records one finished request (the request count too, so both carry the same labels).
func (m *Metrics) observeHTTP(p *Proxy, rs *reqState, code int, h http.Header, start time.Time) {
	tls, client, server := m.ids(rs, p)
	if tls {
		if rs.info.direction == "inbound" {
			server = p.ownID()
		} else {
			client = p.ownID()
		}
	}
	base := [...]string{rs.info.direction, rs.authority, clusterName(rs), boolLabel(tls), client, server}
	m.requests.WithLabelValues(base[:]...).Inc()
	if code == 0 {
		code = http.StatusBadGateway
	}
	class := "success"
	if code >= 500 {
		class = "failure"
	} else if g := grpcStatus(h); g != "" && g != "0" {
		class = "failure"
	}
	lv := append(base[:], strconv.Itoa(code), class)
	m.responses.WithLabelValues(lv...).Inc()
	m.latency.WithLabelValues(lv...).Observe(float64(time.Since(start).Microseconds()) / 1000)
}

func grpcStatus(h http.Header) string {
	if g := h.Get("Grpc-Status"); g != "" {
		return g
	}
	return h.Get(http.TrailerPrefix + "Grpc-Status")
}

type tcpLabelValues [6]string

func (m *Metrics) tcpLabels(info *connInfo, cluster, authority string, tls bool, ids [2]string) tcpLabelValues {
	return tcpLabelValues{info.direction, authority, cluster, boolLabel(tls), ids[0], ids[1]}
}

func (m *Metrics) tcpOpen(l tcpLabelValues) { m.tcpOpens.WithLabelValues(l[:]...).Inc() }

func (m *Metrics) tcpClose(l tcpLabelValues, read, written int64) {
	m.tcpCloses.WithLabelValues(l[:]...).Inc()
	m.tcpRead.WithLabelValues(l[:]...).Add(float64(read))
	m.tcpWrite.WithLabelValues(l[:]...).Add(float64(written))
}
