package proxy_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/weftmesh/weft/dataplane/proxy"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

// scriptedApp answers each request with the response its X-Reply header names (an index into
// replies), recording the request heads it gets; it closes a connection after a response that asks
// for it or has no length.
func scriptedApp(t testing.TB, replies []string) (netip.AddrPort, chan string) {
	l := listen(t, "127.0.0.1:0")
	heads := make(chan string, 16)
	serveEach(l, func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			var head strings.Builder
			idx := 0
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				head.WriteString(line)
				if v, ok := strings.CutPrefix(line, "X-Reply: "); ok {
					for _, ch := range strings.TrimSpace(v) {
						idx = idx*10 + int(ch-'0')
					}
				}
				if line == "\r\n" {
					break
				}
			}
			heads <- head.String()
			reply := replies[idx]
			if strings.HasPrefix(head.String(), "HEAD ") {
				reply = reply[:strings.LastIndex(reply, "\r\n\r\n")+4] // no body after HEAD
			}
			if _, err := io.WriteString(c, reply); err != nil {
				return
			}
			if strings.Contains(reply, "Connection: close") || !strings.Contains(reply, "Content-Length") && !strings.Contains(reply, "chunked") {
				return
			}
		}
	})
	return netip.MustParseAddrPort(l.Addr().String()), heads
}

var dateLine = regexp.MustCompile(`\r\nDate: [^\r]*\r\n`)

