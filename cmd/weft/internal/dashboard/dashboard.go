// Package dashboard is `weft dashboard`'s web server: one page with embedded assets (no CDN) that shows
// namespaces → workloads with their golden metrics, charts of their recent history (uPlot, vendored
// from npm in assets/vendor), the topology of who talks to which Service, each workload's mTLS share,
// and a live tap.
//
// The numbers are viz.Stat's and viz.Edges's, the code `weft stat` and `weft edges` run, asked the same
// StatQuery, so that the page and `weft stat -o json` agree for the same window and time. The tap is
// weft-control's Tap API relayed to the browser as server-sent events.
package dashboard

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/weftmesh/weft/cmd/weft/internal/viz"
	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

//go:embed assets
var assets embed.FS

// Tapper opens a tap (weft-control's Tap.Observe) and calls each for every message until ctx ends,
// the tap ends, or each fails.
type Tapper interface {
	Tap(ctx context.Context, req *tapv1.ObserveRequest, each func(*tapv1.ObserveResponse) error) error
}

// Options configure Handler.
type Options struct {
	// Prom is the Prometheus that the proxies' metrics are in; PromURL names it on the page.
	Prom    viz.Querier
	PromURL string
	// Pods, when set, counts each workload's pods and meshed pods (from the cluster), as `weft stat` does.
	Pods viz.PodCounter
	// Tap relays taps; nil: the tap view says tap is not available.
	Tap Tapper
	// DefaultNamespace is shown first ("": the first namespace with traffic).
	DefaultNamespace string
	Log              *slog.Logger
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Handler serves the page (/), its assets (/assets/), and the API the page reads:
//
//	GET /api/summary?namespace=NS&window=1m[&at=UNIX_MS]  namespaces, NS's deployments, mTLS shares, edges
//	GET /api/tap?namespace=NS&kind=deployment&name=N[&path=/x][&method=GET]  server-sent events
func Handler(o Options) http.Handler {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &server{o: o}
	sub, _ := fs.Sub(assets, "assets")
	mux := http.NewServeMux()
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", http.FileServerFS(sub)))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'")
		http.ServeFileFS(w, r, sub, "index.html")
	})
	mux.HandleFunc("GET /api/summary", s.summary)
	mux.HandleFunc("GET /api/tap", s.tap)
	return mux
}

type server struct{ o Options }

// Summary is /api/summary's answer.
type Summary struct {
	// At is the evaluation time of every query in it.
	At time.Time `json:"at"`
	// Window is the range of rates and quantiles, as Prometheus writes it (1m).
	Window     string `json:"window"`
	Prometheus string `json:"prometheus"`
	// Namespace is the one whose workloads are listed.
	Namespace string `json:"namespace"`
	// Namespaces are `weft stat ns`'s rows, Workloads `weft stat deploy -n Namespace`'s.
	Namespaces []viz.StatRow `json:"namespaces"`
	Workloads  []viz.StatRow `json:"workloads"`
	// MTLS is each workload's share of requests (else connections), in and out, over mutual TLS in
	// the window; absent without traffic.
	MTLS  map[string]float64 `json:"mtls"`
	Edges []viz.Edge         `json:"edges"`
}

// SummaryQuery is what one /api/summary computes.
type SummaryQuery struct {
	Namespace string
	Window    time.Duration
	At        time.Time
}

// StatQuery is the query `weft stat deploy -n ns -o json` makes for the same window and time: the
// dashboard's workload rows are its answer.
func (o Options) StatQuery(kind viz.Kind, ns string, window time.Duration, at time.Time) viz.StatQuery {
	return viz.StatQuery{Kind: kind, Namespace: ns, Window: window, At: at, Wide: true, Pods: o.Pods}
}

