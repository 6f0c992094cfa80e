package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"os"
	"syscall"
	"time"

	"github.com/weftmesh/weft/dataplane/config"
	"github.com/weftmesh/weft/dataplane/tracing"
)

// The lean path serves the fast path's common request — a GET or HEAD whose head h1lean_head.go
// parses, routed to a plaintext HTTP/1.1 cluster of EDS endpoints — without net/http's request and
// response types: the head is parsed in place, the upstream head is written once per request (and
// again as it is on a retry), the upstream response head is parsed in place, and its status line,
// headers and Content-Length body are copied to the client's write buffer. It keeps what serveHTTP,
// roundTrip and the forwarder do for such a request: route and weighted-cluster choice, load
// balancing, the circuit breaker, retries (5xx, gateway errors, resets, connect failures, retriable
// codes, gRPC codes, budget) with backoff, route and per-try timeouts (as deadlines on the upstream
// connection instead of contexts), outlier detection, weft-error responses, the same metrics, the
// drain's Connection: close.
//
// Everything else falls back before anything is sent: to today's fast path (ReadRequest + serveHTTP)
// for a head it does not take, a route it does not take (ORIGINAL_DST, h2c or mTLS upstreams, a
// missing route or cluster); to http.ReadResponse and the forwarder's response path for a response head
// it does not take (1xx, chunked, no length, event streams, a large head...).

// leanState is a fast-path connection's reusable state for lean requests.
type leanState struct {
	req  leanReq
	resp leanResp
	out  []byte // the upstream request head
	rs   reqState

	// start and end are the request's monoNow readings: the clock is read when it starts and when its
	// response is out, and every step in between (the pool's idle checks and returns) uses them.
	start, end time.Duration

	authority string // the last request's, kept to convert the Host only when it changes
	dateSec   int64
	date      []byte
	series    *httpSeries
	seriesKey seriesKey
	resps     respCache
}

// respCache keeps the last response series of a connection (its status is almost always the same).
type respCache struct {
	key respKey
	rs  *respSeries
}

// serveLean serves the request whose head is head when the lean path takes it; handled false means
// nothing was done (today's path serves it), else keep says whether the connection can carry another.
func (s *h1Conn1) serveLean(head []byte) (handled, keep bool) {
	if s.lean == nil {
		s.lean = &leanState{}
	}
	ls := s.lean
	q := &ls.req
	if s.p.tap.on.Load() != nil { // a tap is open: serveHTTP reports each request (tap.go)
		return false, false
	}
	if !q.parse(head) {
		return false, false
	}
	if s.p.tracer != nil && (s.p.tracer.SamplesNew() || tracing.HeadMayCarry(head)) {
		return false, false // traced in serveHTTP (trace.go)
	}
	p, info := s.p, s.info
	start := monoNow()
	ls.start, ls.end = start, 0
	rt := p.rt.Load()
	if string(q.host) != ls.authority {
		ls.authority = string(q.host)
	}
	authority := ls.authority
	table := rt.routeTableFor(info, authority)
	if table == nil {
		return false, false
	}
	vh := table.match(authority)
	if vh == nil {
		return false, false
	}
	route := leanMatchRoute(vh, q.path)
	if route == nil {
		return false, false
	}
	name := routeCluster(route)
	cl := rt.clusters[name]
	if cl == nil || cl.cfg.Kind == config.ClusterOriginalDst || (cl.cfg.TLS != nil && cl.state.tlsH2 != nil) || cl.cfg.HTTP2 {
		return false, false
	}
	if hr := route.HostRewrite; hr != "" && (!validHost(hr) || bytes.IndexByte([]byte(hr), '%') >= 0) {
		return false, false
	}
	if authzOn(rt, info) && !s.leanAllowed(rt, q) { // authz.go: a denial is serveFast's to answer
		return false, false
	}
	ls.out = q.appendUpstream(ls.out[:0], route.HostRewrite)
	_, _ = s.br.Discard(len(head))

	rs := &ls.rs
	*rs = reqState{info: info, authority: authority, route: route, cluster: cl, retry: route.Retry, timeout: route.Timeout}
	if rs.timeout > 0 {
		rs.start = time.Now() // the route deadline's base (a wall-clock time, for the connection's deadline)
	}
	if cl.cfg.LB == config.LBRingHash {
		rs.hashKey = hashString(remoteIP(s.remote))
	}
	defer func() {
		if v := recover(); v != nil { // as serveFast: the connection closes, the proxy goes on
			p.log.Error("panic serving HTTP", "panic", v)
			handled, keep = true, false
		}
	}()
	code, grpcFail, keep := s.leanExchange(rs)
	if ls.end == 0 {
		ls.end = monoNow() // (leanCopy reads it when it returns the upstream connection)
	}
	s.leanObserve(rs, code, grpcFail, ls.end-start)
	return true, keep
}

