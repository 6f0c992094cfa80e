package proxy_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/dataplane/proxy"
)

// recordingApp is a raw TCP upstream: it records exactly the bytes each connection brings, and answers
// each request it reads whole (head and body) with reply(request). Requests are counted afterwards,
// from the recorded bytes alone (requests).
type recordingApp struct {
	addr  netip.AddrPort
	reply func(*http.Request) string

	mu    sync.Mutex // guards conns
	conns []*bytes.Buffer
}

func startRecordingApp(t *testing.T) *recordingApp {
	t.Helper()
	a := &recordingApp{reply: func(*http.Request) string {
		return "HTTP/1.1 200 OK\r\nX-App: raw\r\nContent-Length: 2\r\n\r\nok"
	}}
	l := listen(t, "127.0.0.1:0")
	a.addr = netip.MustParseAddrPort(l.Addr().String())
	// The proxies keep their upstream connections to the app open after the test: closing them ends
	// the app's readers and the proxies' transport goroutines (goleak checks for them).
	var open []net.Conn
	t.Cleanup(func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, c := range open {
			c.Close()
		}
	})
	serveEach(l, func(c net.Conn) {
		defer c.Close()
		rec := &bytes.Buffer{}
		a.mu.Lock()
		a.conns = append(a.conns, rec)
		open = append(open, c)
		a.mu.Unlock()
		br := bufio.NewReader(io.TeeReader(c, lockedWriter{&a.mu, rec}))
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return
			}
			if _, err := io.WriteString(c, a.reply(req)); err != nil {
				return
			}
		}
	})
	return a
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// requests parses the recorded bytes of each connection as a stream of requests and lists those
// tagged X-Case: tag as "METHOD host path": what an upstream that reads exactly these bytes takes for
// requests. raw is every recorded byte.
func (a *recordingApp) requests(tag string) (reqs []string, raw string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var all strings.Builder
	for _, b := range a.conns {
		all.Write(b.Bytes())
		br := bufio.NewReader(bytes.NewReader(b.Bytes()))
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				break
			}
			if req.Header.Get("X-Case") == tag {
				reqs = append(reqs, req.Method+" "+req.Host+" "+req.URL.Path)
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				break
			}
		}
	}
	return reqs, all.String()
}

// smuggleCase is one request stream a client sends; "{T}" is the request target of the mode (a path,
// or an absolute URL for the explicit proxy), "{H}" the service's authority, "{S}" the smuggled request.
type smuggleCase struct {
	name string
	send string
	// then is sent after the first response (200-with-Upgrade: the bytes a tunnel would carry).
	then string
}

// smuggled is the request hidden in each case: to the service's own authority, so that a proxy that
// took it for a request would forward it, and the upstream would see it.
// Every request of a case carries its X-Case tag: the upstream's count is of the case's own requests.
const smuggled = "GET /smuggled HTTP/1.1\r\nHost: {H}\r\nX-Case: {C}\r\n\r\n"

