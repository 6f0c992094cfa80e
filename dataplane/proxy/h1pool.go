package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
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
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time
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
		resp, err := pc.roundTrip(p, req)
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
	now := time.Now()
	p.mu.Lock()
	for !fresh {
		list := p.idle[addr]
		if len(list) == 0 {
			break
		}
		pc := list[len(list)-1]
		list[len(list)-1] = nil
		p.idle[addr] = list[:len(list)-1]
		if now.Sub(pc.idleAt) < h1IdleTimeout {
			p.mu.Unlock()
			return pc, true, nil
		}
		pc.c.Close()
	}
	p.mu.Unlock()
	c, err := p.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	return &h1Conn{addr: addr, c: c, br: bufio.NewReaderSize(c, h1BufSize), bw: bufio.NewWriterSize(c, h1BufSize)}, false, nil
}

// put returns a connection whose response was read to the end, closing idle ones that timed out.
func (p *h1Pool) put(pc *h1Conn) {
	now := time.Now()
	pc.idleAt = now
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		pc.c.Close()
		return
	}
	list := p.idle[pc.addr]
	for len(list) > 0 && now.Sub(list[0].idleAt) >= h1IdleTimeout {
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

// aLongTimeAgo is a deadline in the past: it interrupts a blocked read or write at once.
var aLongTimeAgo = time.Unix(1, 0)

// roundTrip writes req and reads the response head. The body is read later by the caller through
// h1Body, still on this connection; the connection goes back to the pool at the body's end.
func (pc *h1Conn) roundTrip(p *h1Pool, req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// The request's context interrupts the connection (client gone, route or per-try timeout) from
	// here to the end of the response body.
	var cancelled atomic.Bool
	stop := context.AfterFunc(ctx, func() {
		cancelled.Store(true)
		_ = pc.c.SetDeadline(aLongTimeAgo)
	})
	fail := func(err error) (*http.Response, error) {
		stop()
		if cancelled.Load() {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if err := req.Write(pc.bw); err != nil {
		return fail(&staleConnError{err})
	}
	if err := pc.bw.Flush(); err != nil {
		return fail(&staleConnError{err})
	}
	trace := httptrace.ContextClientTrace(ctx)
	first := true
	for {
		if first {
			// Nothing of the response yet: EOF here is the server closing a kept-alive connection.
			if _, err := pc.br.Peek(1); err != nil {
				return fail(&staleConnError{err})
			}
			first = false
		}
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			return fail(err)
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			// An informational response (103 Early Hints...): pass it on and read on.
			if trace != nil && trace.Got1xxResponse != nil {
				if err := trace.Got1xxResponse(resp.StatusCode, map[string][]string(resp.Header)); err != nil {
					return fail(err)
				}
			}
			continue
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			// Only for a request that asked for an upgrade, which this pool does not take.
			return fail(errors.New("unexpected 101 Switching Protocols"))
		}
		b := &h1Body{pool: p, pc: pc, body: resp.Body, stop: stop, cancelled: &cancelled, ctx: ctx, keep: !resp.Close}
		if resp.Body == http.NoBody {
			b.finish(true) // HEAD, 204, 304, Content-Length: 0
		}
		resp.Body = b
		return resp, nil
	}
}

// h1Body is a response body on a pooled connection: at its end the connection goes back to the pool;
// closed before its end, the connection is closed (what is left of the body is not worth reading).
type h1Body struct {
	pool      *h1Pool
	pc        *h1Conn
	body      io.ReadCloser
	stop      func() bool
	cancelled *atomic.Bool
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
		b.pool.put(b.pc)
		return
	}
	b.pc.c.Close()
}
