package demo

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Counts is what one proxy's /metrics says about the requests its pod received (direction inbound):
// the sums over every series, cumulative since the proxy started.
type Counts struct {
	Requests, Success, TLS float64
	// Buckets are the cumulative counts of response_latency_ms by upper bound (ms), sorted.
	Buckets []Bucket
}

// Bucket is one histogram bucket.
type Bucket struct {
	UpperMs float64
	Count   float64
}

// ParseCounts reads Prometheus text and sums the inbound series of response_total and
// response_latency_ms.
func ParseCounts(r io.Reader) (Counts, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return Counts{}, fmt.Errorf("parsing metrics: %w", err)
	}
	var c Counts
	if f := fams["response_total"]; f != nil {
		for _, m := range f.GetMetric() {
			l := labels(m)
			if l["direction"] != "inbound" {
				continue
			}
			v := m.GetCounter().GetValue()
			c.Requests += v
			if l["classification"] == "success" {
				c.Success += v
			}
			if l["tls"] == "true" {
				c.TLS += v
			}
		}
	}
	byBound := map[float64]float64{}
	if f := fams["response_latency_ms"]; f != nil {
		for _, m := range f.GetMetric() {
			if labels(m)["direction"] != "inbound" {
				continue
			}
			h := m.GetHistogram()
			for _, b := range h.GetBucket() {
				if !math.IsInf(b.GetUpperBound(), 1) { // the text format may list +Inf; SampleCount is it
					byBound[b.GetUpperBound()] += float64(b.GetCumulativeCount())
				}
			}
			byBound[math.Inf(1)] += float64(h.GetSampleCount())
		}
	}
	for ub, n := range byBound {
		c.Buckets = append(c.Buckets, Bucket{ub, n})
	}
	slices.SortFunc(c.Buckets, func(a, b Bucket) int { return cmpFloat(a.UpperMs, b.UpperMs) })
	return c, nil
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, lp := range m.GetLabel() {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}

// Sub returns c - prev (the requests between two scrapes); a proxy that restarted counts from zero.
func (c Counts) Sub(prev Counts) Counts {
	if c.Requests < prev.Requests {
		return c
	}
	d := Counts{Requests: c.Requests - prev.Requests, Success: c.Success - prev.Success, TLS: c.TLS - prev.TLS}
	old := map[float64]float64{}
	for _, b := range prev.Buckets {
		old[b.UpperMs] = b.Count
	}
	for _, b := range c.Buckets {
		d.Buckets = append(d.Buckets, Bucket{b.UpperMs, b.Count - old[b.UpperMs]})
	}
	return d
}

// Quantile estimates the q-quantile of latency (ms) from the buckets as Prometheus'
// histogram_quantile does: linear interpolation inside the bucket. NaN without samples.
func (c Counts) Quantile(q float64) float64 {
	if len(c.Buckets) == 0 {
		return math.NaN()
	}
	total := c.Buckets[len(c.Buckets)-1].Count
	if total <= 0 {
		return math.NaN()
	}
	rank := q * total
	lower, below := 0.0, 0.0
	for _, b := range c.Buckets {
		if b.Count >= rank {
			if math.IsInf(b.UpperMs, 1) {
				return lower // beyond the last finite bound: report that bound
			}
			if b.Count == below {
				return b.UpperMs
			}
			return lower + (b.UpperMs-lower)*(rank-below)/(b.Count-below)
		}
		lower, below = b.UpperMs, b.Count
	}
	return lower
}

// Row is one line of the table.
type Row struct {
	Service  string
	Requests float64
	RPS      float64
	Success  float64 // fraction; NaN without requests
	P50, P99 float64 // ms; NaN without requests
	TLSShare float64 // fraction of requests that came over mTLS; NaN without requests
}

// RowFor turns the counts of a window of d into a row.
func RowFor(service string, c Counts, d time.Duration) Row {
	r := Row{Service: service, Requests: c.Requests, Success: math.NaN(), TLSShare: math.NaN(), P50: math.NaN(), P99: math.NaN()}
	if d > 0 {
		r.RPS = c.Requests / d.Seconds()
	}
	if c.Requests > 0 {
		r.Success = c.Success / c.Requests
		r.TLSShare = c.TLS / c.Requests
		r.P50, r.P99 = c.Quantile(0.5), c.Quantile(0.99)
	}
	return r
}

// Header is the table's first line.
const Header = "SERVICE    REQUESTS      RPS   SUCCESS   LATENCY_P50   LATENCY_P99   MTLS"

// FormatTable writes a header and one line per row.
func FormatTable(w io.Writer, rows []Row) {
	fmt.Fprintln(w, Header)
	for _, r := range rows {
		fmt.Fprintf(w, "%-9s %9.0f %8.1f %9s %13s %13s %6s\n", r.Service, r.Requests, r.RPS, pct(r.Success), ms(r.P50), ms(r.P99), pct(r.TLSShare))
	}
}

func pct(f float64) string {
	if math.IsNaN(f) {
		return "-"
	}
	if f == 1 {
		return "100%"
	}
	return fmt.Sprintf("%.2f%%", 100*f)
}

func ms(f float64) string {
	if math.IsNaN(f) {
		return "-"
	}
	if f < 10 {
		return fmt.Sprintf("%.1fms", f)
	}
	return fmt.Sprintf("%.0fms", f)
}

// ParseTable reads the rows of the last table in text written by FormatTable (the inverse, for tests
// and scripts): service → fields as printed.
func ParseTable(text string) map[string][]string {
	lines := strings.Split(text, "\n")
	start := -1
	for i, l := range lines {
		if strings.HasPrefix(l, Header) {
			start = i
		}
	}
	out := map[string][]string{}
	if start < 0 {
		return out
	}
	for _, l := range lines[start+1:] {
		f := strings.Fields(l)
		if len(f) != 7 {
			break
		}
		out[f[0]] = f
	}
	return out
}

// scrape reads one proxy's /metrics.
func scrape(ctx context.Context, client *http.Client, adminAddr string) (Counts, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+adminAddr+"/metrics", nil)
	if err != nil {
		return Counts{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return Counts{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Counts{}, fmt.Errorf("GET %s/metrics: %s", adminAddr, resp.Status)
	}
	return ParseCounts(resp.Body)
}
