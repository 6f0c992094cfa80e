package proxy

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/weftmesh/weft/dataplane/config"
)

// BenchmarkObserveHTTP is the metrics' cost per request once the series exist (the steady state): the
// labels are written when a series is made, never per request.
func BenchmarkObserveHTTP(b *testing.B) {
	m := NewMetrics(nil, Workload{Namespace: "shop", Pod: "web-7d9c5b8f6d-x2k4q"})
	rs := &reqState{info: &connInfo{direction: "outbound"}, authority: "books.shop.svc.cluster.local:8080",
		cluster: &clusterRT{cfg: &config.Cluster{Name: "outbound|8080||books.shop.svc.cluster.local"}}}
	p, h, start := &Proxy{}, http.Header{"Content-Type": {"text/plain"}}, time.Now()
	b.ReportAllocs()
	for b.Loop() {
		m.observeHTTP(p, rs, 200, h, start)
	}
}

// BenchmarkWithHelp is a scrape's cost of the HELP text: none allocated once each family's line is made.
func BenchmarkWithHelp(b *testing.B) {
	m := NewMetrics(nil, Workload{Namespace: "shop", Pod: "web-7d9c5b8f6d-x2k4q"})
	rs := &reqState{info: &connInfo{direction: "outbound"}, authority: "books.shop.svc.cluster.local:8080",
		cluster: &clusterRT{cfg: &config.Cluster{Name: "outbound|8080||books.shop.svc.cluster.local"}}}
	m.observeHTTP(&Proxy{}, rs, 200, http.Header{}, time.Now())
	var buf bytes.Buffer
	m.WritePrometheus(&buf)
	write := func(w io.Writer) { _, _ = w.Write(buf.Bytes()) }
	b.ReportAllocs()
	for b.Loop() {
		WithHelp(io.Discard, write)
	}
}
