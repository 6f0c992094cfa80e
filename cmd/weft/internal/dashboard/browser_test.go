package dashboard_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/weftmesh/weft/cmd/weft/internal/dashboard"
	"github.com/weftmesh/weft/cmd/weft/internal/demo"
	"github.com/weftmesh/weft/cmd/weft/internal/viz"
	"github.com/weftmesh/weft/conformance/prebuilt"
	"github.com/weftmesh/weft/conformance/prereq"
)

// syncBuffer is the demo's log, read by the test while the demo writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// buildBinaries returns weft-control and weft-proxy of this checkout (bin/ when fresh, else built).
func buildBinaries(t *testing.T) (control, proxy string) {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", "..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	control, proxy = filepath.Join(root, "bin", "weft-control"), filepath.Join(root, "bin", "weft-proxy")
	if prebuilt.Fresh(root, control, proxy) {
		return control, proxy
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/weftmesh/weft/cmd/weft-control", "github.com/weftmesh/weft/cmd/weft-proxy")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the binaries: %v\n%s", err, out)
	}
	return filepath.Join(dir, "weft-control"), filepath.Join(dir, "weft-proxy")
}

// artifactDir is where the test keeps its screenshot: $WEFT_ARTIFACTS, else a temp dir.
func artifactDir(t *testing.T) string {
	if d := os.Getenv("WEFT_ARTIFACTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// browser starts headless Chromium and records every console error or warning, uncaught exception
// and failed browser-log entry of the page.
func browser(t *testing.T) (context.Context, func() []string) {
	t.Helper()
	bin := prereq.Binary(t, "chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.NoSandbox, // root in CI
		chromedp.WindowSize(1400, 1300),
		chromedp.Flag("disable-dev-shm-usage", true),
	)
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	var mu sync.Mutex
	var problems []string
	messages := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			switch m.Type {
			case chromedp.ConsoleError, chromedp.ConsoleWarning, chromedp.ConsoleException:
				mu.Lock()
				problems = append(problems, fmt.Sprintf("%s %s:%d %s", m.Type, m.URL, m.Line+1, m))
				mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { cancel(); acancel(); <-done })
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), problems...)
	}
}

