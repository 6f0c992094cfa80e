package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The HTTP/1.1 fast path serves the common request of a sidecar's HTTP/1.1 connection — no body, no
// upgrade, no Connection or Expect header — on the connection's own goroutine, with one read, one
// handler call and one write. net/http's server also starts a goroutine per request to watch for the
// client going away (a read that finds nothing, then a deadline to stop it), which in the bench's CPU
// profiles cost about as much as the proxying itself.
//
// Anything else — a request with a body, an upgrade, CONNECT, HTTP/1.0, HTTP/2 prior knowledge, a
// header block larger than the read buffer — hands the connection, with the bytes already read, to
// net/http's server for the rest of its life, which keeps every protocol detail (chunked request
// bodies, 100-continue, trailers, upgrades, gRPC over h2c) exactly as it was.
//
// The commonest of these requests (a GET or HEAD to a plaintext HTTP/1.1 cluster, with an ordinary
// head) take the lean path of h1lean.go, which parses the head in place and forwards it without
// http.Request, http.Response or header maps; the others go through http.ReadRequest and serveHTTP.
//
// One thing the fast path does not do: notice a client that goes away while its request is upstream
// (there is no body to read, and a read in the background is the cost it avoids). Such a request ends
// with its upstream response or its route timeout, as in most event-loop proxies.

const (
	h1ServerBuf = 4 << 10
	// DefaultIdleTimeout closes a client connection that sends no request for this long (a new one
	// that sends nothing, or a kept-alive one between requests); DefaultReadHeaderTimeout closes one
	// whose request head is not whole this long after its first byte (slowloris). Both paths (the fast
	// path here and net/http's server) use the proxy's values (Options).
	DefaultIdleTimeout       = 5 * time.Minute
	DefaultReadHeaderTimeout = 30 * time.Second
	// MaxHeaderBytes caps a request head on net/http's server (431 above it), as Envoy's default
	// max_request_headers_kb (60 KiB); the fast path's heads are at most h1ServerBuf.
	MaxHeaderBytes = 64 << 10
)

// fastConns tracks the connections on the fast path, for a graceful drain.
type fastConns struct {
	mu    sync.Mutex
	conns map[*fastConn]struct{}
	wg    sync.WaitGroup
}

type fastConn struct {
	c     net.Conn
	state atomic.Int32 // fastIdle, fastActive, fastClosed
}

const (
	fastIdle int32 = iota
	fastActive
	fastClosed
)

func (f *fastConns) add(fc *fastConn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		f.conns = map[*fastConn]struct{}{}
	}
	f.conns[fc] = struct{}{}
	f.wg.Add(1)
}

func (f *fastConns) remove(fc *fastConn) {
	f.mu.Lock()
	delete(f.conns, fc)
	f.mu.Unlock()
	f.wg.Done()
}

// closeIdle closes the connections waiting for a request; busy ones close after their response.
func (f *fastConns) closeIdle() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for fc := range f.conns {
		if fc.state.CompareAndSwap(fastIdle, fastClosed) {
			fc.c.Close()
		}
	}
}