// The lean path and today's path, end to end through a proxy: for each request head and upstream
// response, the app gets the same request bytes and the client the same response bytes (Dates aside),
// whether the lean path takes the exchange or falls back for the request or the response.
func TestLeanPathEndToEndMatchesToday(t *testing.T) {
	replies := []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-B: 1\r\nx-a: 2\r\nDate: Wed, 02 Dec 2026 08:00:00 GMT\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n<html></html>"[:len("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n<html></html>")-1],
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
		"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: x-hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\nnop",
		"HTTP/1.1 204 No Content\r\nContent-Type: text/plain\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\nbye",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nunframed to the end",
		"HTTP/1.1 200 OK\r\nContent-Length: 6000\r\nContent-Type: application/octet-stream\r\n\r\n" + strings.Repeat("z", 6000),
		"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Type: text/plain\r\nX-Big: " + strings.Repeat("h", 5000) + "\r\n\r\nbig!",
	}
	app, heads := scriptedApp(t, replies)
	svc := newService(t, echoFQDN, "127.0.0.76", app)
	_, sc := mesh(t, svc)
	reqs := []string{
		"GET /a?x=1 HTTP/1.1\r\nHost: %s\r\nUser-Agent: t\r\nAccept: */*\r\nx-reply: %d\r\n\r\n",
		"HEAD /a HTTP/1.1\r\nHost: %s\r\nX-Reply: %d\r\n\r\n",
		"GET /b HTTP/1.1\r\nHost: %s\r\nTe: trailers\r\nX-Forwarded-For: 1.2.3.4\r\nB: 2\r\nA: 1\r\nb: 3\r\nX-Reply: %d\r\n\r\n",
		"GET /c%%20d HTTP/1.1\r\nHost: %s\r\nX-Reply: %d\r\n\r\n",                // escaped path: today's path
		"GET /d HTTP/1.1\r\nHost: %s\r\nPragma: no-cache\r\nX-Reply: %d\r\n\r\n", // today's path
	}
	exchange := func(reqFmt string, reply int) (up, down string) {
		t.Helper()
		c := dialListener(t, svc, 20*time.Second)
		defer c.Close()
		if _, err := io.WriteString(c, fmtReq(reqFmt, svc.authority(), reply)); err != nil {
			t.Fatal(err)
		}
		var raw bytes.Buffer
		br := bufio.NewReader(io.TeeReader(c, &raw))
		method := strings.Fields(reqFmt)[0]
		for {
			resp, err := http.ReadResponse(br, &http.Request{Method: method})
			if err != nil {
				t.Fatalf("reply %d to %q: %v", reply, reqFmt, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode >= 200 {
				break
			}
		}
		select {
		case up = <-heads:
		case <-time.After(20 * time.Second):
			t.Fatal("the app got no request")
		}
		got := raw.String()[:raw.Len()-br.Buffered()]
		return up, dateLine.ReplaceAllString(got, "\r\nDate: -\r\n")
	}
	for _, reqFmt := range reqs {
		for i := range replies {
			if strings.HasPrefix(reqFmt, "HEAD") && (i == 7 || i == 2) {
				continue // a body to the end of the connection or chunked after HEAD: not a valid exchange
			}
			proxy.SetLeanOff(true)
			m0 := seriesValues(t, sc.reg)
			wantUp, wantDown := exchange(reqFmt, i)
			m1 := seriesValues(t, sc.reg)
			proxy.SetLeanOff(false)
			gotUp, gotDown := exchange(reqFmt, i)
			m2 := seriesValues(t, sc.reg)
			if want, got := seriesDelta(m0, m1), seriesDelta(m1, m2); !maps.Equal(got, want) {
				t.Errorf("request %q, reply %d: metrics moved by %v, want %v", reqFmt, i, got, want)
			}
			if gotUp != wantUp {
				t.Errorf("request %q, reply %d: the app got\n%.300q\nwant %.300q", reqFmt, i, gotUp, wantUp)
			}
			if gotDown != wantDown {
				t.Errorf("request %q, reply %d: the client got\n%.300q\nwant %.300q", reqFmt, i, gotDown, wantDown)
			}
		}
	}
}

func fmtReq(f, authority string, reply int) string {
	f = strings.Replace(f, "%s", authority, 1)
	f = strings.Replace(f, "%d", string(rune('0'+reply)), 1)
	return strings.ReplaceAll(f, "%%", "%")
}

// A pooled connection keeps the deadline of the lean request that used it last (a route timeout):
// a request on today's path that takes the connection later clears it, and goes out on the same
// connection rather than failing on the expired deadline and dialing again.
func TestLeanDeadlineClearedForTodaysPath(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	var accepted atomic.Int64
	resp := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
	serveEach(l, func(c net.Conn) {
		accepted.Add(1)
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\r\n" {
				if _, err := io.WriteString(c, resp); err != nil {
					return
				}
			}
		}
	})
	svc := newService(t, echoFQDN, "127.0.0.77", netip.MustParseAddrPort(l.Addr().String()))
	svc.route = fx.Route{Timeout: 50 * time.Millisecond}
	mesh(t, svc)
	c := dialListener(t, svc, 20*time.Second)
	br := bufio.NewReader(c)
	send := func(target string) {
		t.Helper()
		if _, err := io.WriteString(c, "GET "+target+" HTTP/1.1\r\nHost: "+svc.authority()+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		r, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(r.Body)
		if r.StatusCode != 200 || string(body) != "ok" {
			t.Fatalf("GET %s: %d %q (weft-error %q)", target, r.StatusCode, body, r.Header.Get("Weft-Error"))
		}
	}
	send("/lean")
	passed := time.Now().Add(100 * time.Millisecond) // the lean request's deadline is behind us then
	waitFor(t, "the route timeout to pass", func() bool { return time.Now().After(passed) })
	send("/today%20path") // an escaped path: today's path, on the pooled connection
	send("/lean-again")
	if n := accepted.Load(); n != 1 {
		t.Errorf("the app accepted %d connections, want 1 (the pooled one, reused)", n)
	}
}

// seriesValues are the request, response and latency series of the proxy's HTTP metrics, by name and
// labels (a histogram by its count).
func seriesValues(t *testing.T, reg *metrics.Set) map[string]float64 {
	t.Helper()
	mfs := scrapeMetrics(t, reg)
	out := map[string]float64{}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "request_total", "response_total", "response_latency_ms":
		default:
			continue
		}
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, lp := range m.GetLabel() {
				key += fmt.Sprintf(" %s=%q", lp.GetName(), lp.GetValue())
			}
			if h := m.GetHistogram(); h != nil {
				out[key] = float64(h.GetSampleCount())
			} else {
				out[key] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

func seriesDelta(before, after map[string]float64) map[string]float64 {
	d := map[string]float64{}
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}
