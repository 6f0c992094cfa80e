package proxy_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/dataplane/proxy"
	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

// tapRun is one open tap on a proxy, its responses in got.
type tapRun struct {
	got  chan *tapv1.ObserveResponse
	done chan error
	stop context.CancelFunc
}

func openTap(t testing.TB, p *proxy.Proxy, req *tapv1.ObserveRequest, send func(*tapv1.ObserveResponse) error) *tapRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tr := &tapRun{got: make(chan *tapv1.ObserveResponse, 1024), done: make(chan error, 1), stop: cancel}
	if send == nil {
		send = func(r *tapv1.ObserveResponse) error { tr.got <- r; return nil }
	}
	before := p.Tapping()
	go func() { tr.done <- p.Tap(ctx, req, send) }()
	t.Cleanup(func() { cancel(); <-tr.done })
	waitFor(t, "the tap to open", func() bool { return p.Tapping() > before })
	return tr
}

func (tr *tapRun) next(t testing.TB) *tapv1.ObserveResponse {
	t.Helper()
	select {
	case r := <-tr.got:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no tap event within 5s")
		return nil
	}
}

func do(t testing.TB, c *http.Client, method, url, body string, h http.Header) int {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// A tap with a match sees exactly the matching requests, with what a user reads in `weft tap`.
func TestTapShowsMatchingRequests(t *testing.T) {
	be := startBackend(t, "b", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.72", be.addr)
	_, sc := mesh(t, svc)
	c := &http.Client{Transport: resolve(&http.Transport{}, svc)}
	base := "http://" + svc.authority()

	tr := openTap(t, sc.p, &tapv1.ObserveRequest{Match: &tapv1.Match{PathPrefix: "/books", Method: "GET", Authority: svc.authority()}}, nil)
	do(t, c, "GET", base+"/other", "", nil)       // path does not match
	do(t, c, "POST", base+"/books/1", "x", nil)   // method does not match
	do(t, c, "GET", base+"/books/7?q=1", "", nil) // matches
	do(t, c, "GET", base+"/books/8", "", http.Header{"User-Agent": {"tap-test"}})

	for _, want := range []string{"/books/7", "/books/8"} {
		ev := tr.next(t).GetEvent()
		if ev.GetRequest().GetPath() != want || ev.GetRequest().GetMethod() != "GET" || ev.GetRequest().GetAuthority() != svc.authority() {
			t.Fatalf("event %v: want GET %s %s", ev.GetRequest(), svc.authority(), want)
		}
		if ev.GetResponse().GetStatus() != 200 || ev.GetDirection() != tapv1.TapEvent_DIRECTION_OUTBOUND {
			t.Errorf("event status %d direction %v: want 200 outbound", ev.GetResponse().GetStatus(), ev.GetDirection())
		}
		if ev.GetDestination() != echoFQDN+":"+strings.Split(svc.authority(), ":")[1] || ev.GetSource() == "" {
			t.Errorf("event src %q dst %q: want a source and dst %s", ev.GetSource(), ev.GetDestination(), svc.authority())
		}
		if ev.GetLatency().AsDuration() <= 0 || ev.GetStartTime().AsTime().IsZero() {
			t.Errorf("event latency %v start %v: want both", ev.GetLatency(), ev.GetStartTime())
		}
	}
	select {
	case r := <-tr.got:
		t.Fatalf("unexpected event %v", r)
	default:
	}
}

// Bodies and credentials never leave the proxy through a tap.
func TestTapCarriesNoBodyOrCredentials(t *testing.T) {
	be := startBackend(t, "b", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.73", be.addr)
	_, sc := mesh(t, svc)
	c := &http.Client{Transport: resolve(&http.Transport{}, svc)}
	tr := openTap(t, sc.p, &tapv1.ObserveRequest{}, nil)
	do(t, c, "POST", "http://"+svc.authority()+"/upload", "BODY-SECRET-42", http.Header{
		"Authorization": {"Bearer TOKEN-SECRET-42"}, "Cookie": {"session=COOKIE-SECRET-42"}, "User-Agent": {"tap-test"},
	})
	ev := tr.next(t).GetEvent()
	b, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("SECRET")) {
		t.Fatalf("the tap event carries a body, token or cookie: %v", ev)
	}
	var ua string
	for _, h := range ev.GetRequest().GetHeaders() {
		if h.GetName() == "user-agent" {
			ua = h.GetValue()
		}
	}
	if ua != "tap-test" || ev.GetResponse().GetContentLength() == 0 {
		t.Errorf("event %v: want the user-agent header and the response's content length", ev)
	}
}

// limit ends the tap after that many events.
func TestTapLimit(t *testing.T) {
	be := startBackend(t, "b", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.74", be.addr)
	_, sc := mesh(t, svc)
	c := &http.Client{Transport: resolve(&http.Transport{}, svc)}
	tr := openTap(t, sc.p, &tapv1.ObserveRequest{Limit: 2}, nil)
	for range 3 {
		do(t, c, "GET", "http://"+svc.authority()+"/", "", nil)
	}
	select {
	case err := <-tr.done:
		tr.done <- err // for the cleanup
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the tap did not end after its limit of 2 events")
	}
	if n := len(tr.got); n != 2 {
		t.Errorf("got %d events, want 2", n)
	}
	waitFor(t, "the tap to close", func() bool { return sc.p.Tapping() == 0 })
}

// A tap client that does not read never slows requests: its events are dropped and counted.
func TestTapSlowClientDropsEvents(t *testing.T) {
	be := startBackend(t, "b", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.75", be.addr)
	_, sc := mesh(t, svc)
	c := &http.Client{Transport: resolve(&http.Transport{MaxIdleConnsPerHost: 8}, svc)}
	unblock := make(chan struct{})
	var once sync.Once
	got := make(chan *tapv1.ObserveResponse, 4096)
	tr := openTap(t, sc.p, &tapv1.ObserveRequest{MaxRps: 1e9}, func(r *tapv1.ObserveResponse) error {
		<-unblock // a client that stopped reading
		got <- r
		return nil
	})
	defer once.Do(func() { close(unblock) })
	const n = 400 // more than the tap's buffer
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < n; i += 4 {
				if code := do(t, c, "GET", "http://"+svc.authority()+"/", "", nil); code != 200 {
					t.Errorf("status %d", code)
				}
			}
		})
	}
	wg.Wait() // every request finished while the tap client was stuck
	once.Do(func() { close(unblock) })
	var dropped uint64
	for events := 0; dropped == 0; {
		select {
		case r := <-got:
			events++
			dropped += r.GetDropped()
		case <-time.After(5 * time.Second):
			t.Fatalf("after %d events: no drop reported though the client was stuck for %d requests", events, n)
		}
	}
	_ = tr
}

// BenchmarkHTTP1HopTap is BenchmarkHTTP1Hop's proxied GET with no tap (the lean path, the hook's one
// atomic load), with a tap open that matches nothing (every request takes the net/http path and the
// match) and with one that takes every request (an event built and queued per request).
func BenchmarkHTTP1HopTap(b *testing.B) {
	be := startBackend(b, "b", "127.0.0.1:0")
	svc := newService(b, echoFQDN, "127.0.0.76", be.addr)
	_, sc := mesh(b, svc)
	for _, tc := range []struct {
		name   string
		open   bool
		prefix string
	}{{"off", false, ""}, {"on-nomatch", true, "/nothing"}, {"on-all", true, ""}} {
		b.Run(tc.name, func(b *testing.B) {
			if tc.open {
				openTap(b, sc.p, &tapv1.ObserveRequest{MaxRps: 1e9, Match: &tapv1.Match{PathPrefix: tc.prefix}}, func(*tapv1.ObserveResponse) error { return nil })
			}
			c := &http.Client{Transport: resolve(&http.Transport{MaxIdleConnsPerHost: 64}, svc)}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := c.Get("http://" + svc.authority() + "/")
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}

// Events dropped for a stuck client do not count toward the limit: once the client reads again, the tap
// goes on to its limit.
func TestTapLimitAfterDrops(t *testing.T) {
	be := startBackend(t, "b", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.77", be.addr)
	_, sc := mesh(t, svc)
	c := &http.Client{Transport: resolve(&http.Transport{MaxIdleConnsPerHost: 8}, svc)}
	unblock := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(unblock) })
	events := 0
	const limit = 300 // more than the tap's buffer
	tr := openTap(t, sc.p, &tapv1.ObserveRequest{MaxRps: 1e9, Limit: limit}, func(r *tapv1.ObserveResponse) error {
		<-unblock
		events++
		return nil
	})
	for range limit + 50 { // fills the buffer while the client is stuck: some are dropped
		do(t, c, "GET", "http://"+svc.authority()+"/", "", nil)
	}
	once.Do(func() { close(unblock) })
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-tr.done:
			tr.done <- err
			if err != nil || events != limit {
				t.Fatalf("the tap ended with %v after %d events, want nil after %d", err, events, limit)
			}
			return
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the tap did not reach its limit of %d after drops", limit)
		}
		do(t, c, "GET", "http://"+svc.authority()+"/", "", nil)
	}
}