// closeAll closes every connection, busy ones too. A connection on a plain socket is served inside
// its read wait (serveHTTP1), and Close waits for that wait to end, which for a busy one is when its
// request comes back from upstream: such a socket is shut down instead, at once (the client sees the
// close, the serving goroutine finds it and closes the connection when it returns).
func (f *fastConns) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for fc := range f.conns {
		fc.state.Store(fastClosed)
		if raw := rawConnOf(fc.c); raw != nil {
			_ = raw.Control(func(fd uintptr) { _ = syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
			continue
		}
		fc.c.Close()
	}
}

// serveHTTP1 serves an HTTP connection of a filter chain: fast-path requests here, the connection
// handed to cs (net/http) at the first request that is not one.
//
// On a plain socket the whole exchange runs inside one RawConn.Read: the client's bytes are read with
// direct system calls, and after a response the goroutine waits for the poller's next readiness
// instead of trying a read first. net.Conn's Read tries first, and on a keep-alive connection the
// client's next request is never there yet right after the response: that read failed with EAGAIN
// on every request. A wait is safe here, unlike after a fresh RawConn.Read (which forgets the
// readiness seen before it): the poller was armed once, before the first read, so bytes that arrived
// at any time since the last read (a pipelined request) have marked the connection readable. A wake-up
// for bytes already read costs one EAGAIN read, as before.
func (p *Proxy) serveHTTP1(c net.Conn, info *connInfo, cs *connServer) {
	fc := &fastConn{c: c}
	p.fast.add(fc)
	defer p.fast.remove(fc)
	if p.draining.Load() {
		c.Close()
		return
	}
	s := &h1Conn1{p: p, fc: fc, c: c, info: info, remote: c.RemoteAddr().String(), fr: &fdReader{c: c}}
	s.br = bufio.NewReaderSize(s.fr, h1ServerBuf)
	s.bw = bufio.NewWriterSize(s.fr, h1ServerBuf)
	s.idleSet = monoNow()
	_ = c.SetReadDeadline(time.Now().Add(p.idleTimeout))
	next := stepWait
	if raw := rawConnOf(c); raw != nil {
		err := raw.Read(func(fd uintptr) bool {
			s.fr.fd, s.fr.direct = int(fd), true
			next = s.serve()
			s.fr.direct = false
			return next != stepWait
		})
		if err != nil {
			next = stepClose // the idle or header deadline passed, or a drain closed it
		}
	} else {
		next = s.serve()
	}
	if next == stepHandover {
		// net/http takes the connection over (its bytes so far included) and keeps it.
		_ = c.SetReadDeadline(time.Time{})
		var hc net.Conn = &peekedConn{Conn: c, r: s.br}
		if b, _ := s.br.Peek(min(s.br.Buffered(), len(h2cStart))); string(b) == h2cStart && p.h2relay {
			raw := newRawSockConn(c)
			s.fr.c = raw
			p.serveH2Relay(&peekedConn{Conn: raw, r: s.br}, info) // h2relay.go
			return
		}
		if b, _ := s.br.Peek(min(s.br.Buffered(), len(h2cStart))); string(b) == h2cStart {
			// h2c prior knowledge: raw reads and writes (rawio.go) and coalesced frames (h2coalesce.go).
			raw := newRawSockConn(c)
			s.fr.c = raw
			hc = newH2WriteConn(&peekedConn{Conn: raw, r: s.br}, false)
		}
		cs.serve(hc, info)
		return
	}
	fc.state.Store(fastClosed)
	c.Close()
}

// h1Conn1 is a client connection on the fast path.
type h1Conn1 struct {
	p       *Proxy
	fc      *fastConn
	c       net.Conn
	info    *connInfo
	remote  string
	fr      *fdReader
	br      *bufio.Reader
	bw      *bufio.Writer
	active  bool          // a request is being read or served (fc.state is fastActive)
	head    bool          // the read-header deadline is set
	idleSet time.Duration // when the idle deadline was last set (monoNow)
	lean    *leanState
}

// leanOff turns the lean path off (tests compare it with today's path).
var leanOff atomic.Bool

type step int

const (
	stepWait     step = iota // the client's next bytes have not arrived (direct reads only)
	stepHandover             // net/http serves the rest of the connection
	stepClose
)

// serve serves requests until the connection closes or goes to net/http; with direct reads it
// returns stepWait when it needs bytes that have not arrived, and is called again when they may have.
func (s *h1Conn1) serve() step {
	for {
		if _, err := s.br.Peek(1); err != nil {
			if err == errWouldBlock {
				return stepWait
			}
			return stepClose
		}
		if !s.active {
			if !s.fc.state.CompareAndSwap(fastIdle, fastActive) {
				return stepClose // closed by a drain while it was idle
			}
			s.active = true
		}
		head, err := s.peekHead()
		if err == errWouldBlock {
			return stepWait
		}
		if err == errAmbiguousHead {
			s.badRequest()
			return stepClose
		}
		if err != nil || !fastHead(head) {
			return stepHandover
		}
		handled, keep := false, false
		if !leanOff.Load() {
			handled, keep = s.serveLean(head) // h1lean.go
		}
		if !handled {
			req, err := http.ReadRequest(s.br) // the head is buffered whole: no read
			if err == nil && !validHost(req.Host) {
				err = errors.New("malformed Host header")
			}
			if err == nil && (req.ContentLength != 0 || len(req.TransferEncoding) > 0) {
				// fastHead saw no body: a parser that finds one reads the head differently, and the
				// body's bytes would be taken for the next request.
				err = errors.New("request body the fast path did not see")
			}
			if err != nil {
				s.badRequest()
				return stepClose
			}
			req.RemoteAddr = s.remote
			keep = s.p.serveFast(s.bw, req, s.info)
		}
		if err := s.bw.Flush(); err != nil || !keep || s.p.draining.Load() {
			return stepClose
		}
		// The idle deadline is moved at most once a second (moving it is a timer update per request):
		// a connection idles between the idle timeout - 1s and the idle timeout.
		now := time.Duration(0)
		if handled {
			now = s.lean.end // the lean request's end: no clock read of its own
		}
		if now == 0 {
			now = monoNow()
		}
		if s.head || now-s.idleSet >= time.Second {
			_ = s.c.SetReadDeadline(time.Now().Add(s.p.idleTimeout))
			s.idleSet = now
		}
		s.active, s.head = false, false
		if !s.fc.state.CompareAndSwap(fastActive, fastIdle) {
			return stepClose
		}
		if s.fr.direct && s.br.Buffered() == 0 {
			return stepWait // see serveHTTP1: wait for readiness, no read first
		}
	}
}

func (s *h1Conn1) badRequest() {
	_, _ = io.WriteString(s.c, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request")
}

// peekHead returns the request line and headers (through the blank line) from the read buffer,
// reading more as needed; errWouldBlock when more must be waited for, errAmbiguousHead for a head
// that parsers may split differently (answered 400), another error when it does not fit in the
// buffer or the read fails.
func (s *h1Conn1) peekHead() ([]byte, error) {
	br := s.br
	for {
		b, _ := br.Peek(br.Buffered())
		end := bytes.Index(b, []byte("\r\n\r\n"))
		if ambiguousHead(b, end) {
			return nil, errAmbiguousHead
		}
		if end >= 0 {
			return b[:end+4], nil
		}
		if br.Buffered() >= h1ServerBuf {
			return nil, errHeadTooLarge
		}
		if !s.head {
			_ = s.c.SetReadDeadline(time.Now().Add(s.p.readHeaderTimeout))
			s.head = true
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return nil, err
		}
	}
}

var (
	errHeadTooLarge  = errors.New("request head larger than the fast path's buffer")
	errAmbiguousHead = errors.New("ambiguous request head")
)

// ambiguousHead reports whether the head in b (through end, the index of its blank line, or all of b
// when it is not whole yet) is one that HTTP/1.1 parsers disagree on, the stuff of request smuggling
// (RFC 9112 §11.2): a bare LF or CR as a line end (Go CVE-2025-22871's class), an obs-fold line, a
// header name that is not a token (a space before the colon), a Transfer-Encoding other than one
// "chunked", a Transfer-Encoding with a Content-Length, or more than one Content-Length. Such a request gets a 400 and the connection closes, as Envoy does.
func ambiguousHead(b []byte, end int) bool {
	if end >= 0 {
		b = b[:end+2]
	}
	var cl, te int
	first := true
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return bytes.IndexByte(b, '\r') >= 0 && bytes.IndexByte(b, '\r') < len(b)-1 // a CR not before LF
		}
		if i == 0 || b[i-1] != '\r' || bytes.IndexByte(b[:i-1], '\r') >= 0 {
			return true // a bare LF, or a CR inside a line
		}
		line := b[:i-1]
		b = b[i+1:]
		if first {
			first = false
			continue
		}
		if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
			return true // obs-fold
		}
		name, val, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 {
			return true
		}
		for _, c := range name {
			if !tokenByte(c) {
				return true // "Transfer-Encoding : chunked" is a header to some and not to others
			}
		}
		switch {
		case asciiEqualFold(name, "Content-Length"):
			cl++
		case asciiEqualFold(name, "Transfer-Encoding"):
			te++
			if !asciiEqualFold(bytes.Trim(val, " \t"), "chunked") {
				return true
			}
		}
	}
	return cl > 1 || te > 1 || cl > 0 && te > 0
}

