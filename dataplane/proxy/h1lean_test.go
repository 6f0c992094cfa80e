package proxy

import (
	"bufio"
	"bytes"

	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/dataplane/config"
)

// refUpstream is what today's path sends upstream for a request head: http.ReadRequest, the
// forwarder's header rules, writeRequest. ok false: it answers 400.
func refUpstream(head []byte, hostRewrite string) (string, bool) {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	if err != nil || !validHost(req.Host) {
		return "", false
	}
	rs := &reqState{authority: "up.example:80", route: &config.Route{HostRewrite: hostRewrite}}
	prepareForward(req, rs)
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	if err := writeRequest(bw, req); err != nil {
		return "", false
	}
	_ = bw.Flush()
	return b.String(), true
}

func leanUpstream(head []byte, hostRewrite string) (string, bool) {
	var q leanReq
	if !q.parse(head) {
		return "", false
	}
	return string(q.appendUpstream(nil, hostRewrite)), true
}

// refClient is what today's path sends the client for an upstream response: http.ReadResponse, the
// forwarder, fastResponse.
func refClient(t testing.TB, raw []byte, headReq, closeAfter bool) (string, bool) {
	m := http.MethodGet
	if headReq {
		m = http.MethodHead
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), &http.Request{Method: m})
	if err != nil || resp.StatusCode < 200 {
		return "", false
	}
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	fw := &fastResponse{bw: bw, method: m, contentLength: -1, closeAfter: closeAfter}
	sw := &statusWriter{ResponseWriter: fw}
	p := &Proxy{log: slog.New(slog.DiscardHandler)}
	aborted := false
	func() {
		defer func() {
			if v := recover(); v != nil {
				aborted = true
			}
		}()
		p.forwardResponse(sw, fw, resp)
	}()
	if aborted {
		return "", false
	}
	fw.finish()
	_ = bw.Flush()
	return b.String(), true
}

// leanClient is the lean path's bytes for the same response (date: the Date it adds when missing).
func leanClient(raw []byte, headReq, closeAfter bool, date string) (string, bool) {
	i := bytes.Index(raw, crlfcrlf)
	if i < 0 {
		return "", false
	}
	hl := i + 4
	var r leanResp
	if !r.parse(raw[:hl], headReq) {
		return "", false
	}
	n := r.bodyLen(headReq)
	if int64(len(raw)-hl) < n {
		return "", false
	}
	body := raw[hl : int64(hl)+n]
	var first []byte
	if !r.hasCT {
		first = body
	}
	out := r.appendClient(nil, headReq, first, []byte(date), closeAfter)
	return string(append(out, body...)), true
}

// dateOf is the Date header of a response the proxy wrote (to give the lean path the same one).
func dateOf(s string) string {
	_, after, ok := strings.Cut(s, "\r\nDate: ")
	if !ok {
		return time.Now().UTC().Format(http.TimeFormat)
	}
	d, _, _ := strings.Cut(after, "\r\n")
	return d
}

