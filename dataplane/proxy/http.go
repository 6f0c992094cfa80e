package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/dataplane/config"
)

// reqState is one proxied request's routing decision and outcome.
type reqState struct {
	info      *connInfo
	authority string
	route     *config.Route
	cluster   *clusterRT
	retry     *config.RetryPolicy
	timeout   time.Duration
	target    string // ORIGINAL_DST target ("" otherwise)
	hashKey   uint64
	serverID  string
	upTLS     bool
	start     time.Time
	origH1    bool // the request was HTTP/1.1 before the client's proxy upgraded it to HTTP/2
	// w1xx takes the informational responses of the upstream (set by the forwarder of forward.go,
	// which has no httptrace.ClientTrace in the request's context).
	w1xx http.ResponseWriter
	body guardBody // roundTrip's guard of the request body (connretry.go)
}

// origProtoHeader carries the application's protocol across an HTTP/2 hop between two proxies.
const origProtoHeader = "Weft-Orig-Proto"

type reqKeyType struct{}

var reqKey reqKeyType

// proxyErr is a failure made by the proxy, explained to the client with the weft-error header.
type proxyErr struct {
	status int
	msg    string
}

func (e *proxyErr) Error() string { return e.msg }

// writeWeftError answers with a proxy-made failure. A gRPC client gets it as gRPC does (HTTP 200,
// trailers-only, grpc-status UNAVAILABLE or DEADLINE_EXCEEDED, grpc-message), so its status says
// what happened instead of "unexpected HTTP status"; weft-error is set either way.
func writeWeftError(w http.ResponseWriter, r *http.Request, status int, msg string) {
	h := w.Header()
	if r != nil && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		code := "14" // UNAVAILABLE
		if status == http.StatusGatewayTimeout {
			code = "4" // DEADLINE_EXCEEDED
		}
		h.Set("Weft-Error", msg)
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", code)
		h.Set("Grpc-Message", grpcMessage(msg))
		w.WriteHeader(http.StatusOK)
		return
	}
	h.Set("Weft-Error", msg)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(msg)+1))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n") // #nosec G705 -- text/plain, the proxy's own error message
}

// grpcTimeout parses a grpc-timeout header ("100m", "5S", ...).
func grpcTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	unit := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}[v[len(v)-1]]
	if unit == 0 {
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// grpcMessage percent-encodes a grpc-message value (the gRPC HTTP/2 spec).
func grpcMessage(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// routeTableFor returns the route table a request on this connection uses.
func (rt *runtime) routeTableFor(info *connInfo, authority string) *routeTable {
	if info.explicit {
		return rt.routes[authorityPort(authority, "80")]
	}
	if info.chain == nil || info.chain.cfg.HTTP == nil {
		return nil
	}
	if info.chain.routes != nil {
		return info.chain.routes
	}
	return rt.routes[info.chain.cfg.HTTP.RouteConfigName]
}

func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request, info *connInfo) {
	start := time.Now()
	rt := p.rt.Load()
	authority := r.Host
	rs := &reqState{info: info, authority: authority, start: start}
	sw := &statusWriter{ResponseWriter: w}
	defer func() { p.metrics.observeHTTP(p, rs, sw.code, sw.Header(), start) }()
	if p.tracer != nil {
		if sp := p.traceStart(r, rs); sp != nil {
			defer p.traceEnd(sp, rs, sw)
		}
	}
	defer p.tapHTTP(r, rs, sw, start) // one atomic load when nobody taps (tap.go)

	if r.ProtoMajor == 1 {
		http1Framing(w, r)
	}
	if info.direction == "inbound" && r.Header.Get(origProtoHeader) != "" {
		rs.origH1 = r.Header.Get(origProtoHeader) == "HTTP/1.1"
		r.Header.Del(origProtoHeader)
	}
	if p.denyHTTP(sw, r, info) { // authz.go
		return
	}
	table := rt.routeTableFor(info, authority)
	var vh *config.VirtualHost
	if table != nil {
		vh = table.match(authority)
	}
	if vh == nil {
		writeWeftError(sw, r, http.StatusServiceUnavailable, "no route for authority "+authority)
		return
	}
	path := r.URL.Path
	if r.Method == http.MethodConnect {
		path = "/"
	}
	route := matchRoute(vh, path, r)
	if route == nil {
		writeWeftError(sw, r, http.StatusServiceUnavailable, "no route for authority "+authority+" and path "+r.URL.Path)
		return
	}
	name, answered := p.applyRoute(rt, sw, r, rs, route) // routefilter.go
	if answered {
		return
	}
	cl := rt.clusters[name]
	if cl == nil {
		writeWeftError(sw, r, http.StatusServiceUnavailable, "cluster "+name+" is unknown")
		return
	}
	rs.route, rs.cluster, rs.retry, rs.timeout = route, cl, route.Retry, routeTimeout(route, r)
	if cl.cfg.Kind == config.ClusterOriginalDst {
		switch {
		case info.explicit:
			rs.target = authority
			if authorityPort(authority, "") == "" {
				rs.target = net.JoinHostPort(authority, "80")
			}
		case !info.redirected && info.dst == info.local:
			writeWeftError(sw, r, http.StatusBadGateway, "passthrough to "+info.dst.String()+" would loop back to the proxy")
			return
		default:
			rs.target = info.dst.String()
		}
	}
	if cl.cfg.LB == config.LBRingHash {
		rs.hashKey = hashString(remoteIP(r.RemoteAddr))
	}
	if r.Method == http.MethodConnect && r.ProtoMajor == 1 {
		p.connect(sw, r, rs)
		return
	}
	if p.forwardable(rs, w, r) || forwardableH2(r) {
		if rs.timeout > 0 {
			ctx, cancel := context.WithTimeout(r.Context(), rs.timeout)
			defer cancel()
			r = r.WithContext(ctx)
		}
		p.forward(sw, r, rs)
		return
	}
	ctx := context.WithValue(r.Context(), reqKey, rs)
	if rs.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, rs.timeout)
		defer cancel()
	}
	p.rp.ServeHTTP(sw, r.WithContext(ctx))
}