func smuggleCases(authority, tag string) []smuggleCase {
	smuggled := strings.ReplaceAll(strings.ReplaceAll(smuggled, "{H}", authority), "{C}", tag)
	chunk := func(s string) string { return fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(s), s) }
	withLen := func(f, body string) string {
		return strings.ReplaceAll(f, "{N}", fmt.Sprint(len(body))) + body
	}
	big := strings.Repeat("a", 1<<20+8<<10)
	cases := []smuggleCase{
		// CL.TE: a parser framing by Content-Length takes the chunk end and {S} for body; one framing
		// by Transfer-Encoding reads {S} as the next request.
		{name: "CL.TE", send: withLen("POST {T} HTTP/1.1\r\nHost: {H}\r\nContent-Length: {N}\r\nTransfer-Encoding: chunked\r\n\r\n", "0\r\n\r\n"+smuggled)},
		// TE.CL: the other way round: the chunk holds {S}, the Content-Length ends before it.
		{name: "TE.CL", send: "POST {T} HTTP/1.1\r\nHost: {H}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(smuggled)},
		{name: "duplicate Content-Length, different", send: "POST {T} HTTP/1.1\r\nHost: {H}\r\nContent-Length: 0\r\n" + withLen("Content-Length: {N}\r\n\r\n", smuggled)},
		{name: "duplicate Content-Length, equal", send: withLen("POST {T} HTTP/1.1\r\nHost: {H}\r\nContent-Length: {N}\r\nContent-Length: {N}\r\n\r\n", smuggled)},
		{name: "TE chunked, identity", send: withLen("POST {T} HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: {N}\r\n\r\n", chunk(smuggled))},
		{name: "TE xchunked", send: "POST {T} HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: xchunked\r\n\r\n" + chunk(smuggled)},
		{name: "TE leading space", send: "POST {T} HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding:  chunked\r\n\r\n" + chunk(smuggled)},
		{name: "TE tab", send: "POST {T} HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding:\tchunked\r\n\r\n" + chunk(smuggled)},
		{name: "TE space before colon", send: "POST {T} HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding : chunked\r\n\r\n" + chunk(smuggled)},
		{name: "TE obs-fold", send: "POST {T} HTTP/1.1\r\nHost: {H}\r\nX-Pad: a\r\n Transfer-Encoding: chunked\r\n\r\n" + chunk(smuggled)},
		{name: "two TE headers", send: "POST {T} HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n" + chunk(smuggled)},
		// A bare LF ends a line for some parsers only: for them the Content-Length exists and {S} is body.
		{name: "bare LF in the head", send: withLen("GET {T} HTTP/1.1\r\nHost: {H}\r\nX-Pad: a\nContent-Length: {N}\r\n\r\n", smuggled)},
		{name: "bare LF line ends", send: "GET {T} HTTP/1.1\nHost: {H}\n\n" + smuggled},
		// Go CVE-2025-22871: a bare LF after a chunk size.
		{name: "bare LF in a chunk size", send: fmt.Sprintf("POST {T} HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n%x\n%s\r\n0\r\n\r\n", len(smuggled), smuggled)},
		{name: "h2c upgrade", send: "GET {T} HTTP/1.1\r\nHost: {H}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"},
		{name: "1 MB of headers", send: "GET {T} HTTP/1.1\r\nHost: {H}\r\nX-Big: " + big + "\r\n\r\n"},
		// Envoy CVE-2024-23326: the upstream answers an upgrade with a 200 that names an Upgrade; a proxy
		// that takes it for a switch tunnels the client's next bytes to the upstream unparsed.
		{name: "200 with Upgrade", send: "GET /ws HTTP/1.1\r\nHost: {H}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
			then: "GET /smuggled HTTP/1.1\r\nHost: evil.example\r\nX-Case: {C}\r\n\r\n"},
	}
	for i := range cases {
		// The tag goes on the first header line (after the request line), and in the tunnelled bytes.
		c := &cases[i]
		line, rest, _ := strings.Cut(c.send, "\n")
		c.send = line + "\nX-Case: " + tag + "\r\n" + rest
		c.then = strings.ReplaceAll(c.then, "{C}", tag)
	}
	return cases
}