// Summarize runs the queries of one summary.
func (o Options) Summarize(ctx context.Context, q SummaryQuery) (*Summary, error) {
	s := &Summary{At: q.At, Window: model.Duration(q.Window).String(), Prometheus: o.PromURL, MTLS: map[string]float64{}}
	targets, _, err := viz.ScrapedProxies(ctx, o.Prom, q.At)
	if err != nil {
		return nil, err
	}
	if targets == 0 {
		return nil, fmt.Errorf("the Prometheus at %s scrapes no weft-proxy (no job %q): use the Prometheus of `weft demo --prometheus` or `weft install --viz`, or add that job to yours", o.PromURL, viz.ProxyJob)
	}
	if s.Namespaces, err = viz.Stat(ctx, o.Prom, o.StatQuery(viz.Namespace, "", q.Window, q.At)); err != nil {
		return nil, err
	}
	s.Namespace = q.Namespace
	if s.Namespace == "" {
		s.Namespace = o.DefaultNamespace
	}
	if s.Namespace == "" {
		for _, r := range s.Namespaces {
			if r.HasTraffic() {
				s.Namespace = r.Name
				break
			}
		}
	}
	if s.Namespace == "" && len(s.Namespaces) > 0 {
		s.Namespace = s.Namespaces[0].Name
	}
	if s.Namespace != "" {
		if s.Workloads, err = viz.Stat(ctx, o.Prom, o.StatQuery(viz.Deployment, s.Namespace, q.Window, q.At)); err != nil {
			return nil, err
		}
		if s.MTLS, err = mtlsShares(ctx, o.Prom, s.Namespace, q.Window, q.At); err != nil {
			return nil, err
		}
	}
	if s.Edges, err = viz.Edges(ctx, o.Prom, viz.EdgesQuery{Kind: viz.Deployment, Window: q.Window, At: q.At}); err != nil {
		return nil, err
	}
	if s.Namespaces == nil {
		s.Namespaces = []viz.StatRow{}
	}
	if s.Workloads == nil {
		s.Workloads = []viz.StatRow{}
	}
	if s.Edges == nil {
		s.Edges = []viz.Edge{}
	}
	return s, nil
}

// mtlsShares is, per deployment of ns, the share of the responses its proxy served and received
// (inbound and outbound: a client-only workload counts too) that went over mutual TLS in the window;
// for a workload with no HTTP, the share of its TCP connections.
func mtlsShares(ctx context.Context, pq viz.Querier, ns string, window time.Duration, at time.Time) (map[string]float64, error) {
	out := map[string]float64{}
	sel := `namespace=` + strconv.Quote(ns)
	w := model.Duration(window).String()
	for _, metric := range []string{"tcp_open_total", "response_total"} { // HTTP's share wins
		q := fmt.Sprintf(`sum by (deployment) (increase(%s{%s,tls="true"}[%s])) / sum by (deployment) (increase(%s{%s}[%s])) > -1`,
			metric, sel, w, metric, sel, w)
		v, _, _, err := pq.Query(ctx, q, at)
		if err != nil {
			return nil, fmt.Errorf("%w: query failed: %v", viz.ErrPrometheus, err)
		}
		vec, _ := v.(model.Vector)
		for _, s := range vec {
			if name := string(s.Metric["deployment"]); name != "" {
				out[name] = float64(s.Value)
			}
		}
	}
	return out, nil
}

