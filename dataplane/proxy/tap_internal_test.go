package proxy

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

// With no tap open, the request path's tap hook allocates nothing (it is one atomic load).
func TestTapHookOffAllocatesNothing(t *testing.T) {
	p, r, rs, sw := tapHookFixture()
	start := time.Now()
	if n := testing.AllocsPerRun(1000, func() { p.tapHTTP(r, rs, sw, start) }); n != 0 {
		t.Fatalf("the tap hook allocates %v times per request with no tap open, want 0", n)
	}
}

// BenchmarkTapHook is the hook's cost per request: off (nobody taps: one atomic load) and on (an open
// tap whose match rejects the request, and one that takes it: an event is built and queued or dropped).
func BenchmarkTapHook(b *testing.B) {
	p, r, rs, sw := tapHookFixture()
	start := time.Now()
	b.Run("off", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p.tapHTTP(r, rs, sw, start)
		}
	})
	for _, tc := range []struct {
		name   string
		prefix string
	}{{"on-nomatch", "/nothing"}, {"on-match", "/"}} {
		b.Run(tc.name, func(b *testing.B) {
			t := &tapper{ch: make(chan *tapv1.TapEvent, tapBuffer), rps: 1e12, tokens: 1e12, last: time.Now()}
			t.match.PathPrefix = tc.prefix
			p.tap.add(t)
			defer p.tap.remove(t)
			done := make(chan struct{})
			go func() {
				for {
					select {
					case <-t.ch:
					case <-done:
						return
					}
				}
			}()
			defer close(done)
			b.ReportAllocs()
			for b.Loop() {
				p.tapHTTP(r, rs, sw, start)
			}
		})
	}
}

func tapHookFixture() (*Proxy, *http.Request, *reqState, *statusWriter) {
	p := &Proxy{}
	r := httptest.NewRequest(http.MethodGet, "http://books.demo.svc.cluster.local:8080/books/1", nil)
	rs := &reqState{info: &connInfo{direction: "outbound"}, authority: r.Host}
	sw := &statusWriter{ResponseWriter: httptest.NewRecorder(), code: 200}
	return p, r, rs, sw
}