// leanMatchRoute is matchRoute on the path's bytes.
func leanMatchRoute(vh *config.VirtualHost, path []byte) *config.Route {
	if vh.Extended {
		return nil // its routes match on more than the path, or have filters: serveHTTP's (routefilter.go)
	}
	for i := range vh.Routes {
		r := &vh.Routes[i]
		switch r.Kind {
		case config.PathPrefix:
			if bytes.HasPrefix(path, []byte(r.Prefix)) {
				return r
			}
		case config.PathExact:
			if string(path) == r.Path {
				return r
			}
		case config.PathRegex:
			if r.Regex.Match(path) {
				return r
			}
		}
	}
	return nil
}

// leanObserve is Metrics.observeHTTP for a lean request, with the connection's last series cached.
func (s *h1Conn1) leanObserve(rs *reqState, code int, grpcFail bool, took time.Duration) {
	m, ls := s.p.metrics, s.lean
	key := m.key(s.p, rs)
	if ls.series == nil || key != ls.seriesKey || ls.series.dropped.Load() {
		ls.series, ls.seriesKey = m.seriesOf(key), key
		ls.resps = respCache{}
	}
	hs := ls.series
	hs.requests.Inc()
	if code == 0 {
		code = http.StatusBadGateway
	}
	rk := respKey{code, code >= 500 || grpcFail, leanGRPC(grpcFail)}
	if ls.resps.rs == nil || ls.resps.key != rk {
		ls.resps = respCache{rk, m.respSeriesOf(hs, key, rk)}
	}
	ls.resps.rs.total.Inc()
	ls.resps.rs.latency.Update(float64(took.Microseconds()) / 1000)
}

