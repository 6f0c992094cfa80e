package demo

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Two inbound series (mTLS success, plaintext failure) and an outbound one that must not count.
const sampleMetrics = `# HELP response_total HTTP responses sent, by status and classification.
# TYPE response_total counter
response_total{authority="books.demo.svc.cluster.local:8080",classification="success",client_id="spiffe://cluster.local/ns/demo/sa/web",direction="inbound",server_id="spiffe://cluster.local/ns/demo/sa/books",status_code="200",target_cluster="inbound|8080||",tls="true"} 90
response_total{authority="books.demo.svc.cluster.local:8080",classification="failure",client_id="",direction="inbound",server_id="",status_code="500",target_cluster="inbound|8080||",tls="false"} 10
response_total{authority="x.demo.svc.cluster.local:80",classification="success",client_id="",direction="outbound",server_id="",status_code="200",target_cluster="outbound|80||x.demo.svc.cluster.local",tls="true"} 1000
# HELP response_latency_ms Time to the end of the response, in milliseconds.
# TYPE response_latency_ms histogram
response_latency_ms_bucket{classification="success",direction="inbound",status_code="200",tls="true",le="1"} 40
response_latency_ms_bucket{classification="success",direction="inbound",status_code="200",tls="true",le="10"} 90
response_latency_ms_bucket{classification="success",direction="inbound",status_code="200",tls="true",le="+Inf"} 90
response_latency_ms_sum{classification="success",direction="inbound",status_code="200",tls="true"} 300
response_latency_ms_count{classification="success",direction="inbound",status_code="200",tls="true"} 90
response_latency_ms_bucket{classification="failure",direction="inbound",status_code="500",tls="false",le="1"} 0
response_latency_ms_bucket{classification="failure",direction="inbound",status_code="500",tls="false",le="10"} 9
response_latency_ms_bucket{classification="failure",direction="inbound",status_code="500",tls="false",le="+Inf"} 10
response_latency_ms_sum{classification="failure",direction="inbound",status_code="500",tls="false"} 100
response_latency_ms_count{classification="failure",direction="inbound",status_code="500",tls="false"} 10
response_latency_ms_bucket{classification="success",direction="outbound",status_code="200",tls="true",le="1"} 1000
response_latency_ms_bucket{classification="success",direction="outbound",status_code="200",tls="true",le="10"} 1000
response_latency_ms_bucket{classification="success",direction="outbound",status_code="200",tls="true",le="+Inf"} 1000
response_latency_ms_sum{classification="success",direction="outbound",status_code="200",tls="true"} 300
response_latency_ms_count{classification="success",direction="outbound",status_code="200",tls="true"} 1000
`

func TestParseCounts(t *testing.T) {
	c, err := ParseCounts(strings.NewReader(sampleMetrics))
	if err != nil {
		t.Fatal(err)
	}
	want := Counts{Requests: 100, Success: 90, TLS: 90, Buckets: []Bucket{{1, 40}, {10, 99}, {math.Inf(1), 100}}}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	// p50: rank 50 lies in (1, 10] holding 59 → 1 + 9*10/59.
	if got, want := c.Quantile(0.5), 1+9*10.0/59; math.Abs(got-want) > 1e-9 {
		t.Errorf("p50 = %v, want %v", got, want)
	}
	// p99: rank 99 is the top of the 10 ms bucket.
	if got := c.Quantile(0.99); got != 10 {
		t.Errorf("p99 = %v, want 10", got)
	}
	// p999 lies beyond the last finite bound: reported as that bound.
	if got := c.Quantile(0.999); got != 10 {
		t.Errorf("p99.9 = %v, want 10", got)
	}
	if got := (Counts{}).Quantile(0.5); !math.IsNaN(got) {
		t.Errorf("quantile without samples = %v, want NaN", got)
	}
	if _, err := ParseCounts(strings.NewReader("not metrics {")); err == nil {
		t.Error("garbage parsed without error")
	}
}

func TestSubAndRow(t *testing.T) {
	prev := Counts{Requests: 10, Success: 10, TLS: 10, Buckets: []Bucket{{1, 5}, {10, 10}, {math.Inf(1), 10}}}
	cur := Counts{Requests: 30, Success: 25, TLS: 30, Buckets: []Bucket{{1, 5}, {10, 30}, {math.Inf(1), 30}}}
	d := cur.Sub(prev)
	want := Counts{Requests: 20, Success: 15, TLS: 20, Buckets: []Bucket{{1, 0}, {10, 20}, {math.Inf(1), 20}}}
	if diff := cmp.Diff(want, d); diff != "" {
		t.Errorf("Sub (-want +got):\n%s", diff)
	}
	// A restarted proxy counts from zero: the window is what it has.
	if diff := cmp.Diff(prev, prev.Sub(cur)); diff != "" {
		t.Errorf("Sub after a restart (-want +got):\n%s", diff)
	}
	r := RowFor("books", d, 2*time.Second)
	if r.RPS != 10 || r.Success != 0.75 || r.TLSShare != 1 || r.P50 != 5.5 {
		t.Errorf("row = %+v, want 10 rps, 75%% success, 100%% mTLS, p50 5.5 ms", r)
	}
}

func TestTableRoundTrip(t *testing.T) {
	rows := []Row{
		{Service: "web", Requests: 200, RPS: 20, Success: 0.9, P50: 6.8, P99: 42, TLSShare: 1},
		RowFor("books", Counts{}, time.Second),
	}
	var b bytes.Buffer
	b.WriteString("an older table\n" + Header + "\nold 1 1 1 1 1 1\n\n")
	FormatTable(&b, rows)
	got := ParseTable(b.String())
	want := map[string][]string{
		"web":   {"web", "200", "20.0", "90.00%", "6.8ms", "42ms", "100%"},
		"books": {"books", "0", "0.0", "-", "-", "-", "-"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ParseTable (-want +got):\n%s\ntext:\n%s", diff, b.String())
	}
}