var leanRequestCorpus = []string{
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /p?a=1&b=2 HTTP/1.1\r\nHost: svc.ns:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n",
	"HEAD /x HTTP/1.1\r\nhost: a\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost:    a   \r\nx-lower: 1\r\nX-UPPER: 2\r\nx-Mixed-CASE: 3\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nAccept: a\r\nAccept: b\r\nZ: z\r\nB: b\r\naccept: c\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nTe: trailers, deflate\r\nKeep-Alive: 300\r\nProxy-Authorization: x\r\nProxy-Connection: keep-alive\r\nForwarded: for=1\r\nX-Forwarded-For: 1\r\nX-Forwarded-Host: h\r\nX-Forwarded-Proto: http\r\nX-Keep: k\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nTe: deflate\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nUser-Agent: one\r\nUser-Agent: two\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nUser-Agent:\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nEmpty:\r\nTab:\tv\t\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nX-Long: " + strings.Repeat("v", 2000) + "\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nX-Utf8: caf\xc3\xa9\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n  b\r\n\r\n",               // obs-fold
	"GET /a HTTP/1.1\r\nHost: a\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n",  // Connection-listed
	"GET /a HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\n\r\n",               // Cache-Control added
	"GET /a%20b HTTP/1.1\r\nHost: a\r\n\r\n",                               // escaped path
	"GET /a?x=%zz HTTP/1.1\r\nHost: a\r\n\r\n",                             // query re-encoded
	"GET /a?x=1;y=2 HTTP/1.1\r\nHost: a\r\n\r\n",                           // semicolon
	"GET /a? HTTP/1.1\r\nHost: a\r\n\r\n",                                  // empty query
	"GET /a?? HTTP/1.1\r\nHost: a\r\n\r\n",                                 //
	"GET //x/y HTTP/1.1\r\nHost: a\r\n\r\n",                                //
	"GET /a:b@c!$&'()*+,= HTTP/1.1\r\nHost: a\r\n\r\n",                     //
	"GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n",                           // absolute-form
	"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",                        // two Hosts
	"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n",                                 // bad Host
	"GET /a HTTP/1.1\r\nHost: [fe80::1%25eth0]:80\r\n\r\n",                 // zone
	"GET /a HTTP/1.1\r\n\r\n",                                              // no Host
	"GET /a HTTP/1.1\r\nHost: a\r\nBad Key: v\r\n\r\n",                     // space in key
	"GET /a HTTP/1.1\r\nHost: a\r\nKey : v\r\n\r\n",                        //
	"GET /a HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",                      // CTL in value
	"GET /a HTTP/1.1\r\nHost: a\r\nX: a\nY: b\r\n\r\n",                     // bare LF
	"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",                                 // space in target
	"GET  /a HTTP/1.1\r\nHost: a\r\n\r\n",                                  //
	"get /a HTTP/1.1\r\nHost: a\r\n\r\n",                                   //
	"POST /a HTTP/1.1\r\nHost: a\r\n\r\n",                                  //
	"OPTIONS /a HTTP/1.1\r\nHost: a\r\n\r\n",                               //
	"GET /a HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc\r\n\r\n", //
	"GET /a HTTP/1.1\r\nHost: a\r\nGrpc-Timeout: 1S\r\n\r\n",               //
	"GET /a HTTP/1.1\r\nHost: a\r\nX-Weird_Key.~!#$%&'*+^`|: v\r\n\r\n",    // token bytes
	"GET /a HTTP/1.1\r\nHost: a\r\nCookie: a=1\r\nCookie: b=2\r\nAccept-Encoding: gzip\r\n\r\n",
}

// The lean parser writes the same upstream head as today's path for every head it takes, and takes
// the common ones.
func TestLeanRequestMatchesReference(t *testing.T) {
	taken := 0
	for _, head := range leanRequestCorpus {
		for _, rewrite := range []string{"", "other.example"} {
			want, wok := refUpstream([]byte(head), rewrite)
			got, gok := leanUpstream([]byte(head), rewrite)
			if !gok {
				continue
			}
			taken++
			if !wok {
				t.Errorf("lean took %q, which net/http refuses", head)
				continue
			}
			if got != want {
				t.Errorf("%q (rewrite %q):\nlean %q\nwant %q", head, rewrite, got, want)
			}
		}
	}
	for _, head := range leanRequestCorpus[:12] {
		if _, ok := leanUpstream([]byte(head), ""); !ok {
			t.Errorf("the lean path does not take the common head %q", head)
		}
	}
	if taken == 0 {
		t.Fatal("nothing taken")
	}
}