// routeCluster is the cluster a request on route goes to: its cluster, or one of its weighted
// clusters chosen by weight.
func routeCluster(route *config.Route) string {
	if len(route.WeightedClusters) == 0 {
		return route.Cluster
	}
	n := rand.Uint32N(route.TotalWeight)
	for _, wc := range route.WeightedClusters {
		if n < wc.Weight {
			return wc.Name
		}
		n -= wc.Weight
	}
	return route.Cluster
}

func remoteIP(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	rs := pr.In.Context().Value(reqKey).(*reqState)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = rs.authority
	pr.Out.Host = pr.In.Host
	if rs.route != nil && rs.route.HostRewrite != "" {
		pr.Out.Host = rs.route.HostRewrite
	}
}

// proxyError turns a round-trip failure into a response with weft-error.
func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	rs, _ := r.Context().Value(reqKey).(*reqState)
	p.proxyErrorFor(w, r, rs, err)
}

func (p *Proxy) proxyErrorFor(w http.ResponseWriter, r *http.Request, rs *reqState, err error) {
	if rs != nil {
		if d, ok := grpcTimeout(r.Header.Get("Grpc-Timeout")); ok && time.Since(rs.start) >= d {
			// The client's own gRPC deadline passed (the server reset the stream for it): say so.
			writeWeftError(w, r, http.StatusGatewayTimeout, "gRPC deadline of "+d.String()+" exceeded")
			return
		}
	}
	var pe *proxyErr
	if errors.As(err, &pe) {
		writeWeftError(w, r, pe.status, pe.msg)
		return
	}
	writeWeftError(w, r, http.StatusBadGateway, "upstream error: "+err.Error())
}

// statusWriter remembers the status code; Unwrap keeps Flush and Hijack reachable.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 && code >= 200 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush is here because httputil.ReverseProxy checks for it on the writer itself in some paths.
func (w *statusWriter) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

type roundTripper struct{ p *Proxy }

// RoundTrip sends one request to the cluster chosen by serveHTTP: circuit breaker, endpoint pick,
// retries within the policy and the budget, outlier feedback.
func (t roundTripper) RoundTrip(out *http.Request) (*http.Response, error) {
	return t.p.roundTrip(out.Context().Value(reqKey).(*reqState), out)
}