// leanExchange is roundTrip and the forwarder for a lean request: it returns the status the client
// got (0 for an aborted response), whether a gRPC status in it says failure, and whether the client
// connection can carry another request.
func (s *h1Conn1) leanExchange(rs *reqState) (code int, grpcFail, keep bool) {
	p, ls := s.p, s.lean
	headReq := ls.req.head
	closeAfter := p.draining.Load()
	cl := rs.cluster
	st := cl.state
	if st.active.Add(1) > limit(cl.cfg.Breakers.MaxRequests, 1024) {
		st.active.Add(-1)
		return s.leanError(http.StatusServiceUnavailable, "circuit open for "+cl.cfg.Name, closeAfter)
	}
	defer st.active.Add(-1)
	var routeDL time.Time
	if rs.timeout > 0 {
		routeDL = rs.start.Add(rs.timeout)
	}
	retry := rs.retry
	perTry := retry != nil && retry.PerTryTimeout > 0
	var h *host // the endpoint of the attempt under way, counted in its active requests
	defer func() {
		if h != nil { // a panic ended the attempt
			h.active.Add(-1)
		}
	}()
	var tried triedHosts
	var next *host // the endpoint of a connect-failure retry (connretry.go)
	for attempt := 0; ; attempt++ {
		h, next = next, nil
		if h == nil {
			h = cl.pick(rs.hashKey)
		}
		if h == nil {
			return s.leanError(http.StatusServiceUnavailable, "cluster "+cl.cfg.Name+" has no ready endpoints", closeAfter)
		}
		tried.add(h)
		h.active.Add(1)
		dl, tryDL := routeDL, false
		if perTry {
			if t := time.Now().Add(retry.PerTryTimeout); dl.IsZero() || t.Before(dl) {
				dl, tryDL = t, true
			}
		}
		now := ls.start
		if attempt > 0 {
			now = monoNow()
		}
		pc, resp, err := s.leanTry(st.h1, h.addrStr, dl, now)
		routeExpired := !routeDL.IsZero() && !time.Now().Before(routeDL)
		tryTimeout := err != nil && tryDL && !routeExpired && isTimeoutErr(err)
		status := 0
		var grpc []byte
		switch {
		case err != nil:
		case resp != nil:
			status = resp.StatusCode
			if g := resp.Header.Get("Grpc-Status"); g != "" {
				grpc = []byte(g)
			}
		default:
			status, grpc = ls.resp.status, ls.resp.grpcStatus
		}
		if !routeExpired {
			cl.outcome(h, status)
		}
		if err != nil && !routeExpired && neverSent(err) {
			if next = cl.pickUntried(&tried); next != nil {
				h.active.Add(-1)
				h = nil
				p.metrics.connectRetry(cl.cfg.Name)
				attempt-- // not one of the policy's retries
				continue
			}
		}
		if attempt < retryCount(retry) && !routeExpired && leanRetriable(retry, status, grpc, err, tryTimeout) && p.retryAllowed(cl) {
			if err == nil {
				s.leanDiscard(st.h1, pc, resp, headReq)
			}
			h.active.Add(-1)
			h = nil
			st.retries.Add(1)
			ok := sleepUntil(backoff(retry, attempt), routeDL)
			st.retries.Add(-1)
			if !ok {
				return s.leanError(http.StatusGatewayTimeout, fmt.Sprintf("upstream timeout after %s", rs.timeout), closeAfter)
			}
			continue
		}
		if err != nil {
			addr := h.addrStr
			h.active.Add(-1)
			h = nil
			if tryTimeout {
				return s.leanError(http.StatusGatewayTimeout, fmt.Sprintf("upstream timeout after %s (per try)", retry.PerTryTimeout), closeAfter)
			}
			pe := leanTripError(rs, addr, err, routeExpired)
			return s.leanError(pe.status, pe.msg, closeAfter)
		}
		if resp != nil {
			code, keep = s.leanForwardResponse(rs, resp, closeAfter)
		} else {
			code, keep = s.leanCopy(st.h1, pc, headReq, closeAfter)
		}
		h.active.Add(-1)
		h = nil
		return code, code != 0 && len(grpc) > 0 && string(grpc) != "0", keep
	}
}

// sleepUntil sleeps d, or until deadline (not zero) if that is sooner, reporting false then.
func sleepUntil(d time.Duration, deadline time.Time) bool {
	if !deadline.IsZero() {
		if left := time.Until(deadline); left < d {
			if left > 0 {
				time.Sleep(left)
			}
			return false
		}
	}
	time.Sleep(d)
	return true
}

func isTimeoutErr(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)
}

// leanRetriable is retriable for a lean exchange.
func leanRetriable(r *config.RetryPolicy, status int, grpc []byte, err error, tryTimeout bool) bool {
	if r == nil {
		return false
	}
	if err != nil {
		switch {
		case errors.Is(err, errCircuitOpen):
			return false // overflow is not retried, as in Envoy
		case isDialError(err):
			return r.On&(config.RetryConnectFailure|config.Retry5xx|config.RetryGatewayError|config.RetryReset) != 0
		case tryTimeout:
			return r.On&config.Retry5xx != 0 // a per-try timeout counts as a 5xx, as in Envoy
		}
		return r.On&(config.RetryReset|config.Retry5xx|config.RetryGatewayError) != 0
	}
	switch s := status; {
	case s >= 500 && r.On&config.Retry5xx != 0:
		return true
	case (s == 502 || s == 503 || s == 504) && r.On&config.RetryGatewayError != 0:
		return true
	case r.On&config.RetryRetriableStatusCodes != 0:
		for _, c := range r.RetriableStatusCodes {
			if c == s {
				return true
			}
		}
	}
	if len(grpc) > 0 {
		return grpcRetry[string(grpc)]&r.On != 0
	}
	return false
}

