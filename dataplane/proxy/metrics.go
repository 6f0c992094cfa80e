package proxy

import (
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Metrics are the proxy's golden metrics, labelled as Linkerd's: direction, authority, target
// cluster, tls, client_id and server_id.
//
// They are kept in a VictoriaMetrics/metrics Set, which writes the Prometheus text format, rather than
// in client_golang: client_golang links its protobuf data model, expfmt and procfs, and an idle
// sidecar's memory follows what its binary links (cmd/weft-proxy/memory.go) — measured, client_golang
// cost weft-proxy ~1 MB of idle RSS (bench/proxy, same run), a twelfth of the sidecar. weft-control keeps
// client_golang. A series is a metric name with its labels written out (`request_total{direction="…",…}`),
// created once per label set and then cached, so the request path neither formats labels nor takes the
// set's lock once a series exists.
type Metrics struct {
	set    *metrics.Set
	series sync.Map // seriesKey → *httpSeries
	tcp    sync.Map // tcpLabelValues → *tcpSeries
}

// latencyBuckets are response_latency_ms's bucket bounds (Linkerd's).
var latencyBuckets = []float64{1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000}

// NewMetrics keeps the proxy's metrics in set (a new one when nil). It turns on the library's
// # HELP/# TYPE lines, a setting of the whole process (the proxy is the library's only user), so that a
// scrape sees counters and histograms rather than untyped series.
func NewMetrics(set *metrics.Set) *Metrics {
	metrics.ExposeMetadata(true)
	if set == nil {
		set = metrics.NewSet()
	}
	return &Metrics{set: set}
}

// WritePrometheus writes the proxy's metrics in the Prometheus text format.
func (m *Metrics) WritePrometheus(w io.Writer) { m.set.WritePrometheus(w) }

// seriesName writes a metric name with its labels (label names and values alternate in kv), sorted
// by name as client_golang writes them, the values escaped as the Prometheus text format wants
// (backslash, double quote and line feed) and made valid UTF-8.
func seriesName(name string, kv ...string) string {
	order := make([]int, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		order = append(order, i)
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
	failure := code >= 500
	if !failure {
		if g := grpcStatus(h); g != "" && g != "0" {
			failure = true
		}
	}
	rsr := m.respSeriesOf(hs, key, respKey{code, failure})
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
}

type httpSeries struct {
	requests  *metrics.Counter
	responses sync.Map // respKey → *respSeries
}

type respSeries struct {
	total   *metrics.Counter
	latency *metrics.PrometheusHistogram
}

// labels are a series' label names and values in the order of the Prometheus series name.
func (k seriesKey) labels() []string {
	return []string{"direction", k.direction, "authority", k.authority, "target_cluster", k.cluster,
		"tls", boolLabel(k.tls), "client_id", k.client, "server_id", k.server}
}

func (m *Metrics) newSeries(k seriesKey) *httpSeries {
	return &httpSeries{requests: m.set.GetOrCreateCounter(seriesName("request_total", k.labels()...))}
}

func (m *Metrics) newRespSeries(k seriesKey, r respKey) *respSeries {
	class := "success"
	if r.failure {
		class = "failure"
	}
	lv := append(k.labels(), "status_code", strconv.Itoa(r.code), "classification", class)
	return &respSeries{
		total:   m.set.GetOrCreateCounter(seriesName("response_total", lv...)),
		latency: m.set.GetOrCreatePrometheusHistogramExt(seriesName("response_latency_ms", lv...), latencyBuckets),
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
}

func (m *Metrics) tcpLabels(info *connInfo, cluster, authority string, tls bool, ids [2]string) tcpLabelValues {
	return tcpLabelValues{info.direction, authority, cluster, boolLabel(tls), ids[0], ids[1]}
}

func (m *Metrics) tcpSeries(l tcpLabelValues) *tcpSeries {
	if v, ok := m.tcp.Load(l); ok {
		return v.(*tcpSeries)
	}
	kv := []string{"direction", l[0], "authority", l[1], "target_cluster", l[2], "tls", l[3], "client_id", l[4], "server_id", l[5]}
	s := &tcpSeries{
		opens:  m.set.GetOrCreateCounter(seriesName("tcp_open_total", kv...)),
		closes: m.set.GetOrCreateCounter(seriesName("tcp_close_total", kv...)),
		read:   m.set.GetOrCreateCounter(seriesName("tcp_read_bytes_total", kv...)),
		write:  m.set.GetOrCreateCounter(seriesName("tcp_write_bytes_total", kv...)),
	}
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
