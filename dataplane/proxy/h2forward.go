package proxy

import (
	"io"
	"net/http"
	"strings"
)

// The HTTP/2 forwarder proxies bodyless idempotent requests that arrive on net/http's HTTP/2 server —
// on the inbound side, every request a client sidecar sends over mTLS HTTP/2 for an application's
// GET — without httputil.ReverseProxy, as forward.go's forwarder does for the HTTP/1.1 fast path: the
// same request rewriting (hop-by-hop and forwarding headers stripped, "TE: trailers" kept, no default
// User-Agent, the query cleaned as ReverseProxy's Rewrite mode does), 1xx responses passed on, the
// response's hop-by-hop headers dropped, announced and undeclared trailers, streamed and event-stream
// bodies flushed as they come, a broken-off body aborting the stream (RST_STREAM), the same error
// handler and metrics. It works on the request itself instead of a deep copy, and takes no client
// trace or context per request. Bodies (gRPC), CONNECT and HTTP/1.x requests on net/http's server
// keep ReverseProxy.

// forwardableH2 reports whether the HTTP/2 forwarder takes r: an HTTP/2 request without a body
// (ReverseProxy, too, treats ContentLength 0 as none) whose method is idempotent.
func forwardableH2(r *http.Request) bool {
	if r.ProtoMajor != 2 || r.Method == http.MethodConnect || r.ContentLength != 0 || !idempotent(r) ||
		len(r.Trailer) > 0 || len(r.TransferEncoding) > 0 {
		return false
	}
	_, upgrade := r.Header["Upgrade"]
	return !upgrade
}

// forwardH2 proxies r (see the top of this file); sw wraps any http.ResponseWriter.
func (p *Proxy) forwardH2(sw *statusWriter, r *http.Request, rs *reqState) {
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
	r.Body = http.NoBody
	r.URL.RawQuery = cleanQueryParams(r.URL.RawQuery)
	r.URL.Scheme = "http"
	r.URL.Host = rs.authority
	if rs.route != nil && rs.route.HostRewrite != "" {
		r.Host = rs.route.HostRewrite
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = noUserAgent[:1:1]
	}

	rs.w1xx = sw
	resp, err := p.roundTrip(rs, r)
	rs.w1xx = nil
	if err != nil {
		p.proxyErrorFor(sw, r, rs, err)
		return
	}
	removeHopByHop(resp.Header)
	copyHeader(sw.Header(), resp.Header)
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		sw.Header().Add("Trailer", strings.Join(keys, ", "))
	}
	sw.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(sw.ResponseWriter)
	if err := copyBodyTo(sw, rc, resp); err != nil {
		resp.Body.Close()
		p.log.Debug("response body copy failed", "err", err)
		panic(http.ErrAbortHandler)
	}
	resp.Body.Close() // now, to fill resp.Trailer
	if len(resp.Trailer) > 0 {
		_ = rc.Flush()
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

// copyBodyTo is copyBody for any ResponseWriter: a body of unknown length or an event stream is
// flushed as it comes (the head at once), any other when the handler ends.
func copyBodyTo(w io.Writer, rc *http.ResponseController, resp *http.Response) error {
	flush := resp.ContentLength == -1 || eventStream(resp.Header.Get("Content-Type"))
	if flush {
		if err := rc.Flush(); err != nil {
			return err
		}
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if flush {
				if err := rc.Flush(); err != nil {
					return err
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}
