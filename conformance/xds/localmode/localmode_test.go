package localmode

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	xdsconf "github.com/weftmesh/weft/conformance/xds"
	"github.com/weftmesh/weft/discovery"
)

// TestFileIsWhatWeftControlReads: every change leaves a file that weft-control's own loader accepts,
// with the services and endpoints the driver was told.
func TestFileIsWhatWeftControlReads(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "discovery.yaml")
	d, err := New(path, []xdsconf.Service{{Namespace: "default", Name: "web", Port: 8080, Endpoints: []string{"127.0.0.11", "127.0.0.12"}}})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name   string
		change func() error
		want   map[string][]string // service → endpoint IPs
	}{
		{"initial", func() error { return nil }, map[string][]string{"web": {"127.0.0.11", "127.0.0.12"}}},
		{"add", func() error {
			return d.AddService(ctx, xdsconf.Service{Namespace: "default", Name: "empty", Port: 80})
		}, map[string][]string{"web": {"127.0.0.11", "127.0.0.12"}, "empty": nil}},
		{"set endpoints", func() error { return d.SetEndpoints(ctx, "default", "empty", []string{"127.0.0.5"}) },
			map[string][]string{"web": {"127.0.0.11", "127.0.0.12"}, "empty": {"127.0.0.5"}}},
		{"remove", func() error { return d.RemoveService(ctx, "default", "web") }, map[string][]string{"empty": {"127.0.0.5"}}},
		{"resync", func() error { return d.Resync(ctx) }, map[string][]string{"empty": {"127.0.0.5"}}},
	}
	for _, s := range steps {
		if err := s.change(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if _, err := discovery.LoadFile(path); err != nil {
			t.Fatalf("%s: weft-control cannot read the file: %v", s.name, err)
		}
		got := readBack(t, path)
		if diff := cmp.Diff(s.want, got); diff != "" {
			t.Errorf("%s: services in the file (-want +got):\n%s", s.name, diff)
		}
	}
	if err := d.SetEndpoints(ctx, "default", "nope", nil); err == nil {
		t.Error("SetEndpoints of an unknown service succeeded")
	}
	if err := d.Restart(ctx); !errors.Is(err, xdsconf.ErrNotSupported) {
		t.Errorf("Restart without OnRestart: %v, want ErrNotSupported", err)
	}
}

func readBack(t *testing.T, path string) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := discovery.ParseObjects(data)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, s := range objs.Services {
		got[s.Name] = nil
	}
	for _, es := range objs.EndpointSlices {
		svc := es.Labels["kubernetes.io/service-name"]
		for _, ep := range es.Endpoints {
			got[svc] = append(got[svc], ep.Addresses...)
		}
	}
	return got
}

func TestMetricsGoroutines(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("# HELP go_goroutines Number of goroutines.\n# TYPE go_goroutines gauge\ngo_goroutines 42\ngo_threads 7\n"))
	}))
	defer srv.Close()
	n, err := MetricsGoroutines(srv.URL)(context.Background())
	if err != nil || n != 42 {
		t.Fatalf("got %d, %v; want 42", n, err)
	}
	none := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("up 1\n")) }))
	defer none.Close()
	if _, err := MetricsGoroutines(none.URL)(context.Background()); err == nil {
		t.Error("metrics without go_goroutines gave no error")
	}
}