// leanTripError is the error a request that failed upstream answers with (a weft-error); routeExpired
// says the route timeout ended it. roundTripError uses it too.
func leanTripError(rs *reqState, addr string, err error, routeExpired bool) *proxyErr {
	switch {
	case errors.Is(err, errCircuitOpen):
		return &proxyErr{http.StatusServiceUnavailable, "circuit open for " + rs.cluster.cfg.Name}
	case routeExpired && rs.timeout > 0:
		return &proxyErr{http.StatusGatewayTimeout, fmt.Sprintf("upstream timeout after %s", rs.timeout)}
	case errors.Is(err, syscall.ECONNREFUSED):
		return &proxyErr{http.StatusBadGateway, "connection to " + addr + " refused"}
	case isDialError(err):
		return &proxyErr{http.StatusBadGateway, "connection to " + addr + " failed: " + err.Error()}
	}
	return &proxyErr{http.StatusBadGateway, "upstream " + addr + ": " + err.Error()}
}

// leanError answers with a proxy-made failure (writeWeftError), as serveHTTP does.
func (s *h1Conn1) leanError(status int, msg string, closeAfter bool) (code int, grpcFail, keep bool) {
	fw := s.leanWriter(closeAfter)
	sw := &statusWriter{ResponseWriter: fw}
	writeWeftError(sw, nil, status, msg)
	keep = fw.finish() && !fw.closeAfter
	return sw.code, false, keep
}

func (s *h1Conn1) leanWriter(closeAfter bool) *fastResponse {
	m := http.MethodGet
	if s.lean.req.head {
		m = http.MethodHead
	}
	return &fastResponse{bw: s.bw, method: m, contentLength: -1, closeAfter: closeAfter}
}

// leanTry sends the request head to addr and reads the response head: on a lean response (pc, nil)
// with the head parsed into s.lean.resp and still in pc's buffer; otherwise net/http's parse of it
// (its body returns pc to the pool at its end). A kept-alive connection the server had closed is
// replaced by a new one once, as h1Pool.roundTripHook does.
func (s *h1Conn1) leanTry(pool *h1Pool, addr string, dl time.Time, now time.Duration) (*h1Conn, *http.Response, error) {
	for a := 0; ; a++ {
		pc, reused, err := pool.getDeadline(addr, a > 0, dl, now)
		if err != nil {
			return nil, nil, err
		}
		resp, err := s.leanRoundTrip(pool, pc, dl, now)
		if err == nil {
			return pc, resp, nil
		}
		pc.c.Close()
		var stale *staleConnError
		if errors.As(err, &stale) {
			if reused && a == 0 && !isTimeoutErr(stale.err) {
				continue
			}
			err = stale.err
		}
		return nil, nil, err
	}
}

