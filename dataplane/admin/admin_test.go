package admin_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"github.com/weftmesh/weft/dataplane/admin"
	"github.com/weftmesh/weft/dataplane/config"
	"github.com/weftmesh/weft/dataplane/proxy"
)

type fakeProxy struct{}

func (fakeProxy) Ready() (bool, string)           { return true, "ready" }
func (fakeProxy) Snapshot() *config.Snapshot      { return &config.Snapshot{} }
func (fakeProxy) Clusters() []proxy.ClusterStatus { return nil }

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func handler() http.Handler {
	return admin.Handler(admin.Options{Proxy: fakeProxy{}})
}

func TestReady(t *testing.T) {
	if code, body := get(t, handler(), "/ready"); code != http.StatusOK || body != "ready\n" {
		t.Errorf("/ready: %d %q", code, body)
	}
}

// /metrics answers uncompressed even when the scraper asks for gzip (as Prometheus does): a gzip
// writer would cost an idle sidecar about a megabyte of heap.
func TestMetricsUncompressed(t *testing.T) {
	set := metrics.NewSet()
	set.NewCounter("weft_test_total").Inc()
	srv := httptest.NewServer(admin.Handler(admin.Options{Proxy: fakeProxy{}, Metrics: set.WritePrometheus}))
	defer srv.Close()
	req, err := http.NewRequest("GET", srv.URL+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept-Encoding", "gzip") // set by hand, so the client does not decompress it
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if enc := resp.Header.Get("Content-Encoding"); enc != "" {
		t.Errorf("/metrics Content-Encoding %q, want none", enc)
	}
	if !strings.Contains(string(b), "weft_test_total 1") {
		t.Errorf("/metrics body lacks weft_test_total 1:\n%s", b)
	}
}

// TestWhoMayCallWhat: /ready, /live and /metrics answer any client; /config_dump, /clusters, /xds,
// POST /shutdown and anything else (/debug/) only loopback clients (IPv4, IPv6, IPv4-mapped): a peer
// from the pod network gets 403, whatever its headers say.
func TestWhoMayCallWhat(t *testing.T) {
	shut := 0
	h := admin.Handler(admin.Options{Proxy: fakeProxy{}, Shutdown: func() { shut++ }})
	for _, tc := range []struct {
		method, path string
		public       bool
	}{
		{"GET", "/ready", true}, {"GET", "/live", true}, {"GET", "/metrics", true},
		{"GET", "/config_dump", false}, {"GET", "/clusters", false}, {"GET", "/xds", false},
		{"POST", "/shutdown", false}, {"GET", "/debug/pprof/", false}, {"GET", "/nope", false},
	} {
		for _, remote := range []string{"127.0.0.1:40000", "[::1]:40000", "[::ffff:127.0.0.1]:40000", "10.44.0.5:40000", "192.0.2.2:40000", "[fd00::2]:40000"} {
			r := httptest.NewRequest(tc.method, tc.path, nil)
			r.RemoteAddr = remote
			r.Header.Set("X-Forwarded-For", "127.0.0.1")
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			loopback := strings.Contains(remote, "127.0.0.1") || strings.HasPrefix(remote, "[::1]")
			if refused := w.Code == http.StatusForbidden; refused != (!tc.public && !loopback) {
				t.Errorf("%s %s from %s: %d", tc.method, tc.path, remote, w.Code)
			}
		}
	}
	if shut != 3 {
		t.Errorf("POST /shutdown ran %d times, want 3 (the loopback clients)", shut)
	}
}