var leanResponseCorpus = []string{
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nDate: Wed, 02 Dec 2026 08:00:00 GMT\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",                                    // Date added, type sniffed
	"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n<html>hi</html",                          // sniffed as HTML
	"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",                                         //
	"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-b: 1\r\nx-a: 2\r\nX-A: 3\r\n\r\nnop", // sorted, repeated
	"HTTP/1.1 200 Whatever\r\nContent-Length: 1\r\n\r\nx",                                  // reason replaced
	"HTTP/1.1 299\r\nContent-Length: 1\r\n\r\nx",                                           // no text
	"HTTP/1.1 599 Odd\r\nContent-Length: 1\r\n\r\nx",                                       //
	"HTTP/1.1 204 No Content\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 304 Not Modified\r\nEtag: \"x\"\r\n\r\n", //
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", //
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nProxy-Authenticate: x\r\nTe: y\r\nUpgrade: z\r\nProxy-Connection: k\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length:  007 \r\n\r\n1234567", //
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",       // repeated
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", //
	"HTTP/1.1 200 OK\r\n\r\nto the end",                                         // unframed
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nPragma: no-cache\r\n\r\nok",        //
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Fold: a\r\n b\r\n\r\nok",         //
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/event-stream\r\n\r\nok",
	"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", //
	"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 20x OK\r\nContent-Length: 2\r\n\r\nok",                    //
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nGrpc-Status: 14\r\n\r\nok", //
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: caf\xc3\xa9\r\n\r\nok",  //
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: a\x7fb\r\n\r\nok",       //
	"HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok",                      // bare LF
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Key: 1\r\n\r\nok",      //
}

// The lean response path writes the same bytes to the client as today's path for every response head
// it takes (GET and HEAD, with and without a drain's Connection: close), and takes the common ones.
func TestLeanResponseMatchesReference(t *testing.T) {
	for i, raw := range leanResponseCorpus {
		for _, headReq := range []bool{false, true} {
			for _, closeAfter := range []bool{false, true} {
				want, wok := refClient(t, []byte(raw), headReq, closeAfter)
				got, gok := leanClient([]byte(raw), headReq, closeAfter, dateOf(want))
				if !gok {
					if i < 14 && !headReq && !closeAfter {
						t.Errorf("the lean path does not take the common response %q", raw)
					}
					continue
				}
				if !wok {
					t.Errorf("lean took %q, which net/http refuses", raw)
					continue
				}
				if got != want {
					t.Errorf("%q (HEAD %v, close %v):\nlean %q\nwant %q", raw, headReq, closeAfter, got, want)
				}
			}
		}
	}
}

// FuzzLeanRequest: a head the lean parser takes is one http.ReadRequest takes, and the upstream
// bytes are the same.
func FuzzLeanRequest(f *testing.F) {
	for _, h := range leanRequestCorpus {
		f.Add([]byte(h))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		i := bytes.Index(b, crlfcrlf)
		if i < 0 {
			return
		}
		head := b[:i+4]
		if !fastHead(head) {
			return
		}
		got, gok := leanUpstream(head, "")
		if !gok {
			return
		}
		want, wok := refUpstream(head, "")
		if !wok {
			t.Fatalf("lean took %q, which net/http refuses", head)
		}
		if got != want {
			t.Fatalf("%q:\nlean %q\nwant %q", head, got, want)
		}
	})
}

// FuzzLeanResponse: a response head the lean parser takes is one http.ReadResponse takes, and the
// client gets the same bytes.
func FuzzLeanResponse(f *testing.F) {
	for _, r := range leanResponseCorpus {
		f.Add([]byte(r), false)
	}
	f.Fuzz(func(t *testing.T, raw []byte, headReq bool) {
		if len(raw) > 4000 {
			return
		}
		_, gok := leanClient(raw, headReq, false, "")
		if !gok {
			return
		}
		want, wok := refClient(t, raw, headReq, false)
		if !wok {
			t.Fatalf("lean took %q, which net/http refuses", raw)
		}
		if got2, _ := leanClient(raw, headReq, false, dateOf(want)); got2 != want {
			t.Fatalf("%q:\nlean %q\nwant %q", raw, got2, want)
		}
	})
}