// TestSmugglingCorpus sends each request of the corpus through the proxy's HTTP/1.1 paths: the fast
// path (lean on and off) of the outbound listener, the explicit HTTP proxy, and net/http's server on a
// connection it took over after a first request with a body; to a raw upstream that records the
// bytes that reach it. In every case the client gets a clear 400,
// 431 or 501, or one upstream answer and then a closed connection; the upstream gets at most one
// request, never the smuggled one, and never an h2c upgrade.
func TestSmugglingCorpus(t *testing.T) {
	app := startRecordingApp(t)
	app.reply = func(r *http.Request) string {
		if r.URL.Path == "/ws" {
			return "HTTP/1.1 200 OK\r\nX-App: raw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nno"
		}
		return "HTTP/1.1 200 OK\r\nX-App: raw\r\nContent-Length: 2\r\n\r\nok"
	}
	svc := newService(t, echoFQDN, "127.0.0.77", app.addr)
	_, sc := mesh(t, svc)

	modes := []struct {
		name   string
		addr   string
		target string
		lean   bool
		// first is a request sent and answered before the case on the same connection: a POST with a
		// body hands the connection to net/http's server, which then reads the case.
		first string
	}{
		{"fast path, lean", svc.lis.Addr().String(), "/", true, ""},
		{"fast path, lean off", svc.lis.Addr().String(), "/", false, ""},
		{"explicit proxy", sc.httpAddr, "http://" + svc.authority() + "/", true, ""},
		{"net/http after a handover", svc.lis.Addr().String(), "/", true, "POST /first HTTP/1.1\r\nHost: {H}\r\nContent-Length: 2\r\n\r\nhi"},
	}
	total := 0
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			proxy.SetLeanOff(!m.lean)
			t.Cleanup(func() { proxy.SetLeanOff(false) })
			for i, tc := range smuggleCases(svc.authority(), "") {
				t.Run(tc.name, func(t *testing.T) {
					if m.first != "" && (tc.name == "TE obs-fold" || tc.name == "bare LF line ends") {
						// Known gap: once net/http's server has a connection it reads every later
						// request itself, and it accepts a bare LF as a line end and merges an obs-fold
						// into the header before (both allowed by RFC 9112 §2.2 and §5.2). The requests
						// reach the upstream re-framed, so weft and the upstream agree; a proxy in front
						// of weft that read these heads the other way would not.
						t.Skip("known gap: net/http's server accepts bare LF and obs-fold on a connection it already serves")
					}
					total++
					tag := fmt.Sprintf("%s-%d", m.name, i)
					tc := smuggleCases(svc.authority(), tag)[i]
					expand := func(s string) string {
						s = strings.ReplaceAll(s, "{T}", m.target)
						if m.target != "/" {
							s = strings.ReplaceAll(s, "GET /ws ", "GET "+strings.TrimSuffix(m.target, "/")+"/ws ")
							s = strings.ReplaceAll(s, "GET /smuggled HTTP/1.1\r\nHost: evil", "GET http://evil.example/smuggled HTTP/1.1\r\nHost: evil")
						}
						return strings.ReplaceAll(s, "{H}", svc.authority())
					}
					statuses, closed := exchangeRaw(t, m.addr, expand(m.first), expand(tc.send), expand(tc.then))
					reqs, raw := app.requests(tag)
					fromApp := 0
					for _, s := range statuses {
						if strings.HasPrefix(s, "200 app") {
							fromApp++
						}
					}
					t.Logf("client got %v (closed %v); upstream got %q", statuses, closed, reqs)
					if len(reqs) > 1 || fromApp > 1 {
						t.Errorf("the upstream got %d requests %q (%d answers reached the client): want at most one", len(reqs), reqs, fromApp)
					}
					for _, r := range reqs {
						if strings.Contains(r, "/smuggled") {
							t.Errorf("the smuggled request reached the upstream: %q", reqs)
						}
					}
					if strings.Contains(strings.ToLower(raw), "upgrade: h2c") {
						t.Errorf("an h2c upgrade reached the upstream:\n%.500q", raw)
					}
					refused := len(statuses) > 0 && (strings.HasPrefix(statuses[0], "400") || strings.HasPrefix(statuses[0], "431") || strings.HasPrefix(statuses[0], "501"))
					switch {
					case tc.then != "":
						// The 200 is an ordinary response: the next bytes are a request of their own,
						// routed by the proxy (no route for evil.example), not tunnelled.
						if len(statuses) != 2 || !strings.HasPrefix(statuses[0], "200 app") || strings.HasPrefix(statuses[1], "200 app") {
							t.Errorf("client got %v, want the upstream's 200 then the proxy's own answer to the next request", statuses)
						}
					case refused || len(statuses) == 0:
						if !closed {
							t.Errorf("client got %v and the connection stays open: want it closed", statuses)
						}
					case len(statuses) == 1 && fromApp == 1:
						// One request, framed one way only (RFC 9112: Transfer-Encoding with OWS, equal
						// Content-Lengths); the connection then closes or stays open for the next.
					default:
						t.Errorf("client got %v (closed %v): want a 400, 431 or 501, or one upstream answer", statuses, closed)
					}
				})
			}
		})
	}
	t.Logf("%d smuggling cases through %d HTTP/1.1 paths", total, len(modes))
}

// exchangeRaw writes send on a new connection to addr, reads the responses (then writes then, if any,
// and reads again) and finally half-closes and reads until the proxy closes the connection. It
// returns each response as "<code> app|proxy" and whether the connection closed (not only timed out).
func exchangeRaw(t *testing.T, addr, first, send, then string) (statuses []string, closed bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	if first != "" {
		if _, err := io.WriteString(c, first); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 || resp.Close {
			t.Fatalf("the first request: %v %v", resp, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	// The proxy may answer (431) and close before it has read all of a large request: write in the
	// background, so that a write refused by the closed connection does not hide the answer.
	wrote := make(chan error, 1)
	go func() { _, err := io.WriteString(c, send); wrote <- err }()
	read := func() bool {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("no answer and no close in 20 s (so far %v)", statuses)
			}
			closed = true
			return false
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		resp.Body.Close()
		who := "proxy"
		if resp.Header.Get("X-App") == "raw" {
			who = "app"
		}
		statuses = append(statuses, fmt.Sprintf("%d %s %q", resp.StatusCode, who, bytes.TrimSpace(body)))
		return !resp.Close
	}
	open := read()
	if werr := <-wrote; werr != nil {
		open = false
	}
	if open && then != "" {
		if _, err := io.WriteString(c, then); err == nil {
			open = read()
		}
	}
	if !open {
		// One more read: the connection must be at its end.
		if _, err := br.ReadByte(); err != nil {
			var ne net.Error
			closed = !(errors.As(err, &ne) && ne.Timeout())
		}
		return statuses, closed
	}
	// Still open: no more requests from us; whatever the proxy still reads as requests it answers
	// before it closes.
	_ = c.(*net.TCPConn).CloseWrite()
	for read() {
	}
	if !closed {
		if _, err := br.ReadByte(); err != nil {
			var ne net.Error
			closed = !(errors.As(err, &ne) && ne.Timeout())
		}
	}
	return statuses, closed
}
