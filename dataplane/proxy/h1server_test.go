package proxy_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// One client connection carries, in turn, requests the HTTP/1.1 fast path serves (GET, HEAD) and
// requests it hands to net/http (a body, HTTP/1.0 style Connection headers), pipelined or not; every
// response is framed right and the connection stays usable.
func TestHTTP1FastPathAndHandover(t *testing.T) {
	be := startBackend(t, "b", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.74", be.addr)
	mesh(t, svc)
	c, err := net.Dial("tcp", svc.lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	host := "Host: " + svc.authority() + "\r\n"
	read := func(what, method string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "/", nil)
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s: body: %v", what, err)
		}
		return resp, string(b)
	}
	send := func(s string) {
		t.Helper()
		if _, err := io.WriteString(c, s); err != nil {
			t.Fatal(err)
		}
	}
	want := "b HTTP/1.1 " + svc.authority() + " /"

	send("GET / HTTP/1.1\r\n" + host + "\r\n")
	resp, body := read("first GET", "GET")
	if resp.StatusCode != 200 || body != want || resp.Header.Get("X-Backend") != "b" || resp.Header.Get("Date") == "" || resp.Close {
		t.Fatalf("first GET: %d %q %v", resp.StatusCode, body, resp.Header)
	}

	send("HEAD / HTTP/1.1\r\n" + host + "\r\n")
	if resp, body := read("HEAD", "HEAD"); resp.StatusCode != 200 || body != "" {
		t.Fatalf("HEAD: %d %q", resp.StatusCode, body)
	}

	// Two GETs in one write (pipelined).
	send("GET /a HTTP/1.1\r\n" + host + "\r\nGET /b HTTP/1.1\r\n" + host + "\r\n")
	if _, body := read("pipelined GET /a", "GET"); !strings.HasSuffix(body, " /a") {
		t.Fatalf("pipelined GET /a: %q", body)
	}
	if _, body := read("pipelined GET /b", "GET"); !strings.HasSuffix(body, " /b") {
		t.Fatalf("pipelined GET /b: %q", body)
	}

	// A request with a body: net/http takes the connection over, and keeps serving it.
	send("POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhello")
	if resp, body := read("POST", "POST"); resp.StatusCode != 200 || body != "b got 5 bytes" {
		t.Fatalf("POST: %d %q", resp.StatusCode, body)
	}
	send("GET /after HTTP/1.1\r\n" + host + "\r\n")
	if _, body := read("GET after the handover", "GET"); !strings.HasSuffix(body, " /after") {
		t.Fatalf("GET after the handover: %q", body)
	}
	send("GET /last HTTP/1.1\r\n" + host + "Connection: close\r\n\r\n")
	if resp, body := read("GET with Connection: close", "GET"); !strings.HasSuffix(body, " /last") || !resp.Close {
		t.Fatalf("GET with Connection: close: %q, close %v", body, resp.Close)
	}
	if n, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after Connection: close the proxy should close: read %v %v", n, err)
	}
}

// The fast path's responses: a streamed body without a length goes out chunked (with its trailer),
// an empty one gets Content-Length: 0, a 204 no body headers; a client without a Host gets 400.
func TestHTTP1FastPathFraming(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stream":
			w.Header().Set("Trailer", "X-Done")
			for range 3 {
				io.WriteString(w, "part ")
				w.(http.Flusher).Flush()
			}
			w.Header().Set("X-Done", "yes")
		case "/nothing":
			w.WriteHeader(http.StatusNoContent)
		case "/empty":
		}
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	svc := newService(t, echoFQDN, "127.0.0.75", netip.MustParseAddrPort(l.Addr().String()))
	mesh(t, svc)
	c, err := net.Dial("tcp", svc.lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	host := "Host: " + svc.authority() + "\r\n"
	get := func(path string) (*http.Response, string) {
		t.Helper()
		if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\n"+host+"\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: body: %v", path, err)
		}
		return resp, string(b)
	}
	resp, body := get("/stream")
	if body != "part part part " || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" || resp.Trailer.Get("X-Done") != "yes" {
		t.Errorf("/stream: %q, transfer encoding %v, trailer %v", body, resp.TransferEncoding, resp.Trailer)
	}
	resp, body = get("/nothing")
	if resp.StatusCode != 204 || body != "" || resp.Header.Get("Content-Length") != "" || resp.Header.Get("Content-Type") != "" {
		t.Errorf("/nothing: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	resp, body = get("/empty")
	if resp.StatusCode != 200 || body != "" || resp.ContentLength != 0 {
		t.Errorf("/empty: %d %q, length %d", resp.StatusCode, body, resp.ContentLength)
	}
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 400 {
		t.Errorf("no Host: %v %v", resp, err)
	}
	for _, head := range []string{"Host: bad/host\r\n", "Host: a\r\nHost: b\r\n"} {
		c, err := net.Dial("tcp", svc.lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\n"+head+"\r\n"); err != nil {
			t.Fatal(err)
		}
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 400 {
			t.Errorf("%q: %v %v", head, resp, err)
		}
		c.Close()
	}
}
