package admin_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

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
	return admin.Handler(admin.Options{Proxy: fakeProxy{}, Gatherer: prometheus.NewRegistry()})
}

func TestReady(t *testing.T) {
	if code, body := get(t, handler(), "/ready"); code != http.StatusOK || body != "ready\n" {
		t.Errorf("/ready: %d %q", code, body)
	}
}