func asciiEqualFold(b []byte, s string) bool {
	return len(b) == len(s) && strings.EqualFold(string(b), s)
}

// fdReader reads and writes a client connection: with direct set (inside RawConn.Read's callback,
// which holds the connection's read lock) by raw system calls on fd (rawio.go), errWouldBlock for a
// read's EAGAIN; otherwise through the connection (net/http's server after a handover).
type fdReader struct {
	c      net.Conn
	fd     int
	direct bool
}

func (r *fdReader) Read(p []byte) (int, error) {
	if !r.direct {
		return r.c.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	n, e := rawRead(r.fd, p)
	switch {
	case e == syscall.EAGAIN:
		return 0, errWouldBlock
	case e != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: r.c.LocalAddr(), Addr: r.c.RemoteAddr(), Err: os.NewSyscallError("read", e)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes with raw write calls while direct (a response inside the connection's RawConn.Read),
// finishing with the connection's Write if the send buffer fills; otherwise through the connection.
func (r *fdReader) Write(p []byte) (int, error) {
	if !r.direct {
		return r.c.Write(p)
	}
	n := 0
	for n < len(p) {
		m, e := rawWrite(r.fd, p[n:])
		switch {
		case e == syscall.EAGAIN:
			m, err := r.c.Write(p[n:]) // waits for the send buffer as any Write
			return n + m, err
		case e != 0:
			return n, &net.OpError{Op: "write", Net: "tcp", Source: r.c.LocalAddr(), Addr: r.c.RemoteAddr(), Err: os.NewSyscallError("write", e)}
		}
		n += m
	}
	return n, nil
}

// serveFast runs the handler for one request and ends its response; it reports whether the
// connection can carry another request.
//
// The request's context is context.Background, which is never cancelled (see the top of this file):
// what the handler derives from it (route and per-try timeouts) it cancels itself, and a context that
// cannot end costs nothing to watch (the upstream pool registers no callback on it). The connection's
// connInfo is passed as an argument, not in the context.
func (p *Proxy) serveFast(bw *bufio.Writer, req *http.Request, info *connInfo) (keep bool) {
	w := &fastResponse{bw: bw, method: req.Method, contentLength: -1}
	if p.draining.Load() {
		w.closeAfter = true
	}
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				p.log.Error("panic serving HTTP", "panic", v)
			}
			keep = false
		}
	}()
	p.serveHTTP(w, req, info)
	return w.finish() && !w.closeAfter
}

// fastHead reports whether a request head is one the fast path serves: an origin-form HTTP/1.1
// request other than CONNECT, with a Host, and without a body (no Content-Length or
// Transfer-Encoding), an upgrade, a Connection or an Expect header.
func fastHead(head []byte) bool {
	line, rest, ok := bytes.Cut(head, []byte("\r\n"))
	if !ok || !bytes.HasSuffix(line, []byte(" HTTP/1.1")) {
		return false
	}
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 || sp+1 >= len(line) || line[sp+1] != '/' || string(line[:sp]) == http.MethodConnect {
		return false
	}
	host := false
	for len(rest) > 0 {
		var h []byte
		h, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		if len(h) == 0 {
			break
		}
		colon := bytes.IndexByte(h, ':')
		if colon <= 0 {
			return false
		}
		switch name := string(h[:colon]); {
		case strings.EqualFold(name, "Host"):
			if host {
				return false // net/http answers 400 to more than one
			}
			host = true
		case strings.EqualFold(name, "Content-Length"), strings.EqualFold(name, "Transfer-Encoding"),
			strings.EqualFold(name, "Upgrade"), strings.EqualFold(name, "Connection"),
			strings.EqualFold(name, "Expect"), strings.EqualFold(name, "Trailer"):
			return false
		}
	}
	return host
}

// fastResponse is the http.ResponseWriter of the fast path: the head goes out with the first body
// bytes (or at the end); without a Content-Length from the handler the body is chunked.
type fastResponse struct {
	bw            *bufio.Writer
	method        string
	header        http.Header
	status        int  // 0 until WriteHeader
	wroteHead     bool // the head is in bw
	chunked       bool
	contentLength int64 // -1: not declared
	written       int64
	closeAfter    bool
	err           error
}

func (w *fastResponse) Header() http.Header {
	if w.header == nil {
		w.header = http.Header{}
	}
	return w.header
}

// adoptHeader makes h the response's header map when the handler has set no header yet and the
// head is not out (the forwarder hands over the upstream response's map instead of copying it).
func (w *fastResponse) adoptHeader(h http.Header) bool {
	if len(w.header) > 0 || w.status != 0 || w.wroteHead || h == nil {
		return false
	}
	w.header = h
	return true
}

func (w *fastResponse) WriteHeader(code int) {
	if w.status != 0 {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// An informational response goes out at once, with the headers set so far.
		w.writeStatus(code)
		_ = w.header.WriteSubset(w.bw, nil)
		_, _ = w.bw.WriteString("\r\n")
		w.fail(w.bw.Flush())
		return
	}
	if code < 100 || code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code))
	}
	w.status = code
}

