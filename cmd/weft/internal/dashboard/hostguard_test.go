package dashboard

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestHostGuard(t *testing.T) {
	h := HostGuard(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }),
		"127.0.0.1", "localhost", "::1")
	for _, tc := range []struct {
		host, origin string
		want         int
	}{
		{"127.0.0.1:50750", "", http.StatusNoContent},
		{"localhost:50750", "http://localhost:50750", http.StatusNoContent},
		{"[::1]:50750", "", http.StatusNoContent},
		{"LOCALHOST", "", http.StatusNoContent},
		{"rebind.attacker.example:50750", "", http.StatusForbidden},          // DNS rebinding
		{"127.0.0.1:50750", "http://attacker.example", http.StatusForbidden}, // cross-origin read
		{"127.0.0.1:50750", "http://127.0.0.1.attacker.example", http.StatusForbidden},
	} {
		r := httptest.NewRequest(http.MethodGet, "/api/summary", nil)
		r.Host = tc.host
		if tc.origin != "" {
			r.Header.Set("Origin", tc.origin)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.want {
			t.Errorf("Host %q Origin %q: %d, want %d", tc.host, tc.origin, w.Code, tc.want)
		}
	}
}
