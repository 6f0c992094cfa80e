package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/weftmesh/weft/dataplane/config"
)

// connInfo is what the request path knows about a downstream connection.
type connInfo struct {
	direction string // "outbound" or "inbound"
	explicit  bool   // the explicit HTTP proxy
	dst       netip.AddrPort
	// redirected is true when dst came from SO_ORIGINAL_DST (otherwise it is the listener's address).
	redirected bool
	local      netip.AddrPort
	chain      *chainRT
	tls        bool
	peerID     string // the client's SPIFFE id (inbound mTLS)
}

type connKeyType struct{}

var connKey connKeyType

// connServer is an http.Server fed with connections already matched to an HTTP filter chain.
type connServer struct {
	srv   *http.Server
	lis   *chanListener
	infos sync.Map // net.Conn → *connInfo, until ConnContext picks it up
}

func (p *Proxy) newConnServer(direction string) *connServer {
	cs := &connServer{lis: newChanListener()}
	cs.srv = p.newHTTPServer(func(w http.ResponseWriter, r *http.Request) {
		info, _ := r.Context().Value(connKey).(*connInfo)
		if info == nil {
			info = &connInfo{direction: direction}
		}
		p.serveHTTP(w, r, info)
	})
	cs.srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if v, ok := cs.infos.LoadAndDelete(c); ok {
			return context.WithValue(ctx, connKey, v)
		}
		return ctx
	}
	go func() { _ = cs.srv.Serve(cs.lis) }()
	return cs
}

func (cs *connServer) serve(c net.Conn, info *connInfo) {
	cs.infos.Store(c, info)
	if !cs.lis.push(c) {
		cs.infos.Delete(c)
		c.Close()
	}
}

func (p *Proxy) newHTTPServer(h http.HandlerFunc) *http.Server {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: p.readHeaderTimeout,
		IdleTimeout:       p.idleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          p.rp.ErrorLog,
		Protocols:         new(http.Protocols),
	}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetHTTP2(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	return srv
}

// chanListener is a net.Listener whose connections are pushed in by the proxy.
type chanListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }

func (p *Proxy) serveListener(l net.Listener, name string) error {
	return p.acceptLoop(l, func(c net.Conn) { p.handleConn(c, name) })
}

