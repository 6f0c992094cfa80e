package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The bridge serves one stream of a relay session with serveHTTP, the handler net/http's server
// calls, for the requests the relay does not forward itself (h2relay.go's comment says which): the
// request is built from the stream's headers, its body read from the stream's buffer (the client gets
// its window back as the handler reads), and the handler's response written as the stream's frames
// within the client's windows. It runs in a goroutine of its own, as net/http's server would run
// the handler.

// bridgeBuf bounds the response bytes a bridged handler may have waiting for the client's window.
const bridgeBuf = 64 << 10

type h2Bridge struct {
	st     *h2Stream
	cond   *sync.Cond // on the session's mutex
	cancel context.CancelFunc
	req    *http.Request
	hdr    http.Header
	wrote  bool // the final response head
	gone   bool // the stream ended before the handler
	trkeys []string
	// head is the final response head until the body's first byte, a flush or the handler's end sends
	// it: a head with nothing after it then goes with END_STREAM, as net/http's server does, which a
	// gRPC trailers-only answer (the proxy's own errors) needs.
	head []hpack.HeaderField
}

// sendHead writes the held final response head (s.mu held).
func (b *h2Bridge) sendHead() {
	if b.head != nil && !b.gone && !b.st.done {
		b.st.s.writeHeaders(b.st.s.down, b.st.downID, b.head, false)
	}
	b.head = nil
}

func (b *h2Bridge) wake() { b.cond.Broadcast() }

// ended is called (s.mu held) when the stream ends.
func (b *h2Bridge) ended() {
	b.gone = true
	b.cancel()
	b.cond.Broadcast()
}

// toBridge hands st to serveHTTP.
func (s *h2Session) toBridge(st *h2Stream, f *http2.MetaHeadersFrame) {
	r, err := s.bridgeRequest(st, f)
	if err != nil {
		s.streamError(s.down, st.downID, http2.ErrCodeProtocol)
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	b := &h2Bridge{st: st, cond: sync.NewCond(&s.mu), cancel: cancel, hdr: http.Header{}}
	b.req = r.WithContext(ctx)
	if !st.req.end {
		b.req.Body = &bridgeBody{b: b}
	}
	st.bridge = b
	s.wg.Add(1)
	go b.run()
}

func (s *h2Session) bridgeRequest(st *h2Stream, f *http2.MetaHeadersFrame) (*http.Request, error) {
	method := f.PseudoValue("method")
	path := f.PseudoValue("path")
	authority := st.rs.authority
	r := &http.Request{Method: method, Proto: "HTTP/2.0", ProtoMajor: 2, Header: http.Header{}, Host: authority,
		RemoteAddr: s.down.c.RemoteAddr().String(), Body: http.NoBody}
	if method == http.MethodConnect {
		r.URL = &url.URL{Host: authority}
		r.RequestURI = authority
	} else {
		u, err := url.ParseRequestURI(path)
		if err != nil {
			return nil, err
		}
		r.URL, r.RequestURI = u, path
	}
	var cookies []string
	for _, hf := range f.RegularFields() {
		switch hf.Name {
		case "cookie":
			cookies = append(cookies, hf.Value)
			continue
		case "trailer":
			for _, k := range strings.Split(hf.Value, ",") {
				if k = http.CanonicalHeaderKey(strings.TrimSpace(k)); k != "" {
					if r.Trailer == nil {
						r.Trailer = http.Header{}
					}
					r.Trailer[k] = nil
				}
			}
		}
		k := http.CanonicalHeaderKey(hf.Name)
		r.Header[k] = append(r.Header[k], hf.Value)
	}
	if len(cookies) > 0 {
		r.Header.Set("Cookie", strings.Join(cookies, "; "))
	}
	switch {
	case st.req.end:
		r.ContentLength = 0
	case st.req.clen >= 0:
		r.ContentLength = st.req.clen
	default:
		r.ContentLength = -1
	}
	return r, nil
}

func (b *h2Bridge) run() {
	s := b.st.s
	defer s.wg.Done()
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				s.p.log.Error("bridged handler panicked", "panic", v)
			}
			// ReverseProxy aborts a response it cannot complete: the client sees the stream reset.
			s.mu.Lock()
			if !b.st.done {
				b.st.resetDown(http2.ErrCodeInternal)
			}
			s.mu.Unlock()
			s.flush()
		}
	}()
	s.p.serveHTTP(b, b.req, s.info)
	s.mu.Lock()
	b.end()
	s.mu.Unlock()
	s.flush()
}

// end completes the response after the handler returned (s.mu held): the head if none was written,
// the trailers or END_STREAM once the buffered body has gone.
func (b *h2Bridge) end() {
	st := b.st
	if b.gone || st.done {
		return
	}
	if !b.wrote {
		b.writeHeader(http.StatusOK)
	}
	if b.head != nil && st.resp.pending() == 0 && len(b.trkeys) == 0 && !hasTrailerPrefix(b.hdr) {
		st.s.writeHeaders(st.s.down, st.downID, b.head, true) // head only: trailers-only for gRPC
		b.head = nil
		st.resp.end, st.resp.sent = true, true
		st.req.sent = true // the handler reads no more of the request
		st.s.creditAll(st)
		st.s.markDirty(st.s.down)
		st.maybeDone()
		return
	}
	b.sendHead()
	var trl []hpack.HeaderField
	for _, k := range b.trkeys {
		for _, v := range b.hdr[k] {
			trl = append(trl, hpack.HeaderField{Name: strings.ToLower(k), Value: v})
		}
	}
	for k, vs := range b.hdr {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			for _, v := range vs {
				trl = append(trl, hpack.HeaderField{Name: strings.ToLower(name), Value: v})
			}
		}
	}
	st.resp.trl = trl
	st.resp.end = true
	st.req.sent = true // the handler reads no more of the request
	st.s.creditAll(st)
	st.s.pumpResp(st)
}

