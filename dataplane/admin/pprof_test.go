//go:build weftpprof

package admin_test

import (
	"net/http"
	"strings"
	"testing"
)

// A profiling build (-tags weftpprof) serves Go's profiler.
func TestPprof(t *testing.T) {
	if code, body := get(t, handler(), "/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "goroutine profile") {
		t.Errorf("/debug/pprof/goroutine in a weftpprof build: status %d, body %.200q", code, body)
	}
}
