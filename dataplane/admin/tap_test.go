package admin_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/weftmesh/weft/dataplane/admin"
	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

// The tap answers a remote client only over the TLS the admin port verified (weft-control's
// certificate); in plaintext it is loopback only, like /config_dump.
func TestTapIsNotPublic(t *testing.T) {
	called := false
	h := admin.Handler(admin.Options{Proxy: fakeProxy{}, Tap: func(context.Context, *tapv1.ObserveRequest, func(*tapv1.ObserveResponse) error) error {
		called = true
		return nil
	}})
	for _, tc := range []struct {
		name   string
		remote string
		tls    *tls.ConnectionState
		denied bool
	}{
		{"remote plaintext", "10.0.0.9:4000", nil, true},
		{"remote TLS without a verified certificate", "10.0.0.9:4000", &tls.ConnectionState{}, true},
		{"remote verified TLS", "10.0.0.9:4000", &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{{}}}}, false},
		{"loopback plaintext", "127.0.0.1:4000", nil, false},
	} {
		called = false
		r := httptest.NewRequest(http.MethodPost, tapv1.ObserveMethod, strings.NewReader("\x00\x00\x00\x00\x00"))
		r.Header.Set("Content-Type", "application/grpc")
		r.RemoteAddr, r.TLS = tc.remote, tc.tls
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if denied := w.Code == http.StatusForbidden; denied != tc.denied || called == tc.denied {
			t.Errorf("%s: status %d, tap called %v; want denied %v", tc.name, w.Code, called, tc.denied)
		}
	}
	r := httptest.NewRequest(http.MethodGet, "/config_dump", nil)
	r.RemoteAddr, r.TLS = "10.0.0.9:4000", &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{{}}}}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusForbidden {
		t.Errorf("GET /config_dump from a remote verified TLS client: %d, want 403 (TLS serves the tap only)", w.Code)
	}
}