func (p *Proxy) roundTrip(rs *reqState, out *http.Request) (*http.Response, error) {
	cl := rs.cluster
	st := cl.state
	if st.active.Add(1) > limit(cl.cfg.Breakers.MaxRequests, 1024) {
		st.active.Add(-1)
		return nil, &proxyErr{http.StatusServiceUnavailable, "circuit open for " + cl.cfg.Name}
	}
	retry := rs.retry
	var replay []byte
	var guard *guardBody // the request body, kept for a resend after a connection never made
	if out.Body != nil && out.Body != http.NoBody {
		if retry != nil && retry.NumRetries > 0 && out.ContentLength > 0 && out.ContentLength <= 64<<10 {
			b, err := io.ReadAll(out.Body)
			if err != nil {
				st.active.Add(-1)
				return nil, &proxyErr{http.StatusBadRequest, "reading request body: " + err.Error()}
			}
			replay = b
			out.Body = io.NopCloser(bytes.NewReader(b))
		} else {
			guard = &rs.body
			guard.rc = out.Body
			out.Body = guard
		}
	}
	transport := p.transportFor(rs, out)
	ctx := out.Context()
	var tried triedHosts
	var next *host // the endpoint of a connect-failure retry
	for attempt := 0; ; attempt++ {
		var h *host
		if rs.target != "" {
			out.URL.Host = rs.target
		} else {
			h, next = next, nil
			if h == nil {
				h = cl.pick(rs.hashKey)
			}
			if h == nil {
				st.active.Add(-1)
				return nil, &proxyErr{http.StatusServiceUnavailable, "cluster " + cl.cfg.Name + " has no ready endpoints"}
			}
			tried.add(h)
			out.URL.Host = h.addrStr
			h.active.Add(1)
		}
		try := out
		cancelTry := context.CancelFunc(func() {})
		if retry != nil && retry.PerTryTimeout > 0 {
			var tctx context.Context
			tctx, cancelTry = context.WithTimeout(ctx, retry.PerTryTimeout)
			try = out.WithContext(tctx)
		}
		var resp *http.Response
		var err error
		switch h1, ok := transport.(*h1Pool); {
		case rs.w1xx == nil:
			resp, err = transport.RoundTrip(try)
		case ok:
			resp, err = h1.roundTripHook(try, rs.forward1xx)
		default:
			// The forwarder's request to an HTTP/2 upstream: 1xx responses reach the client through a
			// client trace, as ReverseProxy's.
			trace := &httptrace.ClientTrace{Got1xxResponse: rs.forward1xx}
			resp, err = transport.RoundTrip(try.WithContext(httptrace.WithClientTrace(try.Context(), trace)))
		}
		status := 0
		if err == nil {
			status = resp.StatusCode
		}
		if h != nil && ctx.Err() == nil {
			cl.outcome(h, status)
		}
		if err != nil && h != nil && ctx.Err() == nil && neverSent(err) && (guard == nil || !guard.read.Load()) {
			if next = cl.pickUntried(&tried); next != nil {
				cancelTry()
				h.active.Add(-1)
				if replay != nil {
					out.Body = io.NopCloser(bytes.NewReader(replay))
				}
				p.metrics.connectRetry(cl.cfg.Name)
				attempt-- // not one of the policy's retries
				continue
			}
		}
		if attempt < retryCount(retry) && ctx.Err() == nil && retriable(retry, resp, err) &&
			(guard == nil || !guard.read.Load()) && p.retryAllowed(cl) {
			if resp != nil {
				_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
				resp.Body.Close()
			}
			cancelTry()
			if h != nil {
				h.active.Add(-1)
			}
			if replay != nil {
				out.Body = io.NopCloser(bytes.NewReader(replay))
			}
			st.retries.Add(1)
			ok := sleepCtx(ctx, backoff(retry, attempt))
			st.retries.Add(-1)
			if !ok {
				if guard != nil {
					guard.release()
				}
				st.active.Add(-1)
				return nil, p.roundTripError(ctx, rs, out.URL.Host, ctx.Err())
			}
			continue
		}
		if err != nil {
			cancelTry()
			if h != nil {
				h.active.Add(-1)
			}
			if guard != nil {
				guard.release()
			}
			st.active.Add(-1)
			if retry != nil && retry.PerTryTimeout > 0 && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				return nil, &proxyErr{http.StatusGatewayTimeout, fmt.Sprintf("upstream timeout after %s (per try)", retry.PerTryTimeout)}
			}
			if berr := guard.bodyErr(); berr != nil {
				// The client's body broke (bad chunked framing, the client went away): its fault.
				return nil, &proxyErr{http.StatusBadRequest, "reading the request body: " + berr.Error()}
			}
			return nil, p.roundTripError(ctx, rs, out.URL.Host, err)
		}
		if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 {
			rs.serverID = spiffeID(resp.TLS.PeerCertificates[0])
		}
		db := &doneBody{ReadCloser: resp.Body, cancelTry: cancelTry, h: h, st: st}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			db.done() // the upgraded connection is no longer a request
			return resp, nil
		}
		resp.Body = db
		return resp, nil
	}
}

func retryCount(r *config.RetryPolicy) int {
	if r == nil || r.On == 0 {
		return 0
	}
	return r.NumRetries
}

// retryAllowed is the retry budget: concurrent retries stay under max_retries of the circuit breaker,
// or, when that is unset, under 20% of the requests in flight (at least 3).
func (p *Proxy) retryAllowed(cl *clusterRT) bool {
	st := cl.state
	if m := cl.cfg.Breakers.MaxRetries; m > 0 {
		return st.retries.Load() < int64(m)
	}
	return st.retries.Load() < max(3, st.active.Load()/5)
}