func (s *h1Conn1) leanRoundTrip(pool *h1Pool, pc *h1Conn, dl time.Time, now time.Duration) (*http.Response, error) {
	ls := s.lean
	if !dl.Equal(pc.dl) {
		_ = pc.c.SetDeadline(dl)
		pc.dl = dl
	}
	_, _ = pc.bw.Write(ls.out)
	pc.ww.arm = pc.br.Buffered() == 0 && pc.recentlyUsed(now)
	err := pc.bw.Flush()
	pc.ww.arm = false
	if err != nil {
		return nil, &staleConnError{err}
	}
	if _, err := pc.br.Peek(1); err != nil {
		return nil, &staleConnError{err}
	}
	br := pc.br
	for {
		b, _ := br.Peek(br.Buffered())
		if i := bytes.Index(b, crlfcrlf); i >= 0 {
			// (A head that fills the buffer leaves no room to sniff the body's type: net/http's path.)
			if i+4 < br.Size() && ls.resp.parse(b[:i+4], ls.req.head) {
				return nil, nil
			}
			break
		}
		if br.Buffered() >= br.Size() {
			break
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	// Not a head the lean path takes: net/http reads it, informational responses included.
	req := &http.Request{Method: http.MethodGet, Header: http.Header{}}
	if ls.req.head {
		req.Method = http.MethodHead
	}
	var fw *fastResponse
	resp, err := pc.readResponse(req, func(code int, h textproto.MIMEHeader) error {
		if fw == nil {
			fw = s.leanWriter(false)
		}
		copyHeader(fw.Header(), http.Header(h))
		fw.WriteHeader(code)
		clear(fw.header)
		return nil
	})
	if err != nil {
		return nil, err
	}
	b := &h1Body{pool: pool, pc: pc, ctx: context.Background(), stop: neverStopped, body: resp.Body, keep: !resp.Close}
	if resp.Body == http.NoBody {
		b.finish(true)
	}
	resp.Body = b
	return resp, nil
}

// leanDiscard ends a response that will be retried: read to its end (up to 64 KB) the connection
// goes back to the pool, else it is closed.
func (s *h1Conn1) leanDiscard(pool *h1Pool, pc *h1Conn, resp *http.Response, headReq bool) {
	if resp != nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		return
	}
	r := &s.lean.resp
	n := r.bodyLen(headReq)
	if n > 64<<10 {
		pc.c.Close()
		return
	}
	b, _ := pc.br.Peek(pc.br.Buffered())
	_, _ = pc.br.Discard(bytes.Index(b, crlfcrlf) + 4)
	if _, err := pc.br.Discard(int(n)); err != nil || !r.keep {
		pc.c.Close()
		return
	}
	pool.put(pc, monoNow())
}

// leanForwardResponse sends a response net/http parsed as the forwarder does.
func (s *h1Conn1) leanForwardResponse(rs *reqState, resp *http.Response, closeAfter bool) (code int, keep bool) {
	fw := s.leanWriter(closeAfter)
	sw := &statusWriter{ResponseWriter: fw}
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				s.p.log.Error("panic serving HTTP", "panic", v)
			}
			code, keep = sw.code, false
		}
	}()
	s.p.forwardResponse(sw, fw, resp)
	keep = fw.finish() && !fw.closeAfter
	return sw.code, keep
}

// leanCopy sends the lean response whose head is at the start of pc's buffer: the client's head,
// then the body straight from pc's buffer to the client's.
func (s *h1Conn1) leanCopy(pool *h1Pool, pc *h1Conn, headReq, closeAfter bool) (code int, keep bool) {
	ls := s.lean
	r := &ls.resp
	br := pc.br
	b, _ := br.Peek(br.Buffered())
	hl := bytes.Index(b, crlfcrlf) + 4
	n := r.bodyLen(headReq)
	var first []byte
	if n > 0 && !r.hasCT {
		// The Content-Type is sniffed from the body's first bytes, as net/http does.
		if len(b) == hl {
			if _, err := br.Peek(hl + 1); err != nil {
				pc.c.Close()
				return 0, false
			}
			b, _ = br.Peek(br.Buffered())
			if !r.parse(b[:hl], headReq) { // the buffer may have moved: the same head, parsed again
				pc.c.Close()
				return 0, false
			}
		}
		first = b[hl:min(int64(len(b)), int64(hl)+n)]
	}
	var date []byte
	if !r.hasDate {
		date = s.leanDate()
	}
	code = r.status
	_, _ = s.bw.Write(r.appendClient(s.bw.AvailableBuffer(), headReq, first, date, closeAfter))
	_, _ = br.Discard(hl)
	for n > 0 {
		if br.Buffered() == 0 {
			if _, err := br.Peek(1); err != nil {
				pc.c.Close()
				return code, false // cut short: the client's connection closes, as ReverseProxy's abort
			}
		}
		m := int64(br.Buffered())
		if m > n {
			m = n
		}
		chunk, _ := br.Peek(int(m))
		if _, err := s.bw.Write(chunk); err != nil {
			pc.c.Close()
			return code, false
		}
		_, _ = br.Discard(int(m))
		n -= m
	}
	ls.end = monoNow()
	if r.keep {
		pool.put(pc, ls.end)
	} else {
		pc.c.Close()
	}
	return code, !closeAfter
}

// leanDate is the Date header's value for now, formatted once a second.
func (s *h1Conn1) leanDate() []byte {
	ls := s.lean
	now := time.Now()
	if sec := now.Unix(); sec != ls.dateSec || ls.date == nil {
		ls.date = now.UTC().AppendFormat(ls.date[:0], http.TimeFormat)
		ls.dateSec = sec
	}
	return ls.date
}