func (b *h2Bridge) Header() http.Header { return b.hdr }

func (b *h2Bridge) WriteHeader(code int) {
	s := b.st.s
	s.mu.Lock()
	b.writeHeader(code)
	s.mu.Unlock()
	s.flush()
}

// writeHeader writes a response head (s.mu held): 1xx ones as they come, the final one once.
func (b *h2Bridge) writeHeader(code int) {
	st := b.st
	if b.wrote || b.gone || st.downID == 0 {
		return
	}
	fields := []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(code)}}
	for k, vs := range b.hdr {
		switch k {
		case "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade":
			continue
		}
		if strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		name := strings.ToLower(k)
		for _, v := range vs {
			fields = append(fields, hpack.HeaderField{Name: name, Value: v})
		}
	}
	if code < 200 {
		st.s.writeHeaders(st.s.down, st.downID, fields, false)
		return
	}
	b.wrote = true
	for _, v := range b.hdr["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			if k = strings.TrimSpace(k); k != "" {
				b.trkeys = append(b.trkeys, http.CanonicalHeaderKey(k))
			}
		}
	}
	st.headers = true
	st.code = code
	b.head = fields // sent by sendHead or end
}

func hasTrailerPrefix(h http.Header) bool {
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
	}
	return false
}

var errBridgeGone = errors.New("http2: stream closed")

func (b *h2Bridge) Write(p []byte) (int, error) {
	s := b.st.s
	st := b.st
	s.mu.Lock()
	if !b.wrote {
		b.writeHeader(http.StatusOK)
	}
	b.sendHead()
	n := 0
	for len(p) > 0 {
		if b.gone || st.done {
			s.mu.Unlock()
			return n, errBridgeGone
		}
		if room := bridgeBuf - st.resp.pending(); room > 0 {
			k := min(room, len(p))
			if st.resp.buf == nil {
				st.resp.buf = getRelayBuf()
			}
			st.resp.buf = append(st.resp.buf, p[:k]...)
			p, n = p[k:], n+k
			s.pumpResp(st)
			continue
		}
		s.mu.Unlock()
		s.flush()
		s.mu.Lock()
		if bridgeBuf-st.resp.pending() <= 0 && !b.gone && !st.done {
			b.cond.Wait()
		}
	}
	s.mu.Unlock()
	s.flush()
	return n, nil
}

func (b *h2Bridge) Flush() { _ = b.FlushError() }

// FlushError writes what is buffered (Write already passes bytes on as the client's windows allow).
func (b *h2Bridge) FlushError() error {
	s := b.st.s
	s.mu.Lock()
	if !b.wrote {
		b.writeHeader(http.StatusOK)
	}
	b.sendHead()
	gone := b.gone
	s.mu.Unlock()
	s.flush()
	if gone {
		return errBridgeGone
	}
	return nil
}

// bridgeBody is a bridged request's body: the stream's buffered DATA.
type bridgeBody struct{ b *h2Bridge }

func (r *bridgeBody) Read(p []byte) (int, error) {
	b := r.b
	st := b.st
	s := st.s
	s.mu.Lock()
	for {
		if k := st.req.pending(); k > 0 && !st.req.sent {
			n := copy(p, st.req.buf[st.req.off:])
			st.req.off += n
			if st.req.pending() == 0 {
				st.req.buf, st.req.off = st.req.buf[:0], 0
			}
			if st.downID != 0 {
				s.credit(s.down, &st.req, st.downID, int64(n))
			}
			s.mu.Unlock()
			s.flush()
			return n, nil
		}
		if st.req.end && !st.req.sent {
			for _, f := range st.req.trl {
				if b.req.Trailer == nil {
					b.req.Trailer = http.Header{}
				}
				k := http.CanonicalHeaderKey(f.Name)
				b.req.Trailer[k] = append(b.req.Trailer[k], f.Value)
			}
			st.req.trl = nil
			s.mu.Unlock()
			return 0, io.EOF
		}
		if b.gone || st.done || st.req.sent {
			s.mu.Unlock()
			return 0, errBridgeGone
		}
		b.cond.Wait()
	}
}

// Close ends the handler's reading: what the client still sends is credited back and dropped.
func (r *bridgeBody) Close() error {
	st := r.b.st
	s := st.s
	s.mu.Lock()
	if !st.req.end {
		st.req.sent = true
		s.creditAll(st)
	}
	r.b.wake() // a Read waiting for DATA (the transport's body writer) returns now
	s.mu.Unlock()
	s.flush()
	return nil
}
