package proxy

import (
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Metrics are the proxy's golden metrics, named and labelled as Linkerd's: request_total,
// response_total (status_code, grpc_status, classification), response_latency_ms and the tcp_*
// counters, each with direction, authority, target_cluster, dst_namespace and dst_service (from an
// outbound cluster's name), tls, client_id and server_id, and the proxy's workload: namespace, pod and
// deployment. Series of clusters that the configuration no longer has are dropped (retain).
//
// They are kept in a VictoriaMetrics/metrics Set, which writes the Prometheus text format, rather than
// in client_golang: client_golang links its protobuf data model, expfmt and procfs, and an idle
// sidecar's memory follows what its binary links (cmd/weft-proxy/memory.go) — measured, client_golang
// cost weft-proxy ~1 MB of idle RSS (bench/proxy, same run), a twelfth of the sidecar. weft-control keeps
// client_golang. A series is a metric name with its labels written out (`request_total{direction="…",…}`),
// created once per label set and then cached, so the request path neither formats labels nor takes the
// set's lock once a series exists.
type Metrics struct {
	set *metrics.Set
	// workload are the label pairs namespace, pod and deployment of every series (this proxy's pod).
	workload []string
	series   sync.Map // seriesKey → *httpSeries
	tcp      sync.Map // tcpLabelValues → *tcpSeries
	// retainMu serializes retain (dropping the series of removed clusters).
	retainMu sync.Mutex
}

// latencyBuckets are response_latency_ms's bucket bounds (Linkerd's).
var latencyBuckets = []float64{1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000}

// NewMetrics keeps the proxy's metrics in set (a new one when nil). It turns on the library's
// # HELP/# TYPE lines, a setting of the whole process (the proxy is the library's only user), so that a
// scrape sees counters and histograms rather than untyped series.
// Every series carries w's labels namespace, pod and deployment.
func NewMetrics(set *metrics.Set, w Workload) *Metrics {
	metrics.ExposeMetadata(true)
	if set == nil {
		set = metrics.NewSet()
	}
	return &Metrics{set: set, workload: w.labels()}
}

// WritePrometheus writes the proxy's metrics in the Prometheus text format, with HELP text.
func (m *Metrics) WritePrometheus(w io.Writer) { WithHelp(w, m.set.WritePrometheus) }

// seriesName writes a metric name with its labels (label names and values alternate in kv), sorted
// by name as client_golang writes them, the values escaped as the Prometheus text format wants
// (backslash, double quote and line feed) and made valid UTF-8. A label with an empty value is left
// out: to Prometheus it is the same series, and every scrape is shorter (a histogram repeats its
// labels on each of its 27 lines).
func seriesName(name string, kv ...string) string {
	order := make([]int, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			order = append(order, i)
		}
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(kv[a], kv[b]) })
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for n, i := range order {
		if n > 0 {
			b.WriteByte(',')
		}
		b.WriteString(kv[i])
		b.WriteString(`="`)
		v := strings.ToValidUTF8(kv[i+1], "\uFFFD") // a scrape with invalid UTF-8 fails whole
		for j := 0; j < len(v); j++ {
			switch c := v[j]; c {
			case '\\':
				b.WriteString(`\\`)
			case '"':
				b.WriteString(`\"`)
			case '\n':
				b.WriteString(`\n`)
			default:
				b.WriteByte(c)
			}
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

func (m *Metrics) observeHandshake(direction string, resumed bool) {
	m.set.GetOrCreateCounter(seriesName("tls_handshake_total", "direction", direction, "resumed", boolLabel(resumed))).Inc()
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
	g := grpcCode(grpcStatus(h))
	failure := code >= 500 || g > 0
	rsr := m.respSeriesOf(hs, key, respKey{code, failure, g})
	rsr.total.Inc()
	rsr.latency.Update(float64(time.Since(start).Microseconds()) / 1000)
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
	grpc    int8 // the grpc-status, -1 when the response has none
}

type httpSeries struct {
	requests  *metrics.Counter
	name      string      // request_total's series name, for retain
	dropped   atomic.Bool // set by retain: a connection's cached series (h1lean) is looked up again
	responses sync.Map    // respKey → *respSeries
}

type respSeries struct {
	total   *metrics.Counter
	latency *metrics.PrometheusHistogram
	names   [2]string // for retain
}

// labels are a series' label names and values: its own, the destination's (from the cluster name)
// and this proxy's workload.
func (m *Metrics) labels(k seriesKey) []string {
	dstNS, dstSvc := clusterService(k.cluster)
	l := []string{"direction", k.direction, "authority", k.authority, "target_cluster", k.cluster,
		"dst_namespace", dstNS, "dst_service", dstSvc,
		"tls", boolLabel(k.tls), "client_id", k.client, "server_id", k.server}
	return append(l, m.workload...)
}

func (m *Metrics) newSeries(k seriesKey) *httpSeries {
	name := seriesName("request_total", m.labels(k)...)
	return &httpSeries{requests: m.set.GetOrCreateCounter(name), name: name}
}

func (m *Metrics) newRespSeries(k seriesKey, r respKey) *respSeries {
	class := "success"
	if r.failure {
		class = "failure"
	}
	grpc := ""
	if r.grpc >= 0 {
		grpc = strconv.Itoa(int(r.grpc))
	}
	lv := append(m.labels(k), "status_code", strconv.Itoa(r.code), "classification", class, "grpc_status", grpc)
	total, latency := seriesName("response_total", lv...), seriesName("response_latency_ms", lv...)
	return &respSeries{
		total:   m.set.GetOrCreateCounter(total),
		latency: m.set.GetOrCreatePrometheusHistogramExt(latency, latencyBuckets),
		names:   [2]string{total, latency},
	}
}

func grpcStatus(h http.Header) string {
	if g := h.Get("Grpc-Status"); g != "" {
		return g
	}
	return h.Get(http.TrailerPrefix + "Grpc-Status")
}

type tcpLabelValues [6]string

// tcpSeries are the TCP counters of one label set.
type tcpSeries struct {
	opens, closes, read, write *metrics.Counter
	names                      [4]string // for retain
}

func (m *Metrics) tcpLabels(info *connInfo, cluster, authority string, tls bool, ids [2]string) tcpLabelValues {
	return tcpLabelValues{info.direction, authority, cluster, boolLabel(tls), ids[0], ids[1]}
}

func (m *Metrics) tcpSeries(l tcpLabelValues) *tcpSeries {
	if v, ok := m.tcp.Load(l); ok {
		return v.(*tcpSeries)
	}
	dstNS, dstSvc := clusterService(l[2])
	kv := append([]string{"direction", l[0], "authority", l[1], "target_cluster", l[2], "dst_namespace", dstNS, "dst_service", dstSvc,
		"tls", l[3], "client_id", l[4], "server_id", l[5]}, m.workload...)
	s := &tcpSeries{names: [4]string{seriesName("tcp_open_total", kv...), seriesName("tcp_close_total", kv...),
		seriesName("tcp_read_bytes_total", kv...), seriesName("tcp_write_bytes_total", kv...)}}
	s.opens = m.set.GetOrCreateCounter(s.names[0])
	s.closes = m.set.GetOrCreateCounter(s.names[1])
	s.read = m.set.GetOrCreateCounter(s.names[2])
	s.write = m.set.GetOrCreateCounter(s.names[3])
	v, _ := m.tcp.LoadOrStore(l, s)
	return v.(*tcpSeries)
}

func (m *Metrics) tcpOpen(l tcpLabelValues) { m.tcpSeries(l).opens.Inc() }

func (m *Metrics) tcpClose(l tcpLabelValues, read, written int64) {
	s := m.tcpSeries(l)
	s.closes.Inc()
	s.read.AddInt64(read)
	s.write.AddInt64(written)
}
