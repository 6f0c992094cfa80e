package proxy

import (
	"bufio"
	"bytes"
	"net/http"
	"net/url"
	"testing"
)

// writeRequest writes the bytes Request.Write writes, for the requests it takes and those it hands on.
func TestWriteRequestAsRequestWrite(t *testing.T) {
	mk := func(method, u, host string, h http.Header) *http.Request {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		if h == nil {
			h = http.Header{}
		}
		return &http.Request{Method: method, URL: pu, Host: host, Header: h, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
	}
	for _, req := range []*http.Request{
		mk("GET", "http://a.example:80/", "a.example", nil),
		mk("GET", "http://a.example/p%20q/r?x=1&y=%2F", "", http.Header{"Accept": {"*/*"}, "X-B": {"1", "2"}, "A": {" padded "}}),
		mk("HEAD", "http://a.example/", "a.example:8080", http.Header{"User-Agent": {""}}),
		mk("GET", "http://a.example/", "a.example", http.Header{"User-Agent": {" curl/8 "}, "Content-Length": {"5"}, "Trailer": {"X"}}),
		mk("GET", "http://a.example/", "a.example", http.Header{"X-Multi": {"a\r\nb"}}),
		mk("GET", "http://a.example/", "[fe80::1%25eth0]:80", nil), // zone: Request.Write's own path
		mk("GET", "http://a.example/", "bücher.example", nil),      // punycode: Request.Write's own path
		mk("DELETE", "http://a.example/x", "a.example", nil),       // Content-Length: 0: Request.Write's own path
		mk("OPTIONS", "*", "a.example", nil),
	} {
		var want, got bytes.Buffer
		werr := req.Write(&want)
		bw := bufio.NewWriter(&got)
		gerr := writeRequest(bw, req)
		_ = bw.Flush()
		if (werr == nil) != (gerr == nil) || got.String() != want.String() {
			t.Errorf("%s %s (host %q):\nRequest.Write %q (%v)\nwriteRequest  %q (%v)", req.Method, req.URL, req.Host, want.String(), werr, got.String(), gerr)
		}
	}
}
