package proxy

import (
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
)

// The forwarder proxies the bodyless, idempotent requests without an upgrade that the HTTP/1.1 fast
// path (h1server.go) serves, whatever the upstream protocol. It does for them what
// httputil.ReverseProxy with p.rewrite does — hop-by-hop and forwarding headers stripped, "TE:
// trailers" kept, no default User-Agent, 1xx responses passed on, the response's hop-by-hop headers
// dropped, announced trailers, flushing of streamed and event-stream bodies, the same error handler
// — but on the request itself rather than a deep copy of it, with the response's header map handed
// to the client's response instead of copied value by value, and without a client trace and context
// per request. In the bench's profiles those copies were a third of the allocations of a proxied
// request. Everything else (bodies, upgrades, gRPC, HTTP/2, mTLS, requests on net/http's server)
// goes through the ReverseProxy as before.
//
// The commonest of its requests (GET and HEAD to a plaintext HTTP/1.1 cluster) do not come here: the
// lean path of h1lean.go does the same for them on the raw bytes, and comes back here (forwardResponse)
// only for a response head it does not take.
//
// One difference: a response body that breaks off upstream aborts the client's response (the
// connection closes without the end of the body), as ReverseProxy does on net/http's server; behind
// the fast path ReverseProxy used to end a chunked body normally there.

// forwardable reports whether the forwarder takes r: a bodyless idempotent request of the fast path,
// without an upgrade. Its upstream may be any: the HTTP/1.1 pool (which takes exactly such requests
// itself), h2c, or mTLS HTTP/2 to another weft-proxy.
func (p *Proxy) forwardable(rs *reqState, w http.ResponseWriter, r *http.Request) bool {
	if _, ok := w.(*fastResponse); !ok || r.ProtoMajor != 1 || r.Close {
		return false
	}
	_, upgrade := r.Header["Upgrade"]
	return !upgrade && r.ContentLength == 0 && (r.Body == nil || r.Body == http.NoBody) && idempotent(r) &&
		len(r.TransferEncoding) == 0 && len(r.Trailer) == 0
}

// hopHeaders are the hop-by-hop headers ReverseProxy removes besides those named in Connection.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopByHop removes the hop-by-hop headers (RFC 9110 7.6.1) as ReverseProxy does.
func removeHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, f := range hopHeaders {
		delete(h, f)
	}
}

var (
	teTrailers = []string{"trailers"}
	// noUserAgent keeps Go's default User-Agent off an upstream request that came without one. Its
	// capacity of one makes an Add to it copy rather than write into the shared array.
	noUserAgent = []string{""}
)

// forward proxies r (see the top of this file); sw wraps the fast path's response, or any
// ResponseWriter for a request on net/http's HTTP/2 server (h2forward.go).
func (p *Proxy) forward(sw *statusWriter, r *http.Request, rs *reqState) {
	var bw bodyWriter
	if fw, ok := sw.ResponseWriter.(*fastResponse); ok {
		bw = fw
	} else {
		r.Body = http.NoBody
		bw = h2Body{sw, http.NewResponseController(sw.ResponseWriter)}
	}
	prepareForward(r, rs)
	rs.w1xx = sw
	resp, err := p.roundTrip(rs, r)
	rs.w1xx = nil
	if err != nil {
		p.proxyErrorFor(sw, r, rs, err)
		return
	}
	p.forwardResponse(sw, bw, resp) // over HTTP/2, h2WriteConn puts its frames into few writes

}

// prepareForward makes r the upstream request: ReverseProxy's header rules, the cluster's authority
// as the URL's host, the route's host rewrite.
func prepareForward(r *http.Request, rs *reqState) {
	h := r.Header
	trailers := hasToken(h["Te"], "trailers")
	removeHopByHop(h)
	if trailers {
		h["Te"] = teTrailers[:1:1]
	}
	delete(h, "Forwarded")
	delete(h, "X-Forwarded-For")
	delete(h, "X-Forwarded-Host")
	delete(h, "X-Forwarded-Proto")
	r.URL.RawQuery = cleanQueryParams(r.URL.RawQuery)
	r.URL.Scheme = "http"
	r.URL.Host = rs.authority
	if rs.route != nil && rs.route.HostRewrite != "" {
		r.Host = rs.route.HostRewrite
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = noUserAgent[:1:1]
	}
}

