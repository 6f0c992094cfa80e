package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// h1Pool sends plaintext HTTP/1.1 requests over keep-alive connections, writing each request and
// reading its response on the caller's goroutine. net/http's Transport runs two goroutines per
// connection (a read loop and a write loop) and hands every request to them and the response back
// through channels; on a proxy that wakes three goroutines per request, and in CPU profiles of the
// bench that scheduling, not the HTTP work, was the largest cost after the system calls themselves.
//
// It takes the requests it can do simply and safely: idempotent (GET, HEAD...), with no body, no
// upgrade. The rest go to the fallback Transport: bodies (net/http writes them while it reads the
// response), upgrades, and non-idempotent methods — with no goroutine reading an idle connection, the
// pool learns that the server closed it only by using it, and only an idempotent request may then be
// sent again on a new connection.
type h1Pool struct {
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	fallback *http.Transport

	mu     sync.Mutex
	idle   map[string][]*h1Conn // by endpoint address, most recently used last
	closed bool
}

const (
	h1MaxIdlePerHost = 256
	h1IdleTimeout    = 90 * time.Second
	h1BufSize        = 4 << 10
)

type h1Conn struct {
	addr   string
	c      net.Conn
	ww     *writeThenWait // under bw
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Duration // monoNow when it last went idle, 0 before its first request
	dl     time.Time     // the connection's deadline (the lean path's timeouts), zero for none
}

func newH1Pool(dial func(ctx context.Context, network, addr string) (net.Conn, error), fallback *http.Transport) *h1Pool {
	return &h1Pool{dial: dial, fallback: fallback, idle: map[string][]*h1Conn{}}
}

// simple reports whether req is one h1Pool sends itself.
func (p *h1Pool) simple(req *http.Request) bool {
	return (req.Body == nil || req.Body == http.NoBody) && req.ContentLength == 0 && idempotent(req) &&
		req.Header.Get("Upgrade") == "" && !req.Close && len(req.TransferEncoding) == 0 && len(req.Trailer) == 0
}

// RoundTrip implements http.RoundTripper.
func (p *h1Pool) RoundTrip(req *http.Request) (*http.Response, error) {
	return p.roundTripHook(req, nil)
}

// roundTripHook is RoundTrip with got1xx, when not nil, called for each informational response
// instead of the request's httptrace.ClientTrace (the forwarder of forward.go passes the client's
// ResponseWriter this way, without a trace in the context).
func (p *h1Pool) roundTripHook(req *http.Request, got1xx func(int, textproto.MIMEHeader) error) (*http.Response, error) {
	if !p.simple(req) {
		return p.fallback.RoundTrip(req)
	}
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		// A retry dials: the other idle connections may be just as stale (a restarted server).
		pc, reused, err := p.get(ctx, req.URL.Host, attempt > 0)
		if err != nil {
			return nil, err
		}
		resp, err := pc.roundTrip(p, req, got1xx)
		if err == nil {
			return resp, nil
		}
		pc.c.Close()
		// A kept-alive connection the server had closed while it was idle: the request never reached
		// it, so it goes again on a new connection (as net/http does), when resending cannot repeat a
		// side effect.
		var stale *staleConnError
		if reused && attempt == 0 && errors.As(err, &stale) && ctx.Err() == nil {
			continue
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var se *staleConnError
		if errors.As(err, &se) {
			return nil, se.err
		}
		return nil, err
	}
}

// idempotent is net/http's rule for sending a request again.
func idempotent(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return req.Header.Get("Idempotency-Key") != "" || req.Header.Get("X-Idempotency-Key") != ""
}

// staleConnError is a failure before the first byte of the response on a connection: the server had
// most likely closed it.
type staleConnError struct{ err error }

func (e *staleConnError) Error() string { return e.err.Error() }
func (e *staleConnError) Unwrap() error { return e.err }

// get returns an idle connection to addr, or dials one (always with fresh).
func (p *h1Pool) get(ctx context.Context, addr string, fresh bool) (*h1Conn, bool, error) {
	if !fresh {
		if pc := p.getIdle(addr, monoNow()); pc != nil {
			return pc, true, nil
		}
	}
	pc, err := p.dialConn(ctx, addr)
	return pc, false, err
}

// getDeadline is get for the lean path: a dial ends at dl (zero: none); now is monoNow (the
// request's start).
func (p *h1Pool) getDeadline(addr string, fresh bool, dl time.Time, now time.Duration) (*h1Conn, bool, error) {
	if !fresh {
		if pc := p.getIdle(addr, now); pc != nil {
			return pc, true, nil
		}
	}
	ctx := context.Background()
	if !dl.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl)
		defer cancel()
	}
	pc, err := p.dialConn(ctx, addr)
	return pc, false, err
}