func (w *fastResponse) writeStatus(code int) {
	_, _ = w.bw.WriteString("HTTP/1.1 ")
	_, _ = w.bw.WriteString(strconv.Itoa(code))
	_ = w.bw.WriteByte(' ')
	text := http.StatusText(code)
	if text == "" {
		text = "status code " + strconv.Itoa(code)
	}
	_, _ = w.bw.WriteString(text)
	_, _ = w.bw.WriteString("\r\n")
}

func (w *fastResponse) bodyAllowed() bool {
	return w.status != http.StatusNoContent && w.status != http.StatusNotModified && w.method != http.MethodHead
}

// writeHead puts the status line and headers in the buffer, choosing the body's framing; first is the
// first body bytes (for content sniffing, as net/http does), final says the body is complete.
func (w *fastResponse) writeHead(first []byte, final bool) {
	if w.wroteHead {
		return
	}
	w.wroteHead = true
	if w.status == 0 {
		w.status = http.StatusOK
	}
	h := w.Header()
	if cl := h.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			w.contentLength = n
		} else {
			h.Del("Content-Length")
		}
	}
	h.Del("Transfer-Encoding")
	trailers := len(h["Trailer"]) > 0
	if !trailers {
		for k := range h {
			if strings.HasPrefix(k, http.TrailerPrefix) {
				trailers = true
				break
			}
		}
	}
	switch {
	case w.status == http.StatusNoContent || w.status == http.StatusNotModified:
		// No body, and (as net/http) none of the headers that would describe one.
		h.Del("Content-Length")
		h.Del("Content-Type")
		w.contentLength = -1
	case w.method == http.MethodHead:
	case w.contentLength < 0 && final && !trailers:
		w.contentLength = int64(len(first))
		h.Set("Content-Length", strconv.Itoa(len(first)))
	case w.contentLength < 0:
		w.chunked = true
		h.Set("Transfer-Encoding", "chunked") // #nosec G113 -- Content-Length was removed above when not validly declared (contentLength < 0)
	}
	if _, ok := h["Content-Type"]; !ok && len(first) > 0 && w.bodyAllowed() {
		h.Set("Content-Type", http.DetectContentType(first))
	}
	if _, ok := h["Date"]; !ok {
		h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	if w.closeAfter {
		h.Set("Connection", "close")
	}
	w.writeStatus(w.status)
	_ = h.WriteSubset(w.bw, trailerKeys(h))
	_, _ = w.bw.WriteString("\r\n")
}