// TestDashboardOnTheDemo runs the demo mesh with Prometheus, serves the dashboard on it, and drives
// the page in headless Chromium as a user would: the demo's deployments are listed with the numbers
// viz.Stat (the code of `weft stat deploy -n demo -o json`) gives for the page's time and window, the
// topology shows the mTLS edges, a tap of books shows its requests within seconds, and the console
// stays free of errors. The screenshot is kept in $WEFT_ARTIFACTS (else a temp dir); with
// WEFT_DASHBOARD_DOC=1 it is also written to docs/dashboard.png for the README.
func TestDashboardOnTheDemo(t *testing.T) {
	prereq.Binary(t, "prometheus")
	ctx, problems := browser(t)
	control, proxy := buildBinaries(t)

	block := byte(10 + rand.IntN(40)) // 127.10–49: apart from TestDemo (100–249) and TestStatAndEdgesOnDemo (50–99), which run at the same time
	layout := demo.NewLayout(block)
	var dlog syncBuffer
	started := make(chan struct{})
	dctx, stopDemo := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := demo.Run(dctx, demo.Options{
			Plain: true, Block: block, RPS: 20, FailRate: 0.2, Prometheus: true, ScrapeInterval: time.Second,
			ControlBin: control, ProxyBin: proxy, Out: &syncBuffer{}, Log: &dlog,
			Started: func([]int, string) { close(started) },
		})
		done <- err
	}()
	t.Cleanup(func() {
		stopDemo()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("the demo did not stop within 30 s")
		}
	})
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("the demo stopped before it was ready: %v\n%s", err, dlog.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("the demo was not ready in 60 s:\n%s", dlog.String())
	}

	promURL := "http://" + layout.PrometheusAddr()
	prom, err := viz.NewQuerier(promURL, api.Config{})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(layout.XDSAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// The page evaluates its queries 3 s in the past, so that the scrapes of that moment are all in
	// Prometheus when the test asks it the same question afterwards.
	opts := dashboard.Options{Prom: prom, PromURL: promURL, Tap: dashboard.ControlTapper{Conn: conn}, DefaultNamespace: demo.Namespace,
		Now: func() time.Time { return time.Now().Add(-3 * time.Second) }}
	srv := httptest.NewServer(dashboard.Handler(opts))
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() }) // the page's tap stream too

	// Wait until Prometheus has rates for the three deployments.
	deadline := time.Now().Add(60 * time.Second)
	for {
		rows, err := viz.Stat(context.Background(), prom, opts.StatQuery(viz.Deployment, demo.Namespace, time.Minute, time.Now().Add(-3*time.Second)))
		busy := 0
		for _, r := range rows {
			if r.RPS > 0 {
				busy++
			}
		}
		if err == nil && busy >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus has no rates for web, books and authors after 60 s: %v %+v\n%s", err, rows, dlog.String())
		}
		time.Sleep(500 * time.Millisecond)
	}

	tctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	err = chromedp.Do(tctx,
		chromedp.Navigate(srv.URL+"/?window=1m&refresh=2000"),
		chromedp.WaitVisible(chromedp.CSS(`#workloads tbody tr[data-workload="books"]`)),
	)
	if err != nil {
		t.Fatalf("loading the page: %v (console: %v)", err, problems())
	}
	attr, err := chromedp.Run(tctx, chromedp.AttributeValue(chromedp.CSS("body"), "data-at"))
	if err != nil {
		t.Fatal(err)
	}
	at := attr.Value
	values, err := chromedp.Run(tctx, chromedp.Evaluate[[]map[string]string](`[...document.querySelectorAll("#workloads tbody tr")].map(tr => {
		const o = {name: tr.dataset.workload};
		for (const td of tr.querySelectorAll("td[data-field]")) o[td.dataset.field] = td.dataset.value;
		return o;
	})`))
	if err != nil {
		t.Fatal(err)
	}
	atTime, err := time.Parse(time.RFC3339Nano, at)
	if err != nil {
		t.Fatalf("the page's data-at %q: %v", at, err)
	}
	want, err := viz.Stat(context.Background(), prom, opts.StatQuery(viz.Deployment, demo.Namespace, time.Minute, atTime))
	if err != nil {
		t.Fatal(err)
	}
	page := map[string]map[string]string{}
	for _, v := range values {
		page[v["name"]] = v
	}
	if len(page) != len(want) {
		t.Errorf("the page lists %d deployments, weft stat %d: %v vs %+v", len(page), len(want), values, want)
	}
	for _, r := range want {
		got := page[r.Name]
		if got == nil {
			t.Errorf("deployment %s is not on the page", r.Name)
			continue
		}
		for field, w := range map[string]*float64{"success": r.Success, "rps": &r.RPS, "latencyMsP50": r.LatencyMsP50,
			"latencyMsP95": r.LatencyMsP95, "latencyMsP99": r.LatencyMsP99, "tcpConnections": &r.TCPConnections} {
			if !sameNumber(got[field], w) {
				t.Errorf("%s %s: the page shows %q, weft stat %v (at %s)", r.Name, field, got[field], deref(w), at)
			}
		}
		if got["mtls"] != "1" {
			t.Errorf("%s: mTLS share %q on the page, want 1 (every hop of the demo is mTLS, the traffic generator's too)", r.Name, got["mtls"])
		}
	}

	// The topology: web sends to books and authors over mTLS.
	secured, err := chromedp.Run(tctx, chromedp.Evaluate[int](`document.querySelectorAll('#topology line.edge.secured[data-src="web"]').length`))
	if err != nil {
		t.Fatal(err)
	}
	if secured < 2 {
		t.Errorf("the topology shows %d mTLS edges from web, want 2 (to books and authors)", secured)
	}

	// A tap of books shows its requests within seconds (books gets ~1 request/s here: three within 15 s).
	tapCtx, tapCancel := context.WithTimeout(tctx, 15*time.Second)
	defer tapCancel()
	err = chromedp.Do(tapCtx,
		chromedp.Click(chromedp.CSS(`button[data-tap="books"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#tap tbody tr[data-tap-event="3"]`)),
	)
	if err != nil {
		state, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#tap-state")))
		t.Fatalf("tap: %v (tap state %q, console %v)", err, state, problems())
	}
	tapRows, err := chromedp.Run(tctx, chromedp.Evaluate[[]map[string]string](`[...document.querySelectorAll("#tap tbody tr")].slice(0, 3).map(tr => ({text: tr.innerText, ids: tr.querySelector("td.ids").title}))`))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range tapRows {
		if !strings.Contains(r["text"], "books") || !strings.Contains(r["text"], "demo/web → demo/books") ||
			r["ids"] != "spiffe://cluster.local/ns/demo/sa/web → spiffe://cluster.local/ns/demo/sa/books" {
			t.Errorf("a tap row of books: %q (%q), want books's requests from web with both SPIFFE identities", r["text"], r["ids"])
		}
	}

	// Let the charts have a few points (more for the README's picture), then keep a screenshot.
	points := 3
	if os.Getenv("WEFT_DASHBOARD_DOC") == "1" {
		points = 12
	}
	if _, err := chromedp.Run(tctx, chromedp.Poll[bool](fmt.Sprintf(`Number(document.body.dataset.refreshes) >= %d`, points), chromedp.WithPollingTimeout(40*time.Second))); err != nil {
		t.Errorf("the page did not refresh: %v", err)
	}
	png, err := chromedp.Run(tctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(artifactDir(t), "dashboard.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", shot)
	if os.Getenv("WEFT_DASHBOARD_DOC") == "1" {
		if err := os.WriteFile(filepath.Join("..", "..", "..", "..", "docs", "dashboard.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if p := problems(); len(p) > 0 {
		t.Errorf("the browser console has errors:\n%s", strings.Join(p, "\n"))
	}
}

func sameNumber(page string, want *float64) bool {
	if want == nil {
		return page == ""
	}
	got, err := strconv.ParseFloat(page, 64)
	return err == nil && got == *want
}

func deref(v *float64) any {
	if v == nil {
		return nil
	}
	return *v
}

// TestSummaryErrors: bad input and a Prometheus that is down are one line in the API's error.
func TestSummaryErrors(t *testing.T) {
	prom, err := viz.NewQuerier("http://127.0.0.1:1", api.Config{Client: &http.Client{Timeout: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(dashboard.Handler(dashboard.Options{Prom: prom, PromURL: "http://127.0.0.1:1"}))
	defer srv.Close()
	for _, tc := range []struct {
		query string
		code  int
		want  string
	}{
		{"window=5s", 400, `window \"5s\": want a duration of at least 15s`},
		{"window=soon", 400, `window \"soon\"`},
		{"at=yesterday", 400, `at \"yesterday\": want Unix milliseconds`},
		{"", 502, "Prometheus at http://127.0.0.1:1: not reachable"},
	} {
		resp, err := http.Get(srv.URL + "/api/summary?" + tc.query)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(b.String(), tc.want) || strings.Count(strings.TrimSpace(b.String()), "\n") > 0 {
			t.Errorf("%s: %d %s, want %d with %q on one line", tc.query, resp.StatusCode, b.String(), tc.code, tc.want)
		}
	}
}

// TestTapErrorsAreEvents: a bad tap request ends the event stream with the reason (the page's
// EventSource never meets a failed response).
func TestTapErrorsAreEvents(t *testing.T) {
	srv := httptest.NewServer(dashboard.Handler(dashboard.Options{}))
	defer srv.Close()
	for query, want := range map[string]string{
		"":                               "namespace: missing",
		"namespace=demo":                 "name: missing",
		"namespace=demo&kind=job&name=x": `kind "job": want deployment, pod or namespace`,
		"namespace=demo&name=web&path=x": `path "x": want a path prefix`,
		"namespace=demo&name=web":        "tap is not available",
	} {
		resp, err := http.Get(srv.URL + "/api/tap?" + query)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
			t.Errorf("%s: %d %s, want 200 text/event-stream", query, resp.StatusCode, ct)
		}
		if !strings.Contains(b.String(), "event: end\ndata: ") || !strings.Contains(b.String(), want) {
			t.Errorf("%s: %q, want an end event with %q", query, b.String(), want)
		}
	}
}

// TestAssetsAreEmbedded: the page and its scripts are served from the binary, with no third-party URL.
func TestAssetsAreEmbedded(t *testing.T) {
	srv := httptest.NewServer(dashboard.Handler(dashboard.Options{}))
	defer srv.Close()
	for _, p := range []string{"/", "/assets/app.js", "/assets/app.css", "/assets/vendor/uplot/uPlot.iife.min.js", "/assets/vendor/uplot/uPlot.min.css"} {
		resp, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || b.Len() < 100 {
			t.Errorf("%s: %d, %d bytes", p, resp.StatusCode, b.Len())
		}
		if p == "/" {
			for _, bad := range []string{"http://", "https://", "//cdn"} {
				if strings.Contains(b.String(), bad) {
					t.Errorf("the page refers to %q: assets must be embedded", bad)
				}
			}
		}
	}
}
