package proxy

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/weftmesh/weft/dataplane/config"
)

// The metrics parse as Prometheus parses a scrape, with label values that need escaping (an
// authority is the client's Host header) coming back as they went in, and the latency histogram with
// its buckets.
func TestMetricsExposition(t *testing.T) {
	m := NewMetrics(nil, Workload{})
	odd := "we\"ird\\host\nname:80"
	l := tcpLabelValues{"outbound", odd, "outbound|80||web.shop.svc.cluster.local", "true", "spiffe://cluster.local/ns/shop/sa/web", ""}
	m.tcpOpen(l)
	m.tcpClose(l, 10, 20)
	m.tcpClose(l, 1, 2)
	bad := l
	bad[1] = "bad\xffutf8"
	m.tcpOpen(bad)
	m.observeHandshake("inbound", true)
	rs := &reqState{info: &connInfo{direction: "inbound"}, authority: odd, cluster: &clusterRT{cfg: &config.Cluster{Name: "inbound|8080||"}}}
	m.observeHTTP(&Proxy{}, rs, 503, http.Header{}, time.Now())
	m.observeHTTP(&Proxy{}, rs, 200, http.Header{"Grpc-Status": {"14"}}, time.Now())

	var b strings.Builder
	m.WritePrometheus(&b)
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("the exposition does not parse: %v\n%s", err, b.String())
	}
	value := func(name string, labels map[string]string) (sum float64, n int) {
		t.Helper()
		mf := mfs[name]
		if mf == nil {
			t.Fatalf("no %s in\n%s", name, b.String())
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			n++
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
				if got := len(m.GetHistogram().GetBucket()); got != len(latencyBuckets)+1 { // and +Inf
					t.Errorf("%s has %d buckets, want %d", name, got, len(latencyBuckets)+1)
				}
			default:
				t.Errorf("%s is %v, want a counter or a histogram", name, mf.GetType())
			}
		}
		return sum, n
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"tcp_open_total", map[string]string{"authority": odd, "tls": "true", "client_id": "spiffe://cluster.local/ns/shop/sa/web", "server_id": ""}, 1},
		{"tcp_close_total", map[string]string{"authority": odd}, 2},
		{"tcp_open_total", map[string]string{"authority": "bad\uFFFDutf8"}, 1},
		{"tcp_read_bytes_total", map[string]string{"authority": odd}, 11},
		{"tcp_write_bytes_total", map[string]string{"authority": odd}, 22},
		{"tls_handshake_total", map[string]string{"direction": "inbound", "resumed": "true"}, 1},
		{"request_total", map[string]string{"authority": odd, "target_cluster": "inbound|8080||", "direction": "inbound"}, 2},
		{"response_total", map[string]string{"status_code": "503", "classification": "failure"}, 1},
		{"response_total", map[string]string{"status_code": "200", "classification": "failure"}, 1}, // grpc-status 14
		{"response_latency_ms", map[string]string{"authority": odd}, 2},
	} {
		if got, n := value(c.name, c.labels); got != c.want || n == 0 {
			t.Errorf("%s%v = %v over %d series, want %v", c.name, c.labels, got, n, c.want)
		}
	}
}