// bodyWriter is where a forwarded response's body goes: the fast path's fastResponse, or h2Body over
// any ResponseWriter.
type bodyWriter interface {
	io.Writer
	FlushError() error
}

// h2Body writes a body through a statusWriter and flushes through its ResponseController.
type h2Body struct {
	*statusWriter
	rc *http.ResponseController
}

func (b h2Body) FlushError() error { return b.rc.Flush() }

// forwardResponse sends resp to the client as ReverseProxy does; a body that breaks off panics with
// http.ErrAbortHandler. bw writes to sw's ResponseWriter.
func (p *Proxy) forwardResponse(sw *statusWriter, bw bodyWriter, resp *http.Response) {
	removeHopByHop(resp.Header)
	if fw, ok := bw.(*fastResponse); !ok || !fw.adoptHeader(resp.Header) {
		copyHeader(sw.Header(), resp.Header)
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		sw.Header().Add("Trailer", strings.Join(keys, ", "))
	}
	sw.WriteHeader(resp.StatusCode)
	_, _, err := copyBody(bw, resp)
	if err != nil {
		resp.Body.Close()
		p.log.Debug("response body copy failed", "err", err)
		panic(http.ErrAbortHandler)
	}
	resp.Body.Close() // now, to fill resp.Trailer
	if len(resp.Trailer) > 0 {
		_ = bw.FlushError() // so that the trailers can follow (chunked on HTTP/1.1)
	}
	if len(resp.Trailer) == 0 {
		return
	}
	if len(resp.Trailer) == announced {
		copyHeader(sw.Header(), resp.Trailer)
		return
	}
	for k, vv := range resp.Trailer {
		k = http.TrailerPrefix + k
		for _, v := range vv {
			sw.Header().Add(k, v)
		}
	}
}

// forward1xx passes an informational response on to the client, as ReverseProxy's client trace does.
func (rs *reqState) forward1xx(code int, header textproto.MIMEHeader) error {
	h := rs.w1xx.Header()
	copyHeader(h, http.Header(header))
	rs.w1xx.WriteHeader(code)
	clear(h) // WriteHeader does not reset the headers after a 1xx
	return nil
}

// copyBody copies the response body to the client. As ReverseProxy, a body of unknown length or an
// event stream is flushed as it comes (the head at once), any other body when the response ends.
// It returns the bytes copied and whether it flushed.
func copyBody(w bodyWriter, resp *http.Response) (n int64, flush bool, err error) {
	flush = resp.ContentLength == -1 || eventStream(resp.Header.Get("Content-Type"))
	if flush {
		if err := w.FlushError(); err != nil {
			return n, flush, err
		}
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		m, rerr := resp.Body.Read(buf)
		if m > 0 {
			if _, err := w.Write(buf[:m]); err != nil {
				return n, flush, err
			}
			n += int64(m)
			if flush {
				if err := w.FlushError(); err != nil {
					return n, flush, err
				}
			}
		}
		if rerr == io.EOF {
			return n, flush, nil
		}
		if rerr != nil {
			return n, flush, rerr
		}
	}
}

// eventStream reports whether a Content-Type is text/event-stream, parameters aside.
func eventStream(ct string) bool {
	base, _, _ := strings.Cut(ct, ";")
	return strings.EqualFold(strings.TrimSpace(base), "text/event-stream")
}

func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

// cleanQueryParams removes the query parameters ReverseProxy's Rewrite mode removes: a query with a
// semicolon or a bad escape is parsed and encoded again (net/http/httputil's cleanQueryParams).
func cleanQueryParams(s string) string {
	reencode := func(s string) string {
		v, _ := url.ParseQuery(s)
		return v.Encode()
	}
	for i := 0; i < len(s); {
		switch s[i] {
		case ';':
			return reencode(s)
		case '%':
			if i+2 >= len(s) || !ishex(s[i+1]) || !ishex(s[i+2]) {
				return reencode(s)
			}
			i += 3
		default:
			i++
		}
	}
	return s
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
