package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestDashboardMistakes: a bad address, a bad or unreachable Prometheus, a bad kubeconfig: each one
// line that says what to do.
func TestDashboardMistakes(t *testing.T) {
	down, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downURL := "http://" + down.Addr().String()
	down.Close()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dashboard", "--addr", "50750"}, `--addr "50750": want host:port such as 127.0.0.1:50750`},
		{[]string{"dashboard", "--addr", "127.0.0.1:99999"}, `--addr "127.0.0.1:99999": want host:port`},
		{[]string{"dashboard", "extra"}, "unknown command"},
		{[]string{"dashboard", "--kubeconfig", "/nonexistent", "--prometheus-url", downURL}, "--kubeconfig"},
		{[]string{"dashboard", "--prometheus-url", "ftp://x"}, `--prometheus-url "ftp://x": want an http(s) URL`},
		{[]string{"dashboard", "--prometheus-url", downURL}, "Prometheus at " + downURL + ": not reachable"},
	} {
		root := newRootCmd()
		root.SetArgs(tc.args)
		t.Setenv("KUBECONFIG", "/nonexistent-kubeconfig")
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("weft %s: %v, want one line containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

// dashOutput is the dashboard command's output, read while it runs.
type dashOutput struct {
	mu sync.Mutex
	b  strings.Builder
}

func (d *dashOutput) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.b.Write(p)
}

func (d *dashOutput) String() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.b.String()
}

// TestDashboardServes runs `weft dashboard` against a Prometheus stand-in that answers every instant
// query with one sample: it prints its URL, serves the page and the API, and stops on Ctrl-C.
func TestDashboardServes(t *testing.T) {
	prom := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"namespace":"demo","deployment":"web"},"value":[%d,"1"]}]}}`, time.Now().Unix())
	}))
	defer prom.Close()
	t.Setenv("KUBECONFIG", "/nonexistent-kubeconfig")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out dashOutput
	root := newRootCmd()
	root.SetArgs([]string{"dashboard", "--addr", "127.0.0.1:0", "--prometheus-url", prom.URL, "--control-addr", ""})
	root.SetOut(&out)
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	re := regexp.MustCompile(`Weft dashboard at (http://127\.0\.0\.1:\d+) `)
	var url string
	deadline := time.Now().Add(15 * time.Second)
	for url == "" {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			url = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("no URL printed: %q", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for path, want := range map[string]string{
		"/":                                "<title>Weft dashboard</title>",
		"/api/summary":                     `"namespace":"demo"`,
		"/api/tap?namespace=demo&name=web": "tap is not available",
	} {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d %.300s, want %q", path, resp.StatusCode, body, want)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("weft dashboard: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("weft dashboard did not stop")
	}
}