func backoff(r *config.RetryPolicy, attempt int) time.Duration {
	d := r.BaseInterval << attempt
	if d > r.MaxInterval || d <= 0 {
		d = r.MaxInterval
	}
	return time.Duration(rand.Int64N(int64(d)) + 1)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

var grpcRetry = map[string]config.RetryOn{
	"1": config.RetryGRPCCancelled, "4": config.RetryGRPCDeadlineExceeded, "8": config.RetryGRPCResourceExhausted,
	"13": config.RetryGRPCInternal, "14": config.RetryGRPCUnavailable,
}

func retriable(r *config.RetryPolicy, resp *http.Response, err error) bool {
	if r == nil {
		return false
	}
	if err != nil {
		if errors.Is(err, errCircuitOpen) {
			return false // overflow is not retried, as in Envoy
		}
		if isDialError(err) {
			return r.On&(config.RetryConnectFailure|config.Retry5xx|config.RetryGatewayError|config.RetryReset) != 0
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return r.On&config.Retry5xx != 0 // a per-try timeout counts as a 5xx, as in Envoy
		}
		return r.On&(config.RetryReset|config.Retry5xx|config.RetryGatewayError) != 0
	}
	s := resp.StatusCode
	switch {
	case s >= 500 && r.On&config.Retry5xx != 0:
		return true
	case (s == 502 || s == 503 || s == 504) && r.On&config.RetryGatewayError != 0:
		return true
	case r.On&config.RetryRetriableStatusCodes != 0 && slices.Contains(r.RetriableStatusCodes, s):
		return true
	}
	if g := resp.Header.Get("Grpc-Status"); g != "" {
		return grpcRetry[g]&r.On != 0
	}
	return false
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func (p *Proxy) roundTripError(ctx context.Context, rs *reqState, addr string, err error) error {
	return leanTripError(rs, addr, err, errors.Is(ctx.Err(), context.DeadlineExceeded))
}

// transportFor picks the upstream protocol: mTLS HTTP/2 to another weft-proxy (HTTP/1.1 only for
// upgrades), h2c when the cluster says HTTP/2 or the client spoke HTTP/2, else HTTP/1.1.
func (p *Proxy) transportFor(rs *reqState, r *http.Request) http.RoundTripper {
	st := rs.cluster.state
	if rs.cluster.cfg.TLS != nil && st.tlsH2 != nil && rs.target == "" {
		rs.upTLS = true
		r.URL.Scheme = "https" // so that the transport dials with DialTLSContext (our mTLS)
		if r.Header.Get("Upgrade") != "" {
			return st.tlsH1
		}
		if r.ProtoMajor == 1 {
			// HTTP/1.1 travels over multiplexed HTTP/2 between proxies; the server's proxy restores it.
			r.Header.Set(origProtoHeader, "HTTP/1.1")
		}
		return st.tlsH2
	}
	if (rs.cluster.cfg.HTTP2 || (r.ProtoMajor == 2 && !rs.origH1)) && r.Header.Get("Upgrade") == "" {
		return st.h2c
	}
	return st.h1
}

// doneBody ends the request's hold on its cluster and host once, when the response body ends or is
// closed: the per-try timeout is cancelled and the in-flight counts drop.
type doneBody struct {
	io.ReadCloser
	cancelTry context.CancelFunc
	h         *host // nil for an ORIGINAL_DST target
	st        *clusterState
	once      atomic.Bool
}

func (b *doneBody) done() {
	if !b.once.CompareAndSwap(false, true) {
		return
	}
	b.cancelTry()
	if b.h != nil {
		b.h.active.Add(-1)
	}
	b.st.active.Add(-1)
}

func (b *doneBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.done()
	}
	return n, err
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	b.done()
	return err
}

// http1Framing applies the proxy's smuggling rules to an HTTP/1 request on net/http's server (the fast
// path refuses such heads itself: ambiguousHead).
//
// A chunked request closes its connection after the response. net/http lets Transfer-Encoding win
// over a Content-Length sent with it (RFC 9112 §6.3), and would then read what follows the last chunk
// as the next request: the request another parser, framing by the Content-Length, would have taken for
// body (CL.TE smuggling). What follows is never read as a request.
//
// An "Upgrade: h2c" is dropped (as Envoy does): the request goes upstream as plain HTTP/1.1, never as
// an upgrade that would turn the connection into an HTTP/2 one past the proxy's routing (Go
// CVE-2022-41721's class).
func http1Framing(w http.ResponseWriter, r *http.Request) {
	if len(r.TransferEncoding) > 0 {
		w.Header().Set("Connection", "close")
	}
	if hasToken(r.Header["Upgrade"], "h2c") {
		r.Header.Del("Upgrade")
		r.Header.Del("Http2-Settings")
	}
}
