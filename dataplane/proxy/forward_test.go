package proxy_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"github.com/weftmesh/weft/dataplane/testpki"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

// A request on the HTTP/1.1 fast path reaches the app without its hop-by-hop and forwarding headers
// (but with "TE: trailers") and without a User-Agent it did not have; the app's 103 reaches the
// client, and its response arrives without the hop-by-hop headers, including one named in Connection.
func TestFastPathForwardHeaders(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	heads := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		var head strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			head.WriteString(line)
			if line == "\r\n" {
				break
			}
		}
		heads <- head.String()
		_, _ = io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\nConnection: x-hop\r\nX-Hop: yes\r\nX-Up: 1\r\n\r\nok")
		_, _ = io.Copy(io.Discard, br)
	}()
	svc := newService(t, echoFQDN, "127.0.0.75", netip.MustParseAddrPort(l.Addr().String()))
	mesh(t, svc)
	c := dialListener(t, svc, 20*time.Second)
	_, err := io.WriteString(c, "GET /p?a=1 HTTP/1.1\r\nHost: "+svc.authority()+"\r\nTe: trailers\r\nKeep-Alive: 300\r\n"+
		"Proxy-Authorization: secret\r\nX-Forwarded-For: 192.0.2.1\r\nForwarded: for=192.0.2.1\r\nX-Keep: k\r\n\r\n")
	if err != nil {
		t.Fatal(err)
	}
	var head string
	select {
	case head = <-heads:
	case <-time.After(20 * time.Second):
		t.Fatal("the app got no request")
	}
	tr := textproto.NewReader(bufio.NewReader(strings.NewReader(head)))
	line, _ := tr.ReadLine()
	h, err := tr.ReadMIMEHeader()
	if err != nil || line != "GET /p?a=1 HTTP/1.1" {
		t.Fatalf("the app got %q (%v)", head, err)
	}
	if h.Get("Host") != svc.authority() || h.Get("Te") != "trailers" || h.Get("X-Keep") != "k" {
		t.Errorf("end-to-end headers lost: %q", head)
	}
	for _, k := range []string{"Keep-Alive", "Proxy-Authorization", "X-Forwarded-For", "Forwarded", "User-Agent"} {
		if _, ok := h[k]; ok {
			t.Errorf("the app got %s: %q", k, head)
		}
	}

	resp := readAfterEarlyHints(t, c)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "ok" || resp.Header.Get("X-Up") != "1" {
		t.Fatalf("response %d %q %v", resp.StatusCode, body, resp.Header)
	}
	for _, k := range []string{"Keep-Alive", "X-Hop", "Link"} {
		if _, ok := resp.Header[k]; ok {
			t.Errorf("the client got %s: %v", k, resp.Header)
		}
	}
}

