//go:build !weftpprof

package admin_test

import (
	"net/http"
	"testing"
)

// A normal build has no profiler on the admin port.
func TestNoPprof(t *testing.T) {
	if code, _ := get(t, handler(), "/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/ in a normal build: status %d, want 404", code)
	}
}
