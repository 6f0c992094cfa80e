package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// runProxyCmd runs weft-proxy with args as a user would, returning stdout and the error main prints.
func runProxyCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := execute(context.Background(), args, &out)
	return out.String(), err
}

func TestAwaitSucceedsOnceTheProxyBecomesReady(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ready" {
			http.NotFound(w, r)
			return
		}
		if calls.Add(1) <= 3 { // not ready for the first three polls
			http.Error(w, "warming up", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	out, err := runProxyCmd(t, "await", "--admin-addr", addr, "--timeout", "1m", "--interval", "10ms")
	if err != nil {
		t.Fatalf("await: %v", err)
	}
	if n := calls.Load(); n < 4 {
		t.Errorf("await returned after %d polls; the server was not ready before the 4th", n)
	}
	if !strings.Contains(out, "is ready") {
		t.Errorf("output %q does not say the proxy is ready", out)
	}
}

func TestAwaitTimesOutWithTheLastAnswer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no clusters yet", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	_, err := runProxyCmd(t, "await", "--admin-addr", addr, "--timeout", "300ms", "--interval", "20ms")
	if err == nil {
		t.Fatal("await succeeded against a proxy that is never ready")
	}
	for _, want := range []string{"not ready after 300ms", "503", "no clusters yet"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestAwaitTimesOutWhenNothingListens(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := strings.TrimPrefix(srv.URL, "http://")
	srv.Close() // the port is now closed

	_, err := runProxyCmd(t, "await", "--admin-addr", addr, "--timeout", "300ms", "--interval", "20ms")
	if err == nil || !strings.Contains(err.Error(), "not ready after") || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("err = %v, want a timeout naming the refused connection", err)
	}
}