// getIdle returns the most recently used idle connection to addr, or nil; now is monoNow.
func (p *h1Pool) getIdle(addr string, now time.Duration) *h1Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		list := p.idle[addr]
		if len(list) == 0 {
			return nil
		}
		pc := list[len(list)-1]
		list[len(list)-1] = nil
		p.idle[addr] = list[:len(list)-1]
		if now-pc.idleAt < h1IdleTimeout {
			return pc
		}
		pc.c.Close()
	}
}

func (p *h1Pool) dialConn(ctx context.Context, addr string) (*h1Conn, error) {
	c, err := p.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	ww := newWriteThenWait(c)
	return &h1Conn{addr: addr, c: c, ww: ww, br: bufio.NewReaderSize(newRawReader(c), h1BufSize), bw: bufio.NewWriterSize(ww, h1BufSize)}, nil
}

// put returns a connection whose response was read to the end, closing idle ones that timed out;
// now is monoNow.
func (p *h1Pool) put(pc *h1Conn, now time.Duration) {
	pc.idleAt = now
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		pc.c.Close()
		return
	}
	list := p.idle[pc.addr]
	for len(list) > 0 && now-list[0].idleAt >= h1IdleTimeout {
		list[0].c.Close()
		list = list[1:]
	}
	if len(list) >= h1MaxIdlePerHost {
		p.mu.Unlock()
		pc.c.Close()
		return
	}
	p.idle[pc.addr] = append(list, pc)
	p.mu.Unlock()
}

// close closes the idle connections, and the others when their response ends.
func (p *h1Pool) close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = map[string][]*h1Conn{}
	p.mu.Unlock()
	for _, list := range idle {
		for _, pc := range list {
			pc.c.Close()
		}
	}
	p.fallback.CloseIdleConnections()
}

// recentlyUsed reports whether pc is new or went idle less than a second before now (monoNow): a
// connection the server is unlikely to have closed, whose request's last write may arm the wait for
// the response (writewait.go).
func (pc *h1Conn) recentlyUsed(now time.Duration) bool {
	return pc.idleAt == 0 || now-pc.idleAt < time.Second
}

// aLongTimeAgo is a deadline in the past: it interrupts a blocked read or write at once.
var aLongTimeAgo = time.Unix(1, 0)

// roundTrip writes req and reads the response head. The body is read later by the caller through
// h1Body, still on this connection; the connection goes back to the pool at the body's end.
func (pc *h1Conn) roundTrip(p *h1Pool, req *http.Request, got1xx func(int, textproto.MIMEHeader) error) (*http.Response, error) {
	ctx := req.Context()
	if !pc.dl.IsZero() {
		_ = pc.c.SetDeadline(time.Time{}) // left by the lean path
		pc.dl = time.Time{}
	}
	b := &h1Body{pool: p, pc: pc, ctx: ctx, stop: neverStopped}
	// The request's context interrupts the connection (client gone, route or per-try timeout) from
	// here to the end of the response body; a context that cannot end needs no watching.
	if ctx.Done() != nil {
		b.stop = context.AfterFunc(ctx, func() {
			b.cancelled.Store(true)
			_ = pc.c.SetDeadline(aLongTimeAgo)
		})
	}
	fail := func(err error) (*http.Response, error) {
		b.stop()
		if b.cancelled.Load() {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if err := writeRequest(pc.bw, req); err != nil {
		return fail(&staleConnError{err})
	}
	// The request's last bytes go out with the wait for the response armed (writewait.go), unless
	// bytes of the server are already buffered (then the read must not wait for more) or the
	// connection sat idle long enough for the server to have closed it.
	pc.ww.arm = pc.br.Buffered() == 0 && pc.recentlyUsed(monoNow())
	err := pc.bw.Flush()
	pc.ww.arm = false
	if err != nil {
		return fail(&staleConnError{err})
	}
	if got1xx == nil {
		if trace := httptrace.ContextClientTrace(ctx); trace != nil {
			got1xx = trace.Got1xxResponse
		}
	}
	// Nothing of the response yet: EOF here is the server closing a kept-alive connection.
	if _, err := pc.br.Peek(1); err != nil {
		return fail(&staleConnError{err})
	}
	resp, err := pc.readResponse(req, got1xx)
	if err != nil {
		return fail(err)
	}
	b.body, b.keep = resp.Body, !resp.Close
	if resp.Body == http.NoBody {
		b.finish(true) // HEAD, 204, 304, Content-Length: 0
	}
	resp.Body = b
	return resp, nil
}

// readResponse reads the final response head to req, passing informational ones to got1xx.
func (pc *h1Conn) readResponse(req *http.Request, got1xx func(int, textproto.MIMEHeader) error) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			// An informational response (103 Early Hints...): pass it on and read on.
			if got1xx != nil {
				if err := got1xx(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
					return nil, err
				}
			}
			continue
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			// Only for a request that asked for an upgrade, which this pool does not take.
			return nil, errors.New("unexpected 101 Switching Protocols")
		}
		return resp, nil
	}
}