// A drain closes a kept-alive fast-path connection that is waiting for its next request, after its
// response went out whole, and finishes without waiting for the client.
func TestDrainClosesKeptAliveFastPathConnection(t *testing.T) {
	be := startBackend(t, "b", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.76", be.addr)
	_, sc := mesh(t, svc)
	c := dialListener(t, svc, 20*time.Second)
	br := bufio.NewReader(c)
	for i := 0; i < 3; i++ {
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+svc.authority()+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != "b HTTP/1.1 "+svc.authority()+" /" {
			t.Fatalf("GET #%d: %d %q", i, resp.StatusCode, body)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sc.p.Shutdown(ctx); err != nil {
		t.Fatalf("drain did not finish: %v", err)
	}
	if n, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after the drain the client read %d bytes, %v; want EOF", n, err)
	}
}

// A client that sends its next request while the previous one is still upstream (pipelining, the
// second request arriving on its own) gets both responses, in order.
func TestFastPathPipelinedWhileUpstream(t *testing.T) {
	be := startBackend(t, "b", "127.0.0.1:0")
	be.delay.Store(int64(100 * time.Millisecond))
	svc := newService(t, echoFQDN, "127.0.0.77", be.addr)
	mesh(t, svc)
	c := dialListener(t, svc, 10*time.Second)
	br := bufio.NewReader(c)
	for round := 0; round < 3; round++ {
		hits := be.hits.Load()
		send := func(path string) {
			t.Helper()
			if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: "+svc.authority()+"\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
		}
		send("/one")
		waitFor(t, "the first request upstream", func() bool { return be.hits.Load() == hits+1 })
		send("/two")
		for _, path := range []string{"/one", "/two"} {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("round %d, response to %s: %v", round, path, err)
			}
			body, _ := io.ReadAll(resp.Body)
			if want := "b HTTP/1.1 " + svc.authority() + " " + path; resp.StatusCode != 200 || string(body) != want {
				t.Fatalf("round %d: %d %q, want %q", round, resp.StatusCode, body, want)
			}
		}
	}
}

// An app's 103 Early Hints reach an HTTP/1.1 client through both sidecars (mTLS HTTP/2 between them),
// before the final response.
func TestEarlyHintsOverMTLS(t *testing.T) {
	ca := testpki.NewCA("mesh")
	clientIdent := testpki.Identity{Leaf: ca.Issue(clientID), CA: ca}
	echoIdent := testpki.Identity{Leaf: ca.Issue(echoID), CA: ca}

	l := listen(t, "127.0.0.1:0")
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		_, _ = io.WriteString(w, "final")
	})}
	go func() { _ = app.Serve(l) }()
	t.Cleanup(func() { app.Close() })
	appPort := int(netip.MustParseAddrPort(l.Addr().String()).Port())
	podAddr := netip.MustParseAddrPort("127.0.0.33:" + strconv.Itoa(appPort))

	cp, _ := startServerSidecar(t, podAddr, echoIdent)
	svc := newService(t, echoFQDN, "127.0.0.34", podAddr)
	msgs := resources(svc)
	for _, m := range msgs {
		if c, ok := m.(*clusterv3.Cluster); ok && c.GetName() == svc.cluster() {
			fx.WithMTLS(c, echoID)
		}
	}
	cp.set(t, clientNode.ID(), "v1", msgs...)
	client := startSidecar(t, cp.addr, clientNode, clientIdent)
	client.outboundAt(svc.lis)
	client.waitReady(t)

	c := dialListener(t, svc, 20*time.Second)
	if _, err := io.WriteString(c, "GET /hints HTTP/1.1\r\nHost: "+svc.authority()+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp := readAfterEarlyHints(t, c)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "final" {
		t.Fatalf("final response %d %q", resp.StatusCode, body)
	}
}

// When the drain's deadline passes, a fast-path request still waiting upstream does not hold up
// Shutdown, and its client's connection is closed then (the fast path serves a connection inside the
// socket's read wait, where a plain Close would wait for the request to end).
func TestDrainDeadlineClosesFastPathRequestStuckUpstream(t *testing.T) {
	be := startBackend(t, "b", "127.0.0.1:0")
	be.delay.Store(int64(time.Hour)) // until the test ends (the backend's Close cancels it)
	svc := newService(t, echoFQDN, "127.0.0.78", be.addr)
	_, sc := mesh(t, svc)
	c := dialListener(t, svc, 20*time.Second)
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+svc.authority()+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "request upstream", func() bool { return be.hits.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- sc.p.Shutdown(ctx) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Shutdown reported a complete drain with a request still upstream")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Shutdown still blocked 15 s after its deadline, on a request waiting upstream")
	}
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("the client's connection is still open after the drain's deadline (read %d bytes)", n)
	}
}

// dialListener connects to svc's outbound listener, with a deadline for the whole test's exchange.
func dialListener(t *testing.T, svc *service, d time.Duration) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", svc.lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(d))
	return c
}

// readAfterEarlyHints reads a 103 Early Hints with the Link header the tests' apps send, then the
// final response.
func readAfterEarlyHints(t *testing.T, c net.Conn) *http.Response {
	t.Helper()
	br := bufio.NewReader(c)
	tp := textproto.NewReader(br)
	if line, _ := tp.ReadLine(); line != "HTTP/1.1 103 Early Hints" {
		t.Fatalf("first response line %q, want the 103", line)
	}
	if h, err := tp.ReadMIMEHeader(); err != nil || h.Get("Link") != "</a.css>; rel=preload" {
		t.Fatalf("103 headers %v (%v)", h, err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}