func (s *server) summary(w http.ResponseWriter, r *http.Request) {
	q := SummaryQuery{Namespace: r.URL.Query().Get("namespace"), At: s.o.Now()}
	window := r.URL.Query().Get("window")
	if window == "" {
		window = "1m"
	}
	d, err := model.ParseDuration(window)
	if err != nil || time.Duration(d) < 15*time.Second {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("window %q: want a duration of at least 15s such as 1m (a rate needs two scrapes)", window)})
		return
	}
	q.Window = time.Duration(d)
	if at := r.URL.Query().Get("at"); at != "" {
		ms, err := strconv.ParseInt(at, 10, 64)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("at %q: want Unix milliseconds", at)})
			return
		}
		q.At = time.UnixMilli(ms)
	}
	q.At = q.At.Truncate(time.Millisecond)
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	sum, err := s.o.Summarize(ctx, q)
	if err != nil {
		msg := err.Error()
		if errors.Is(err, viz.ErrPrometheus) {
			msg = fmt.Sprintf("Prometheus at %s: %s; start one with `weft demo --prometheus` or `weft install --viz`, or point --prometheus-url at yours", s.o.PromURL, strings.TrimPrefix(msg, "prometheus: "))
		}
		writeJSON(w, http.StatusBadGateway, map[string]string{"error": msg})
		return
	}
	writeJSON(w, http.StatusOK, sum)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// tap relays one tap as server-sent events: "tap" (a TapEvent in protojson), "notice" (a relay's note
// or a count of dropped events), and a last "end" with the reason. Errors are events too, so the page's
// EventSource never meets a failed response.
func (s *server) tap(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	rc := http.NewResponseController(w)
	send := func(event, data string) error {
		var b strings.Builder
		b.WriteString("event: " + event + "\n")
		for _, line := range strings.Split(data, "\n") {
			b.WriteString("data: " + line + "\n")
		}
		b.WriteString("\n")
		if _, err := w.Write([]byte(b.String())); err != nil {
			return err
		}
		return rc.Flush()
	}
	req, err := tapRequest(r)
	if err != nil {
		_ = send("end", err.Error())
		return
	}
	if s.o.Tap == nil {
		_ = send("end", "tap is not available: weft dashboard found no weft-control to relay it (--control-addr)")
		return
	}
	_ = send("notice", "tapping "+req.GetTarget().GetNamespace()+"/"+req.GetTarget().GetName()+"…")
	marshal := protojson.MarshalOptions{}
	err = s.o.Tap.Tap(r.Context(), req, func(m *tapv1.ObserveResponse) error {
		if ev := m.GetEvent(); ev != nil {
			b, err := marshal.Marshal(ev)
			if err != nil {
				return err
			}
			if err := send("tap", string(b)); err != nil {
				return err
			}
		}
		if m.GetDropped() > 0 {
			if err := send("notice", fmt.Sprintf("%d requests not shown (over the rate limit)", m.GetDropped())); err != nil {
				return err
			}
		}
		if m.GetNotice() != "" {
			return send("notice", m.GetNotice())
		}
		return nil
	})
	if r.Context().Err() != nil {
		return
	}
	reason := "the tap ended"
	if err != nil {
		reason = "tap: " + err.Error()
	}
	_ = send("end", reason)
}

// tapRequest reads /api/tap's parameters.
func tapRequest(r *http.Request) (*tapv1.ObserveRequest, error) {
	q := r.URL.Query()
	ns := q.Get("namespace")
	if ns == "" {
		return nil, errors.New("namespace: missing (the namespace to tap)")
	}
	t := &tapv1.Target{Namespace: ns, Name: q.Get("name")}
	switch q.Get("kind") {
	case "", "deployment", "deploy":
		t.Kind = tapv1.Target_KIND_DEPLOYMENT
	case "pod", "po":
		t.Kind = tapv1.Target_KIND_POD
	case "namespace", "ns":
		t.Kind, t.Name = tapv1.Target_KIND_NAMESPACE, ""
	default:
		return nil, fmt.Errorf("kind %q: want deployment, pod or namespace", q.Get("kind"))
	}
	if t.Kind != tapv1.Target_KIND_NAMESPACE && t.Name == "" {
		return nil, errors.New("name: missing (the workload to tap)")
	}
	m := &tapv1.Match{PathPrefix: q.Get("path"), Method: q.Get("method")}
	if m.PathPrefix != "" && !strings.HasPrefix(m.PathPrefix, "/") {
		return nil, fmt.Errorf("path %q: want a path prefix that starts with /", m.PathPrefix)
	}
	return &tapv1.ObserveRequest{Target: t, Match: m}, nil
}