// neverStopped is the stop function of an exchange whose context cannot end: there was nothing to stop.
func neverStopped() bool { return true }

// h1Body is a response body on a pooled connection: at its end the connection goes back to the pool;
// closed before its end, the connection is closed (what is left of the body is not worth reading).
type h1Body struct {
	pool      *h1Pool
	pc        *h1Conn
	body      io.ReadCloser
	stop      func() bool
	cancelled atomic.Bool
	ctx       context.Context
	keep      bool // the connection may carry another request
	done      atomic.Bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done.Load() {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	switch {
	case err == io.EOF:
		b.finish(true)
	case err != nil:
		if b.cancelled.Load() {
			err = b.ctx.Err()
		}
		b.finish(false)
	}
	return n, err
}

func (b *h1Body) Close() error {
	b.finish(false)
	return nil
}

// finish ends the exchange once: the connection goes back to the pool only when the whole body was
// read, the server keeps the connection alive and the context never interrupted it.
func (b *h1Body) finish(complete bool) {
	if !b.done.CompareAndSwap(false, true) {
		return
	}
	if b.stop() && complete && b.keep && !b.cancelled.Load() {
		b.pool.put(b.pc, monoNow())
		return
	}
	b.pc.c.Close()
}

// reqWriteExclude are the headers Request.Write writes itself or not at all (net/http's
// reqWriteExcludeHeader).
var reqWriteExclude = map[string]bool{"Host": true, "User-Agent": true, "Content-Length": true, "Transfer-Encoding": true, "Trailer": true}

// writeRequest writes a bodyless GET or HEAD as Request.Write does — request line, Host, User-Agent
// (Go's default unless the header is there; left out when empty), then the other headers sorted and
// sanitized by Header.WriteSubset — without its per-request formatting allocations. Any other
// request, or a host or URI that needs Request.Write's conversions or checks, goes through Request.Write.
func writeRequest(bw *bufio.Writer, req *http.Request) error {
	host := req.Host
	if host == "" && req.URL != nil {
		host = req.URL.Host
	}
	if (req.Method != http.MethodGet && req.Method != http.MethodHead) || req.URL == nil || req.URL.Opaque != "" ||
		host == "" || !validHost(host) || strings.IndexByte(host, '%') >= 0 || req.ContentLength != 0 ||
		(req.Body != nil && req.Body != http.NoBody) || req.Close || len(req.TransferEncoding) > 0 || len(req.Trailer) > 0 {
		return req.Write(bw)
	}
	ua, hasUA := "Go-http-client/1.1", false
	if v, ok := req.Header["User-Agent"]; ok {
		ua, hasUA = "", true
		if len(v) > 0 {
			ua = v[0]
		}
	}
	ruri := req.URL.RequestURI()
	if hasCTL(ruri) || (hasUA && strings.ContainsAny(ua, "\r\n")) {
		return req.Write(bw)
	}
	_, _ = bw.WriteString(req.Method)
	_ = bw.WriteByte(' ')
	_, _ = bw.WriteString(ruri)
	_, _ = bw.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = bw.WriteString(host)
	_, _ = bw.WriteString("\r\n")
	if ua = textproto.TrimString(ua); ua != "" {
		_, _ = bw.WriteString("User-Agent: ")
		_, _ = bw.WriteString(ua)
		_, _ = bw.WriteString("\r\n")
	}
	if err := req.Header.WriteSubset(bw, reqWriteExclude); err != nil {
		return err
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// hasCTL reports whether s has an ASCII control byte (Request.Write refuses such a URI).
func hasCTL(s string) bool {
	for i := 0; i < len(s); i++ {
		if b := s[i]; b < ' ' || b == 0x7f {
			return true
		}
	}
	return false
}