// trailerKeys are the header keys that are trailers (sent after a chunked body, not in the head).
func trailerKeys(h http.Header) map[string]bool {
	var m map[string]bool
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			if m == nil {
				m = map[string]bool{}
			}
			m[k] = true
		}
	}
	return m
}

func (w *fastResponse) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.writeHead(p, false)
	if !w.bodyAllowed() {
		if w.method == http.MethodHead {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if w.contentLength >= 0 && w.written+int64(len(p)) > w.contentLength {
		w.closeAfter = true
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if w.chunked {
		if len(p) == 0 {
			return 0, nil
		}
		_, _ = w.bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		_, _ = w.bw.WriteString("\r\n")
		_, _ = w.bw.Write(p)
		_, err := w.bw.WriteString("\r\n")
		w.fail(err)
		return len(p), w.err
	}
	n, err := w.bw.Write(p)
	w.fail(err)
	return n, w.err
}

func (w *fastResponse) fail(err error) {
	if err != nil && w.err == nil {
		w.err = err
		w.closeAfter = true
	}
}

// FlushError sends what is buffered (http.ResponseController uses it).
func (w *fastResponse) FlushError() error {
	if w.err != nil {
		return w.err
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.writeHead(nil, false)
	w.fail(w.bw.Flush())
	return w.err
}

func (w *fastResponse) Flush() { _ = w.FlushError() }

// finish ends the response (the last chunk and trailers of a chunked body), sending it when the
// connection closes after it; it reports whether the connection is still in step for another request.
func (w *fastResponse) finish() bool {
	if w.err != nil {
		return false
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.writeHead(nil, true)
	if w.chunked {
		_, _ = w.bw.WriteString("0\r\n")
		for _, k := range w.header.Values("Trailer") {
			for _, name := range strings.Split(k, ",") {
				name = http.CanonicalHeaderKey(strings.TrimSpace(name))
				for _, v := range w.header[name] {
					_, _ = w.bw.WriteString(name + ": " + v + "\r\n")
				}
			}
		}
		for k, vv := range w.header {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
				for _, v := range vv {
					_, _ = w.bw.WriteString(name + ": " + v + "\r\n")
				}
			}
		}
		_, _ = w.bw.WriteString("\r\n")
	}
	if hasToken(w.header["Connection"], "close") {
		w.closeAfter = true // the handler asked for it, as net/http honours
	}
	if w.contentLength >= 0 && w.written < w.contentLength && w.bodyAllowed() {
		w.closeAfter = true // the body came short: the client must not read the next response into it
	}
	if w.closeAfter {
		w.fail(w.bw.Flush())
	}
	// Otherwise the connection is kept, and serveHTTP1 sends what is left in bw.
	return w.err == nil
}

var errFastHijack = errors.New("the HTTP/1.1 fast path does not hijack connections")

// Hijack is not supported: upgrades and CONNECT never take the fast path.
func (w *fastResponse) Hijack() (net.Conn, *bufio.ReadWriter, error) { return nil, nil, errFastHijack }

// validHost reports whether a Host header has only the bytes net/http's server accepts in one
// (golang.org/x/net/http/httpguts.ValidHostHeader); net/http answers 400 to the others.
func validHost[T string | []byte](h T) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!$%&'()*+,-.:;=[]_~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// hasToken reports whether a comma-separated header (Connection) lists token, in any case.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
