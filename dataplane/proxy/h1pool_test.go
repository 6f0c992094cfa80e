package proxy_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countingListener counts the connections a backend accepts.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// Sequential requests ride one kept-alive upstream connection, whatever their response framing:
// Content-Length, chunked (with a trailer), HEAD, 204.
func TestUpstreamHTTP1KeepAlive(t *testing.T) {
	cl := &countingListener{Listener: listen(t, "127.0.0.1:0")}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			w.WriteHeader(200)
			for range 3 {
				io.WriteString(w, strings.Repeat("x", 5000))
				w.(http.Flusher).Flush()
			}
			w.Header().Set("X-Sum", "15000")
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Content-Length", "5")
			io.WriteString(w, "hello")
		}
	})}
	go func() { _ = srv.Serve(cl) }()
	t.Cleanup(func() { srv.Close() })
	svc := newService(t, echoFQDN, "127.0.0.71", netip.MustParseAddrPort(cl.Addr().String()))
	mesh(t, svc)
	c := clientFor(svc)
	base := "http://" + svc.authority()
	for i := range 5 {
		if resp, body := get(t, c, base+"/"); resp.StatusCode != 200 || body != "hello" {
			t.Fatalf("GET / #%d: %d %q", i, resp.StatusCode, body)
		}
		resp, body := get(t, c, base+"/chunked")
		if resp.StatusCode != 200 || len(body) != 15000 || resp.Trailer.Get("X-Sum") != "15000" {
			t.Fatalf("GET /chunked #%d: %d, %d bytes, trailer %q", i, resp.StatusCode, len(body), resp.Trailer.Get("X-Sum"))
		}
		if resp, body := get(t, c, base+"/empty"); resp.StatusCode != 204 || body != "" {
			t.Fatalf("GET /empty #%d: %d %q", i, resp.StatusCode, body)
		}
		req, _ := http.NewRequest(http.MethodHead, base+"/", nil)
		resp, err := c.Do(req)
		if err != nil || resp.StatusCode != 200 || resp.ContentLength != 5 {
			t.Fatalf("HEAD / #%d: %v %v", i, resp, err)
		}
		resp.Body.Close()
	}
	if n := cl.n.Load(); n != 1 {
		t.Errorf("20 sequential requests opened %d upstream connections, want 1", n)
	}
}

// A kept-alive upstream connection the server closed while it sat idle is not a failure: the request
// goes again on a new connection.
func TestUpstreamHTTP1ServerClosedIdleConnection(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	var conns atomic.Int64
	closed := make(chan struct{}, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				// One response, kept alive by its headers, then the server closes the connection.
				defer func() { c.Close(); closed <- struct{}{} }()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}()
		}
	}()
	svc := newService(t, echoFQDN, "127.0.0.72", netip.MustParseAddrPort(l.Addr().String()))
	mesh(t, svc)
	c := clientFor(svc)
	for i, method := range []string{"GET", "POST", "GET", "DELETE", "POST"} {
		req, _ := http.NewRequest(method, "http://"+svc.authority()+"/", nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s #%d: %v", method, i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "ok" {
			t.Fatalf("%s #%d: %d %q (%s)", method, i, resp.StatusCode, body, resp.Header.Get("Weft-Error"))
		}
		<-closed // the proxy's idle connection is now one the server closed
	}
	if n := conns.Load(); n < 5 {
		t.Errorf("%d upstream connections for 5 requests, each on a connection the server then closed", n)
	}
}

// After a server restart every idle connection is stale: a request is sent again once, on a new
// connection, not on the next stale one.
func TestUpstreamHTTP1AllIdleConnectionsStale(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	addr := l.Addr().String()
	// The 8 /slow requests are held until all have arrived, so they overlap and the proxy keeps 8
	// upstream connections idle afterwards.
	var arrived atomic.Int32
	all := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			if arrived.Add(1) == 8 {
				close(all)
			}
			select {
			case <-all:
			case <-time.After(10 * time.Second):
			}
		}
		io.WriteString(w, "ok")
	})}
	go func() { _ = srv.Serve(l) }()
	svc := newService(t, echoFQDN, "127.0.0.76", netip.MustParseAddrPort(addr))
	mesh(t, svc)
	c := clientFor(svc)
	c.Transport.(*http.Transport).MaxIdleConnsPerHost = 8
	done := make(chan error, 8)
	for range 8 {
		go func() {
			resp, err := c.Get("http://" + svc.authority() + "/slow")
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			done <- err
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	// Restart the server on the same address: the proxy's idle connections are all dead now.
	srv.Close()
	l2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv2 := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "new") })}
	go func() { _ = srv2.Serve(l2) }()
	t.Cleanup(func() { srv2.Close() })
	for i := range 3 {
		if resp, body := get(t, c, "http://"+svc.authority()+"/"); resp.StatusCode != 200 || body != "new" {
			t.Fatalf("GET #%d after the restart: %d %q (%s)", i, resp.StatusCode, body, resp.Header.Get("Weft-Error"))
		}
	}
}

// A route timeout interrupts a response body that stalls, and the upstream connection is not reused.
func TestUpstreamHTTP1TimeoutMidBody(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stall" {
			w.Header().Set("Content-Length", "10")
			io.WriteString(w, "half")
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		io.WriteString(w, "fine")
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	svc := newService(t, echoFQDN, "127.0.0.73", netip.MustParseAddrPort(l.Addr().String()))
	svc.route.Timeout = 300 * time.Millisecond
	mesh(t, svc)
	c := clientFor(svc)
	start := time.Now()
	// The response head had not left the proxy (it sends it with the body): the client sees the
	// connection end, or a short body.
	resp, err := c.Get("http://" + svc.authority() + "/stall")
	if err == nil {
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil && len(b) == 10 {
			t.Fatalf("stalled body came whole: %q", b)
		}
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("stalled response ended after %s", d)
	}
	if resp, body := get(t, c, "http://"+svc.authority()+"/"); resp.StatusCode != 200 || body != "fine" {
		t.Fatalf("next request: %d %q", resp.StatusCode, body)
	}
}