// acceptLoop accepts l's connections until it closes, handing each to handle in a goroutine of its own.
func (p *Proxy) acceptLoop(l net.Listener, handle func(net.Conn)) error {
	p.track(l, nil)
	for {
		c, err := l.Accept()
		if err != nil {
			if p.draining.Load() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		kickProcs() // a burst of load mostly starts with new connections (procs.go)
		go handle(c)
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// handleConn matches a new connection to a filter chain of the listener and hands it to HTTP or TCP.
func (p *Proxy) handleConn(c net.Conn, name string) {
	p.awaitConfig()
	if p.draining.Load() { // a Shutdown ended the wait
		c.Close()
		return
	}
	rt := p.rt.Load()
	lr := rt.listeners[name]
	if lr == nil {
		p.log.Debug("connection before the listener is configured", "listener", name)
		c.Close()
		return
	}
	info := &connInfo{direction: name, local: addrPort(c.LocalAddr())}
	info.dst, info.redirected = originalDst(c)
	if !info.redirected {
		info.dst = info.local
	}
	info.dst = netip.AddrPortFrom(info.dst.Addr().Unmap(), info.dst.Port())
	chain, conn := p.selectChain(lr, info.dst, c)
	if chain == nil {
		p.log.Debug("no filter chain matches", "listener", name, "dst", info.dst)
		conn.Close()
		return
	}
	info.chain = chain
	if chain.cfg.TLS != nil && p.identity != nil {
		// HTTP/2 on it goes through an h2WriteConn (below, or at the fast path's handover), which
		// puts a response's frames into one TLS record.
		under := newRawSockConn(conn)
		tc := tls.Server(under, p.serverTLS(chain.cfg.TLS.ALPN))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			p.log.Debug("inbound mTLS handshake failed", "remote", c.RemoteAddr(), "err", err)
			tc.Close()
			return
		}
		info.tls = true
		p.metrics.observeHandshake("inbound", tc.ConnectionState().DidResume)
		if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
			info.peerID = spiffeID(pc[0])
		}
		conn = tc
		if chain.cfg.HTTP != nil && tc.ConnectionState().NegotiatedProtocol != "h2" {
			// Not h2 by ALPN (say "weft" from an Envoy peer): hide the TLS type from the HTTP server so
			// it detects HTTP/2 prior knowledge or HTTP/1.1 from the bytes, as on a plaintext conn.
			conn = plainView{tc}
		}
	}
	if !p.authorizeConn(conn, info) { // authz.go
		conn.Close()
		return
	}
	switch {
	case chain.cfg.HTTP != nil:
		cs := p.outbound
		if name == "inbound" {
			cs = p.inbound
		}
		if tc, ok := conn.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol == "h2" && p.h2relay {
			p.serveH2Relay(tc, info) // h2relay.go
			return
		}
		if tc, ok := conn.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol == "h2" {
			// HTTP/2 between proxies: net/http's server, which takes it for HTTP/2 with prior
			// knowledge (its handlers do not look at the request's TLS state: the peer is in info),
			// so that its frames go through h2WriteConn (a gRPC response's HEADERS, DATA and
			// trailers in one TLS record and one write instead of three).
			cs.serve(newH2WriteConn(plainView{tc}, false), info)
			return
		}
		p.serveHTTP1(conn, info, cs)
	case chain.cfg.TCP != nil:
		defer p.trackTCP(conn, info)() // authz_current.go
		p.proxyTCP(conn, info, chain.cfg.TCP.Cluster)
	default:
		conn.Close()
	}
}

// selectChain follows Envoy's order: destination port, then the most specific destination prefix, then
// transport protocol, then application protocol. Only when the remaining chains differ by protocol is
// the first read done (bounded by the detect timeout); chains for opaque ports are never read first.
func (p *Proxy) selectChain(lr *listenerRT, dst netip.AddrPort, c net.Conn) (*chainRT, net.Conn) {
	var cands []*chainRT
	for _, ch := range lr.chains {
		if int(ch.cfg.Match.DestinationPort) == int(dst.Port()) {
			cands = append(cands, ch)
		}
	}
	if len(cands) == 0 {
		for _, ch := range lr.chains {
			if ch.cfg.Match.DestinationPort == 0 {
				cands = append(cands, ch)
			}
		}
	}
	// Most specific prefix.
	best, bestBits := []*chainRT(nil), -1
	for _, ch := range cands {
		bits := -1
		if len(ch.cfg.Match.Prefixes) == 0 {
			bits = 0
		}
		for _, pf := range ch.cfg.Match.Prefixes {
			if pf.Contains(dst.Addr()) && pf.Bits() > bits {
				bits = pf.Bits()
			}
		}
		if bits < 0 {
			continue
		}
		if bits > bestBits {
			best, bestBits = best[:0], bits
		}
		if bits == bestBits {
			best = append(best, ch)
		}
	}
	if len(best) == 0 {
		return lr.def, c
	}
	if len(best) == 1 && best[0].cfg.Match.TransportProtocol == "" && len(best[0].cfg.Match.ApplicationProtocols) == 0 {
		return best[0], c
	}
	pc := &peekedConn{Conn: c, r: bufio.NewReaderSize(c, 4096)}
	var conn net.Conn = pc
	needTLS, needApp := false, false
	for _, ch := range best {
		needTLS = needTLS || ch.cfg.Match.TransportProtocol != ""
		needApp = needApp || len(ch.cfg.Match.ApplicationProtocols) > 0
	}
	transport, app := "", ""
	_ = c.SetReadDeadline(time.Now().Add(p.detect))
	if needTLS {
		transport = "raw_buffer"
		if b, err := pc.r.Peek(1); err == nil && b[0] == 0x16 {
			transport = "tls"
		}
	}
	if needApp && transport != "tls" {
		app = detectHTTP(pc.r)
	}
	_ = c.SetReadDeadline(time.Time{})
	pick := func(f func(*config.ChainMatch) bool) []*chainRT {
		var out []*chainRT
		for _, ch := range best {
			if f(&ch.cfg.Match) {
				out = append(out, ch)
			}
		}
		return out
	}
	if needTLS {
		if exact := pick(func(m *config.ChainMatch) bool { return m.TransportProtocol == transport }); len(exact) > 0 {
			best = exact
		} else {
			best = pick(func(m *config.ChainMatch) bool { return m.TransportProtocol == "" })
		}
	}
	if needApp {
		exact := pick(func(m *config.ChainMatch) bool {
			for _, a := range m.ApplicationProtocols {
				if a == app {
					return true
				}
			}
			return false
		})
		if len(exact) > 0 {
			best = exact
		} else {
			best = pick(func(m *config.ChainMatch) bool { return len(m.ApplicationProtocols) == 0 })
		}
	}
	if len(best) == 0 {
		return lr.def, conn
	}
	return best[0], conn
}

var httpTokens = []string{"GET ", "POST ", "PUT ", "DELETE ", "HEAD ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE ", "PRI * HTTP/2.0"}

// detectHTTP reads just enough of the first bytes to tell HTTP/1.x ("http/1.1") or HTTP/2 prior
// knowledge ("h2c") from anything else ("").
func detectHTTP(r *bufio.Reader) string {
	for n := 1; n <= len("PRI * HTTP/2.0"); n++ {
		b, err := r.Peek(n)
		if err != nil {
			return ""
		}
		prefix := false
		for _, tok := range httpTokens {
			if len(b) <= len(tok) && tok[:len(b)] == string(b) {
				if len(b) == len(tok) {
					if tok[0] == 'P' && tok[1] == 'R' {
						return "h2c"
					}
					return "http/1.1"
				}
				prefix = true
			}
		}
		if !prefix {
			return ""
		}
	}
	return ""
}

// plainView is a TLS connection the HTTP server must treat as plaintext.
type plainView struct{ net.Conn }

// peekedConn replays the bytes read during detection.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// WriteTo sends the buffered bytes, then lets the kernel copy the rest (splice) when it can.
func (c *peekedConn) WriteTo(w io.Writer) (int64, error) {
	var n int64
	if k := c.r.Buffered(); k > 0 {
		b, _ := c.r.Peek(k)
		m, err := w.Write(b)
		n += int64(m)
		_, _ = c.r.Discard(m)
		if err != nil {
			return n, err
		}
	}
	m, err := io.Copy(w, c.Conn)
	return n + m, err
}
