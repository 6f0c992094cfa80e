package proxy

import "net/http"

// The HTTP/2 forwarder proxies bodyless idempotent requests that arrive on net/http's HTTP/2 server —
// on the inbound side, every request a client sidecar sends over mTLS HTTP/2 for an application's
// GET — without httputil.ReverseProxy, through forward.go's forwarder as the HTTP/1.1 fast path's: the
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
