package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/api"
	"github.com/prometheus/common/model"

	"github.com/weftmesh/weft/cmd/weft/internal/demo"
	"github.com/weftmesh/weft/cmd/weft/internal/viz"
	"github.com/weftmesh/weft/conformance/prebuilt"
	"github.com/weftmesh/weft/conformance/prereq"
)

// lockedBuffer is a child's output, read while it writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *lockedBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *lockedBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// meshBinaries returns weft-control and weft-proxy of this checkout (bin/ when fresh, else built).
func meshBinaries(t *testing.T) (control, proxy string) {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
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

// poll calls f until it returns nil or the deadline passes.
func poll(t *testing.T, what string, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond) // a poll interval, not a wait for an event
	}
}

// TestStatAndEdgesOnDemo runs `weft demo --prometheus` (real weft-control, proxies with mTLS and Debian's
// Prometheus scraping them every second) without its traffic generator, sends a designed mix from web
// to books through web's proxy, and checks that `weft stat -o json` reports what was sent: the request
// count within the rate's extrapolation, the success rate exactly, from both sides (deploy/books inbound,
// svc/books from deploy/web outbound); that `weft edges` shows web → books with both SPIFFE identities;
// and the bad-input cases.
func TestStatAndEdgesOnDemo(t *testing.T) {
	prom := prereq.Binary(t, "prometheus")
	control, proxy := meshBinaries(t)
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "no-cluster")) // local mode: no cluster to ask
	t.Setenv("WEFT_PROMETHEUS_URL", "")

	block := byte(50 + rand.IntN(50)) // 127.50–99: TestDemo (cmd/weft/internal/demo) takes 127.100–249 at the same time
	layout := demo.NewLayout(block)
	var out, log lockedBuffer
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := demo.Run(ctx, demo.Options{
			Interval: time.Hour, Plain: true, Block: block, NoTraffic: true,
			Prometheus: true, PrometheusBin: prom, ScrapeInterval: time.Second,
			ControlBin: control, ProxyBin: proxy, Out: &out, Log: &log,
			Started: func([]int, string) { close(started) },
		})
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("demo: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the demo did not stop within 30 s")
		}
	})
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("the demo stopped before the mesh was ready: %v\n%s", err, log.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("the mesh was not ready in time:\n%s", log.String())
	}
	promURL := "http://" + layout.PrometheusAddr()
	pq, err := viz.NewQuerier(promURL, api.Config{})
	if err != nil {
		t.Fatal(err)
	}
	// value sums an instant query's vector; latest is the newest sample time of books' failures.
	value := func(q string) (float64, error) {
		v, _, _, err := pq.Query(context.Background(), q, time.Now())
		if err != nil {
			return 0, err
		}
		vec, ok := v.(model.Vector)
		if !ok {
			return 0, fmt.Errorf("%s: not a vector: %v", q, v)
		}
		var sum float64
		for _, s := range vec {
			sum += float64(s.Value)
		}
		return sum, nil
	}
	const books = `response_total{direction="inbound",namespace="demo",deployment="books",classification="%s"}`
	seen := func(success, failure float64) func() error {
		return func() error {
			s, err := value(fmt.Sprintf("sum("+books+")", "success"))
			if err != nil {
				return err
			}
			f, err := value(fmt.Sprintf("sum("+books+")", "failure"))
			if err != nil {
				return err
			}
			if s != success || f != failure {
				return fmt.Errorf("Prometheus has %v successes and %v failures at books, want %v and %v", s, f, success, failure)
			}
			return nil
		}
	}
	scrapedAfter := func(t0 time.Time) func() error {
		return func() error {
			ts, err := value(fmt.Sprintf("max(timestamp("+books+"))", "failure"))
			if err != nil {
				return err
			}
			if ts <= float64(t0.UnixMilli())/1000 {
				return fmt.Errorf("the newest scrape of books is at %v, before %v", ts, t0)
			}
			return nil
		}
	}

	web, booksPod := layout.Pod("web"), layout.Pod("books")
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: web.HTTPProxyAddr()})}}
	defer client.CloseIdleConnections()
	send := func(ok, fail int) {
		t.Helper()
		for i := range ok + fail {
			u := "http://" + booksPod.Authority() + "/books/1"
			want := http.StatusOK
			if i >= ok {
				u, want = u+"?fail=1", http.StatusInternalServerError
			}
			resp, err := client.Get(u)
			if err != nil {
				t.Fatalf("GET %s through web's proxy: %v", u, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Fatalf("GET %s: %d, want %d", u, resp.StatusCode, want)
			}
		}
	}

	// Warm-up: both series exist, with counts large beside the mix's (so that increase() extrapolates
	// every series of books' scrape alike: same sample times, none extrapolated to zero).
	send(40, 40)
	poll(t, "Prometheus sees the warm-up", 30*time.Second, seen(40, 40))
	t0 := time.Now()
	poll(t, "a scrape after the warm-up", 10*time.Second, scrapedAfter(t0))
	send(60, 20) // the designed mix: 80 requests, 75% success
	poll(t, "Prometheus sees the mix", 30*time.Second, seen(100, 60))
	tDone := time.Now()
	poll(t, "a scrape after the mix", 10*time.Second, scrapedAfter(tDone.Add(time.Second)))
	window := time.Since(t0).Truncate(time.Second) + 2*time.Second

	statJSON := func(args ...string) viz.StatRow {
		t.Helper()
		args = append([]string{"stat"}, append(args, "-n", "demo", "-t", window.String(), "-o", "json", "--prometheus-url", promURL)...)
		stdout, stderr, err := runWeftIO(t, "", args...)
		if err != nil {
			t.Fatalf("weft %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		var rows []viz.StatRow
		if err := json.Unmarshal([]byte(stdout), &rows); err != nil || len(rows) != 1 {
			t.Fatalf("weft %s: want one row of JSON, got %v:\n%s", strings.Join(args, " "), err, stdout)
		}
		return rows[0]
	}
	check := func(what string, r viz.StatRow) {
		t.Helper()
		// increase() extrapolates to the window's edges by at most a scrape interval each side.
		maxReq := 80 * (1 + 2.5/(window.Seconds()-2))
		if r.Requests < 79.9 || r.Requests > maxReq {
			t.Errorf("%s: %v requests, want 80 (to %.1f with extrapolation)", what, r.Requests, maxReq)
		}
		if r.Success == nil || math.Abs(*r.Success-0.75) > 1e-9 {
			t.Errorf("%s: success %v, want exactly 0.75 (60 of 80)", what, r.Success)
		}
		if math.Abs(r.RPS*window.Seconds()-r.Requests) > 1e-6 {
			t.Errorf("%s: RPS %v × %v ≠ %v requests", what, r.RPS, window, r.Requests)
		}
		if r.LatencyMsP50 == nil || r.LatencyMsP99 == nil || *r.LatencyMsP50 <= 0 || *r.LatencyMsP99 < *r.LatencyMsP50 {
			t.Errorf("%s: latency p50 %v p99 %v, want 0 < p50 ≤ p99", what, r.LatencyMsP50, r.LatencyMsP99)
		}
	}
	b := statJSON("deploy/books")
	if b.Name != "books" || b.Namespace != "demo" || b.MeshedPods != 1 || b.TotalPods != -1 {
		t.Errorf("deploy/books row: %+v, want books in demo, meshed by 1 scraped proxy, no cluster", b)
	}
	check("stat deploy/books", b)
	check("stat svc/books --from deploy/web", statJSON("svc", "books", "--from", "deploy/web"))

	// The table, as a user reads it.
	stdout, _, err := runWeftIO(t, "", "stat", "deploy", "-n", "demo", "--prometheus-url", promURL)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout, "NAME   MESHED   SUCCESS") || !strings.Contains(stdout, "books        ✔") {
		t.Errorf("weft stat deploy -n demo:\n%s", stdout)
	}
	t.Logf("weft stat deploy -n demo:\n%s", stdout)

	// Edges: web → books over mTLS, with both identities.
	stdout, _, err = runWeftIO(t, "", "edges", "deploy", "-n", "demo", "-o", "json", "--prometheus-url", promURL)
	if err != nil {
		t.Fatal(err)
	}
	var edges []viz.Edge
	if err := json.Unmarshal([]byte(stdout), &edges); err != nil {
		t.Fatalf("edges -o json: %v\n%s", err, stdout)
	}
	want := viz.Edge{SrcNamespace: "demo", Src: "web", SrcKind: viz.Deployment, DstNamespace: "demo", Dst: "books",
		ClientID: "spiffe://cluster.local/ns/demo/sa/web", ServerID: "spiffe://cluster.local/ns/demo/sa/books", Secured: true}
	found := false
	for _, e := range edges {
		e.Requests, e.Connections = 0, 0
		found = found || e == want
	}
	if !found {
		t.Errorf("edges lack %+v:\n%s", want, stdout)
	}
	stdout, _, _ = runWeftIO(t, "", "edges", "deploy", "-n", "demo", "--prometheus-url", promURL)
	t.Logf("weft edges deploy -n demo:\n%s", stdout)

	// Bad input and no data: one line that says what to do.
	closed := closedPort(t)
	for _, c := range []struct {
		args []string
		want string // in the error; "" for success with a note on stderr
		note string
	}{
		{[]string{"stat", "foo"}, `unknown resource kind "foo": want one of deploy, pod, svc, ns`, ""},
		{[]string{"stat", "deploy", "-o", "yaml", "--prometheus-url", promURL}, `--output "yaml": want table, wide or json`, ""},
		{[]string{"stat", "deploy", "--prometheus-url", "http://" + closed}, "not reachable", ""},
		{[]string{"stat", "deploy", "--prometheus-url", "http://" + closed}, "start one with `weft demo --prometheus` or `weft install --viz`", ""},
		{[]string{"stat", "deploy", "--to", "deploy/books", "--prometheus-url", promURL}, "want --to svc/NAME or --to ns/NAME", ""},
		{[]string{"edges", "svc", "--prometheus-url", promURL}, "want deploy, pod or ns", ""},
		{[]string{"stat", "deploy", "-n", "empty", "--prometheus-url", promURL}, "", "No traffic found for deployment in namespace empty"},
	} {
		_, stderr, err := runWeftIO(t, "", c.args...)
		switch {
		case c.want == "" && (err != nil || !strings.Contains(stderr, c.note)):
			t.Errorf("weft %s: %v, stderr %q; want success with the note %q", strings.Join(c.args, " "), err, stderr, c.note)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n")):
			t.Errorf("weft %s: %v, want one line with %q", strings.Join(c.args, " "), err, c.want)
		}
	}

	// A Prometheus that scrapes no proxy: no data will come; say so.
	empty := startPrometheus(t, prom, "global:\n  scrape_interval: 1s\n")
	_, _, err = runWeftIO(t, "", "stat", "deploy", "-n", "demo", "--prometheus-url", empty)
	if err == nil || !strings.Contains(err.Error(), `scrapes no weft-proxy (no job "weft-proxy")`) {
		t.Errorf("stat against a Prometheus without proxies: %v", err)
	}
}

// closedPort is a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// startPrometheus runs a Prometheus with config on a free loopback port until the test ends.
func startPrometheus(t *testing.T, bin, config string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := closedPort(t)
	var log lockedBuffer
	cmd := exec.Command(bin, "--config.file", filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", addr, "--log.level", "warn")
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	poll(t, "prometheus ready", 30*time.Second, func() error {
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/-/ready: %d\n%s", resp.StatusCode, log.String())
		}
		return nil
	})
	return "http://" + addr
}
