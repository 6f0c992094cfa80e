package proxy

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's golden metrics, labelled as Linkerd's: direction, authority, target
// cluster, tls, client_id and server_id.
type Metrics struct {
	// series caches the resolved children per label set, so that the request path neither hashes the
	// labels nor takes the vectors' locks once a series exists.
	series    sync.Map // seriesKey → *httpSeries
	requests  *prometheus.CounterVec
	responses *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	tcpOpens  *prometheus.CounterVec
	tcpCloses *prometheus.CounterVec
	tcpRead   *prometheus.CounterVec
	tcpWrite  *prometheus.CounterVec
	// handshakes counts mTLS handshakes between proxies by direction and whether the session resumed.
	handshakes *prometheus.CounterVec
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
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tls_handshake_total", Help: "mTLS handshakes between proxies, by whether the TLS session was resumed."},
			[]string{"direction", "resumed"}),
	}
	reg.MustRegister(m.requests, m.responses, m.latency, m.tcpOpens, m.tcpCloses, m.tcpRead, m.tcpWrite, m.handshakes)
	return m
}

func (m *Metrics) observeHandshake(direction string, resumed bool) {
	m.handshakes.WithLabelValues(direction, boolLabel(resumed)).Inc()
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
	key := m.key(p, rs)
	hs := m.seriesOf(key)
	hs.requests.Inc()
	if code == 0 {
		code = http.StatusBadGateway
	}
	failure := code >= 500
	if !failure {
		if g := grpcStatus(h); g != "" && g != "0" {
			failure = true
		}
	}
	rsr := m.respSeriesOf(hs, key, respKey{code, failure})
	rsr.total.Inc()
	rsr.latency.Observe(float64(time.Since(start).Microseconds()) / 1000)
}

// key is the label set of a request's series.
func (m *Metrics) key(p *Proxy, rs *reqState) seriesKey {
	tls, client, server := m.ids(rs, p)
	if tls {
		if rs.info.direction == "inbound" {
			server = p.ownID()
		} else {
			client = p.ownID()
		}
	}
	authority := rs.authority
	if rs.cluster == nil {
		authority = "" // unrouted: the client chose this name; keep it out of the label space
	}
	return seriesKey{rs.info.direction, authority, clusterName(rs), tls, client, server}
}

func (m *Metrics) seriesOf(key seriesKey) *httpSeries {
	v, ok := m.series.Load(key)
	if !ok {
		v, _ = m.series.LoadOrStore(key, m.newSeries(key))
	}
	return v.(*httpSeries)
}

func (m *Metrics) respSeriesOf(hs *httpSeries, key seriesKey, rk respKey) *respSeries {
	r, ok := hs.responses.Load(rk)
	if !ok {
		r, _ = hs.responses.LoadOrStore(rk, m.newRespSeries(key, rk))
	}
	return r.(*respSeries)
}

type seriesKey struct {
	direction, authority, cluster string
	tls                           bool
	client, server                string
}

type respKey struct {
	code    int
	failure bool
}

type httpSeries struct {
	requests  prometheus.Counter
	responses sync.Map // respKey → *respSeries
}

type respSeries struct {
	total   prometheus.Counter
	latency prometheus.Observer
}

func (k seriesKey) labels() []string {
	return []string{k.direction, k.authority, k.cluster, boolLabel(k.tls), k.client, k.server}
}

func (m *Metrics) newSeries(k seriesKey) *httpSeries {
	return &httpSeries{requests: m.requests.WithLabelValues(k.labels()...)}
}

func (m *Metrics) newRespSeries(k seriesKey, r respKey) *respSeries {
	class := "success"
	if r.failure {
		class = "failure"
	}
	lv := append(k.labels(), strconv.Itoa(r.code), class)
	return &respSeries{total: m.responses.WithLabelValues(lv...), latency: m.latency.WithLabelValues(lv...)}
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
