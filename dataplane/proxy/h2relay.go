package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/weftmesh/weft/dataplane/config"
)

// The HTTP/2 relay (--h2-relay) forwards HTTP/2 and gRPC frame by frame, as a proxy rather than an
// application server: the client's HTTP/2 connection (h2c with prior knowledge on the outbound and
// inbound listeners, ALPN h2 over mTLS on the inbound listener) is read by one goroutine, each
// upstream connection by one goroutine of its own, and no goroutine exists per stream. Frames are
// parsed with golang.org/x/net/http2's Framer and header blocks decoded with its hpack (already in the
// module graph; net/http bundles the same code): only what the relay needs to route and to keep the
// two connections' flow control apart is looked at. A stream's headers are decoded once (routing needs
// :authority and :path) and encoded again for the upstream connection (HPACK's dynamic table belongs
// to a connection), changed only where the route says so (host_rewrite); DATA payloads are copied
// once, into the frame for the other side.
//
// One mutex per session (the client connection and the upstream connections opened for it) guards
// all of its state; frames for the other side are appended to that connection's output buffer under
// it, and written by the goroutine that produced them once its reader has nothing more buffered, so
// that what arrived in one read leaves in one write (a unary gRPC call's HEADERS and DATA together).
// A goroutine that writes holds no lock, so a connection's reader keeps reading while its write is
// in progress; a write that blocks holds up only the goroutine that makes it.
//
// Flow control is kept per stream and end to end: the relay announces a window of relayStreamWindow
// per stream and relayConnWindow per connection, buffers what it receives up to that, and gives the
// sender credit back (WINDOW_UPDATE) only as the bytes are written to the receiver within the
// receiver's own windows. A slow reader thus holds back its own stream, and at most relayStreamWindow
// of the connection's window; buffers are bounded by the windows the relay announced.
//
// RST_STREAM is passed on with its code in both directions; a GOAWAY from an upstream refuses
// (REFUSED_STREAM, which a client may retry) the streams it did not process, and the connection takes
// no new ones; the proxy's drain sends GOAWAY to its clients. Trailers are forwarded as HEADERS with
// END_STREAM, so gRPC statuses pass unchanged.
//
// Upstream connections belong to the session that opened them (one per endpoint used, closed with
// the client's connection), so a client's streams share them and no lock is shared between sessions.
// Endpoints are chosen per stream with the proxy's routing and load balancing (routeTableFor, the
// route table, routeCluster, clusterRT.pick, least-request counts, circuit breaker, outlier feedback),
// and a connection that is never made is retried on another endpoint (connretry.go).
//
// Where net/http stays (h2relay_bridge.go): a stream the relay does not forward itself goes to
// serveHTTP, the same handler net/http's server calls, through an in-process bridge (a goroutine for
// that stream only): routes with a retry policy (a retry may need the body again), CONNECT and other
// requests without a routable path, HTTP/1.1 carried over the mTLS hop (Weft-Orig-Proto: its
// upstream is HTTP/1.1), ORIGINAL_DST clusters, and every request the route table does not route (so
// that the answer is serveHTTP's). HTTP/1.1 clients never reach the relay: the fast path and
// net/http's server keep them, and the client sidecar's net/http Transport carries them over mTLS.

const (
	relayStreamWindow  = 256 << 10 // per-stream receive window the relay announces
	relayConnWindow    = 4 << 20   // per-connection receive window the relay announces
	relayMaxStreams    = 1000      // SETTINGS_MAX_CONCURRENT_STREAMS the relay announces to clients
	relayMaxFrame      = 16384     // frames the relay reads (the default SETTINGS_MAX_FRAME_SIZE)
	relayReadBuf       = 32 << 10
	relayMaxControl    = 10000 // queued control frames (PING/SETTINGS acks) before the peer is cut off
	relayResetLimit    = 200   // premature resets that may end a connection (countReset)
	relayResetWindow   = time.Second
	relayWindowMax     = 1<<31 - 1
	relayOutBufMax     = 256 << 10 // an output buffer larger than this is not kept for reuse
	relayDefaultWindow = 65535
)

// relayBufPool holds the byte slices of streams' buffered data.
var relayBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

func getRelayBuf() []byte { return (*relayBufPool.Get().(*[]byte))[:0] }

func putRelayBuf(b []byte) {
	if b == nil || cap(b) > relayOutBufMax {
		return
	}
	b = b[:0]
	relayBufPool.Put(&b)
}

// h2Session is a client connection served by the relay and the upstream connections opened for it.
type h2Session struct {
	p    *Proxy
	info *connInfo
	ctx  context.Context // ends with the session (cancels dials and bridged handlers)
	stop context.CancelFunc

	mu       sync.Mutex
	down     *h2Conn
	ups      map[*host]*h2Conn
	dirty    []*h2Conn
	closed   bool
	draining bool
	streams  int // streams open on down
	idle     *time.Timer
	resets   int // streams reset by the client before their response head, since resetAt
	opened   int // streams opened since resetAt
	resetAt  time.Time
	ghdr     http.Header    // grpc-status for the metrics
	wg       sync.WaitGroup // upstream readers and bridged handlers
}

// h2Conn is one HTTP/2 connection of a session: the client's (down) or an upstream one.
type h2Conn struct {
	s      *h2Session
	c      net.Conn
	br     *bufio.Reader
	fr     *http2.Framer
	client bool // an upstream connection: the relay is its client
	h      *host
	cl     *clusterRT
	tls    bool
	server string // the upstream's SPIFFE id

	// guarded by s.mu
	out, spare   []byte
	flushing     bool
	dirty        bool
	closed       bool
	henc         *hpack.Encoder
	hbuf         bytes.Buffer
	sendWin      int64 // connection window the peer gives us
	recvWin      int64 // connection window we give the peer, not yet used
	owed         int64 // consumed bytes the peer has not been given back
	peerInitWin  int64
	peerMaxFrame int
	peerMaxStrm  uint32
	control      int // control frames queued in out
	streams      map[uint32]*h2Stream
	nextID       uint32      // upstream: the next stream id
	lastID       uint32      // client connection: the highest stream id opened
	ready        bool        // upstream: dialed and preface written
	waiting      []*h2Stream // upstream: streams waiting for the dial or for a stream slot
	goaway       bool        // upstream: the peer sent GOAWAY; client connection: the relay sent one

	// client connection: the streams the relay reset lately (h2relay_states.go)
	rstIDs  [relayRecentResets]uint32
	rstNext uint32
}

// h2Half is one direction of a stream: bytes received from one side, waiting to go to the other.
type h2Half struct {
	buf     []byte
	off     int
	end     bool                // END_STREAM received
	trl     []hpack.HeaderField // trailers received (with END_STREAM)
	sent    bool                // END_STREAM passed on
	recvWin int64               // what the sender may still send on this stream
	owed    int64               // consumed bytes the sender has not been given back
	sendWin int64               // what the receiver lets us send on this stream
	clen    int64               // content-length (-1: none)
	seen    int64
}

func (h *h2Half) pending() int { return len(h.buf) - h.off }

// h2Stream is one stream relayed from the client connection to an upstream one.
type h2Stream struct {
	s        *h2Session
	downID   uint32
	upID     uint32
	up       *h2Conn
	rs       reqState
	h        *host
	tried    triedHosts
	hdrs     []hpack.HeaderField // request headers until they are sent upstream
	grpc     bool
	req      h2Half // client → upstream
	resp     h2Half // upstream → client
	headers  bool   // the final response head went to the client
	code     int
	gstatus  string
	timer    *time.Timer
	bridge   *h2Bridge
	done     bool
	deadline time.Duration // grpc-timeout
	held     bool          // st holds one of its cluster's max_requests
}

// serveH2Relay serves c, a connection whose next bytes are the HTTP/2 client preface.
func (p *Proxy) serveH2Relay(c net.Conn, info *connInfo) {
	ctx, stop := context.WithCancel(context.Background())
	s := &h2Session{p: p, info: info, ctx: ctx, stop: stop, ups: map[*host]*h2Conn{}}
	d := s.newConn(c, false)
	s.down = d
	if !p.relays.add(s) {
		c.Close()
		stop()
		return
	}
	defer p.relays.remove(s)
	preface := make([]byte, len(clientPreface))
	_ = c.SetReadDeadline(time.Now().Add(p.readHeaderTimeout))
	if _, err := io.ReadFull(d.br, preface); err != nil || string(preface) != clientPreface {
		c.Close()
		stop()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	s.mu.Lock()
	d.out = appendSettings(d.out, []http2.Setting{
		{ID: http2.SettingMaxConcurrentStreams, Val: relayMaxStreams},
		{ID: http2.SettingInitialWindowSize, Val: relayStreamWindow},
		{ID: http2.SettingMaxHeaderListSize, Val: MaxHeaderBytes},
	})
	d.out = appendWindowUpdate(d.out, 0, relayConnWindow-relayDefaultWindow)
	d.recvWin = relayConnWindow
	s.markDirty(d)
	s.armIdle()
	s.mu.Unlock()
	s.flush()
	s.readLoop(d)
	s.shutdown()
	s.wg.Wait()
}

func (s *h2Session) newConn(c net.Conn, client bool) *h2Conn {
	hc := &h2Conn{s: s, client: client, peerInitWin: relayDefaultWindow, peerMaxFrame: relayMaxFrame,
		peerMaxStrm: relayWindowMax, sendWin: relayDefaultWindow, recvWin: relayDefaultWindow,
		streams: map[uint32]*h2Stream{}, nextID: 1}
	hc.henc = hpack.NewEncoder(&hc.hbuf)
	if c != nil {
		hc.attach(c)
	}
	return hc
}

func (hc *h2Conn) attach(c net.Conn) {
	hc.c = c
	hc.br = bufio.NewReaderSize(c, relayReadBuf)
	hc.fr = http2.NewFramer(nil, &contGuard{r: hc.br}) // h2relay_guard.go
	hc.fr.SetMaxReadFrameSize(relayMaxFrame)
	hc.fr.MaxHeaderListSize = MaxHeaderBytes
	hc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	hc.fr.SetReuseFrames()
}

// readLoop reads hc's frames until it fails or closes.
func (s *h2Session) readLoop(hc *h2Conn) {
	first := !hc.client
	for {
		f, err := hc.fr.ReadFrame()
		if first && err == nil {
			// The client's first frame must be SETTINGS (RFC 9113 §3.4).
			first = false
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				err = http2.ConnectionError(http2.ErrCodeProtocol)
			}
		}
		if errors.Is(err, http2.ErrFrameTooLarge) {
			err = http2.ConnectionError(http2.ErrCodeFrameSize)
		}
		s.mu.Lock()
		if err == nil {
			err = s.handle(hc, f)
		}
		if err != nil {
			var se http2.StreamError
			var ce http2.ConnectionError
			switch {
			case errors.As(err, &se):
				if !hc.client && se.StreamID > hc.lastID && se.StreamID%2 == 1 {
					hc.lastID = se.StreamID // a malformed request head still opened (and closes) its stream
				}
				s.streamError(hc, se.StreamID, se.Code)
				err = nil
			case errors.As(err, &ce):
				s.connError(hc, http2.ErrCode(ce))
			default:
				s.connGone(hc, err)
			}
		}
		s.mu.Unlock()
		if err != nil {
			s.flush()
			return
		}
		if hc.br.Buffered() == 0 || s.outBig() {
			s.flush()
		}
	}
}

// handle processes one frame read from hc (s.mu held); an error ends the connection.
func (s *h2Session) handle(hc *h2Conn, f http2.Frame) error {
	if hc.closed {
		return net.ErrClosed
	}
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if hc.client {
			return s.upHeaders(hc, f)
		}
		return s.downHeaders(f)
	case *http2.DataFrame:
		return s.data(hc, f)
	case *http2.RSTStreamFrame:
		st := hc.streams[f.StreamID]
		if st == nil {
			if hc.idleStream(f.StreamID) {
				return http2.ConnectionError(http2.ErrCodeProtocol) // an idle stream
			}
			return nil
		}
		if hc.client {
			st.rstFromUp(f.ErrCode)
		} else {
			if !st.headers {
				if s.countReset() {
					return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
				}
			}
			st.rstFromDown(f.ErrCode)
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		grew, err := s.settings(hc, f)
		if err != nil {
			return err
		}
		hc.out = appendFrameHdr(hc.out, 0, http2.FrameSettings, http2.FlagSettingsAck, 0)
		if grew {
			// What the larger windows let go leaves after the ack (a peer that changed the setting waits
			// for the ack, and the data it allows comes after it, as net/http's server sends it).
			for _, x := range hc.streams {
				s.pumpOf(x, hc)
			}
		}
		return s.queuedControl(hc)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		hc.out = appendFrameHdr(hc.out, 8, http2.FramePing, http2.FlagPingAck, 0)
		hc.out = append(hc.out, f.Data[:]...)
		return s.queuedControl(hc)
	case *http2.WindowUpdateFrame:
		return s.windowUpdate(hc, f)
	case *http2.GoAwayFrame:
		if hc.client {
			s.upGoaway(hc, f.LastStreamID)
		}
	case *http2.PriorityFrame:
		if selfDependent(f.StreamID, f.PriorityParam) {
			s.streamError(hc, f.StreamID, http2.ErrCodeProtocol)
		}
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // push is off (ENABLE_PUSH 0 upstream; never from clients)
	}
	return nil
}

// queuedControl counts a control frame queued for hc and cuts off a peer that makes them faster than
// it reads them (a PING or SETTINGS flood).
func (s *h2Session) queuedControl(hc *h2Conn) error {
	hc.control++
	s.markDirty(hc)
	if hc.control > relayMaxControl {
		return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
	}
	return nil
}

// countReset counts a stream the client reset before its response head (CVE-2023-44487's rapid
// reset) and reports whether the client went over the limit: as Envoy's premature-reset check, at
// least relayResetLimit such resets within relayResetWindow that are also more than half of the
// streams it opened in that time.
func (s *h2Session) countReset() bool {
	s.resetWindow()
	s.resets++
	return s.resets >= relayResetLimit && 2*s.resets > s.opened
}

func (s *h2Session) resetWindow() {
	if now := time.Now(); now.Sub(s.resetAt) > relayResetWindow {
		s.resetAt, s.resets, s.opened = now, 0, 0
	}
}

// settings applies the peer's SETTINGS; grew reports that its streams' send windows grew (the
// caller then sends what they allow: the windows of every open stream move by the change of
// SETTINGS_INITIAL_WINDOW_SIZE, and may become negative, RFC 9113 §6.9.2).
func (s *h2Session) settings(hc *h2Conn, f *http2.SettingsFrame) (grew bool, err error) {
	err = f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - hc.peerInitWin
			hc.peerInitWin = int64(st.Val)
			for _, x := range hc.streams {
				half := &x.resp
				if hc.client {
					half = &x.req
				}
				half.sendWin += delta
				if half.sendWin > relayWindowMax {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
			grew = grew || delta > 0
		case http2.SettingMaxFrameSize:
			hc.peerMaxFrame = int(st.Val)
		case http2.SettingHeaderTableSize:
			hc.henc.SetMaxDynamicTableSizeLimit(st.Val)
		case http2.SettingMaxConcurrentStreams:
			hc.peerMaxStrm = st.Val
		}
		return nil
	})
	return grew, err
}

// pumpOf moves the half of st that hc receives.
func (s *h2Session) pumpOf(st *h2Stream, to *h2Conn) {
	if to.client {
		s.pumpReq(st)
	} else {
		s.pumpResp(st)
	}
}

func (s *h2Session) windowUpdate(hc *h2Conn, f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		hc.sendWin += inc
		if hc.sendWin > relayWindowMax {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		for _, st := range hc.streams {
			if hc.sendWin <= 0 {
				break
			}
			s.pumpOf(st, hc)
		}
		return nil
	}
	st := hc.streams[f.StreamID]
	if st == nil {
		if hc.idleStream(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol) // RFC 9113 §5.1
		}
		return nil // a closed stream: WINDOW_UPDATE may still come (§6.9)
	}
	half := &st.resp
	if hc.client {
		half = &st.req
	}
	half.sendWin += inc
	if half.sendWin > relayWindowMax {
		s.streamError(hc, f.StreamID, http2.ErrCodeFlowControl)
		return nil
	}
	s.pumpOf(st, hc)
	return nil
}

// data takes a DATA frame: its bytes join the stream's buffer, within the window the relay gave.
func (s *h2Session) data(hc *h2Conn, f *http2.DataFrame) error {
	n := int64(f.Header().Length)
	hc.recvWin -= n
	if hc.recvWin < 0 {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	st := hc.streams[f.StreamID]
	var half *h2Half
	if st != nil {
		half = &st.req
		if hc.client {
			half = &st.resp
		}
	}
	if st == nil || half.end {
		// A stream already closed (reset), or half closed: its bytes still count in the connection window.
		if st == nil && hc.idleStream(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if st == nil {
			return s.closedData(hc, f.StreamID, n) // h2relay_states.go
		}
		s.credit(hc, nil, 0, n)
		s.streamError(hc, f.StreamID, http2.ErrCodeStreamClosed)
		return nil
	}
	half.recvWin -= n
	if half.recvWin < 0 {
		s.credit(hc, nil, 0, n)
		s.streamError(hc, f.StreamID, http2.ErrCodeFlowControl)
		return nil
	}
	if half.sent {
		s.credit(hc, nil, 0, n) // a request no longer forwarded (answered by the proxy, or its body closed)
		return nil
	}
	d := f.Data()
	if pad := n - int64(len(d)); pad > 0 {
		s.credit(hc, half, f.StreamID, pad) // padding is consumed at once
	}
	half.seen += int64(len(d))
	if half.clen >= 0 && (half.seen > half.clen || f.StreamEnded() && half.seen != half.clen) {
		s.streamError(hc, f.StreamID, http2.ErrCodeProtocol) // RFC 9113 §8.1.1: malformed
		return nil
	}
	if half.buf == nil {
		half.buf = getRelayBuf()
	}
	half.buf = append(half.buf, d...)
	if f.StreamEnded() {
		half.end = true
	}
	if hc.client {
		s.pumpResp(st)
	} else {
		s.pumpReq(st)
	}
	return nil
}

// credit gives the sender on hc back n consumed bytes of the stream id (half) and of the connection,
// in WINDOW_UPDATEs once a quarter of a window is owed.
func (s *h2Session) credit(hc *h2Conn, half *h2Half, id uint32, n int64) {
	if hc.closed || n == 0 {
		return
	}
	hc.owed += n
	if hc.owed >= relayConnWindow/4 {
		hc.out = appendWindowUpdate(hc.out, 0, uint32(hc.owed)) // #nosec G115 -- owed ≤ the connection window (< 2^31)
		hc.recvWin += hc.owed
		hc.owed = 0
		s.markDirty(hc)
	}
	if half == nil || half.end {
		return
	}
	half.owed += n
	if half.owed >= relayStreamWindow/4 {
		hc.out = appendWindowUpdate(hc.out, id, uint32(half.owed)) // #nosec G115 -- owed ≤ the stream window (< 2^31)
		half.recvWin += half.owed
		half.owed = 0
		s.markDirty(hc)
	}
}

// pumpReq writes what the client sent on st to its upstream stream, within the upstream's windows.
func (s *h2Session) pumpReq(st *h2Stream) {
	if st.bridge != nil {
		st.bridge.wake()
		return
	}
	up := st.up
	if up == nil || st.upID == 0 || up.closed || st.req.sent {
		return
	}
	s.pump(&st.req, s.down, st.downID, up, st.upID)
	if st.req.sent && st.resp.sent {
		st.maybeDone()
	}
}

// pumpResp writes what the upstream (or the bridged handler) sent on st to the client.
func (s *h2Session) pumpResp(st *h2Stream) {
	if st.resp.sent || s.down.closed || st.downID == 0 {
		return
	}
	var from *h2Conn
	if st.bridge == nil {
		from = st.up
	}
	s.pump(&st.resp, from, st.upID, s.down, st.downID)
	if st.bridge != nil {
		st.bridge.wake()
	}
	if st.resp.sent {
		st.maybeDone()
	}
}

// pump moves half's buffered bytes to (to, toID) in DATA frames within the stream's and the
// connection's send windows, credits them back to (from, fromID), and passes END_STREAM or trailers
// on once the buffer is empty.
func (s *h2Session) pump(half *h2Half, from *h2Conn, fromID uint32, to *h2Conn, toID uint32) {
	moved := false
	for half.pending() > 0 {
		n := min(int64(half.pending()), half.sendWin, to.sendWin, int64(to.peerMaxFrame))
		if n <= 0 {
			break
		}
		last := int(n) == half.pending() && half.end && half.trl == nil
		var flags http2.Flags
		if last {
			flags = http2.FlagDataEndStream
			half.sent = true
		}
		to.out = appendFrameHdr(to.out, int(n), http2.FrameData, flags, toID)
		to.out = append(to.out, half.buf[half.off:half.off+int(n)]...)
		half.off += int(n)
		half.sendWin -= n
		to.sendWin -= n
		moved = true
		if from != nil {
			s.credit(from, half, fromID, n)
		}
	}
	if half.pending() == 0 {
		half.buf, half.off = half.buf[:0], 0
		if half.end && !half.sent {
			half.sent = true
			moved = true
			if half.trl != nil {
				s.writeHeaders(to, toID, half.trl, true)
			} else {
				to.out = appendFrameHdr(to.out, 0, http2.FrameData, http2.FlagDataEndStream, toID)
			}
		}
	} else if half.off > cap(half.buf)/2 {
		k := copy(half.buf, half.buf[half.off:])
		half.buf, half.off = half.buf[:k], 0
	}
	if moved {
		s.markDirty(to)
	}
}

// writeHeaders encodes fields for hc and appends them as HEADERS (and CONTINUATION) frames.
func (s *h2Session) writeHeaders(hc *h2Conn, id uint32, fields []hpack.HeaderField, end bool) {
	hc.hbuf.Reset()
	for _, f := range fields {
		_ = hc.henc.WriteField(f)
	}
	block := hc.hbuf.Bytes()
	typ := http2.FrameHeaders
	for first := true; first || len(block) > 0; first = false {
		n := min(len(block), hc.peerMaxFrame)
		var flags http2.Flags
		if first && end {
			flags |= http2.FlagHeadersEndStream
		}
		if n == len(block) {
			flags |= http2.FlagHeadersEndHeaders
		}
		hc.out = appendFrameHdr(hc.out, n, typ, flags, id)
		hc.out = append(hc.out, block[:n]...)
		block = block[n:]
		typ = http2.FrameContinuation
	}
	s.markDirty(hc)
}

// outBig reports whether a connection has enough to write that it should not wait for the reader to
// run out of buffered frames.
func (s *h2Session) outBig() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, hc := range s.dirty {
		if len(hc.out) > 64<<10 {
			return true
		}
	}
	return false
}

func (s *h2Session) markDirty(hc *h2Conn) {
	if !hc.dirty {
		hc.dirty = true
		s.dirty = append(s.dirty, hc)
	}
}

// flush writes what the session's connections have to write (called without s.mu). A connection
// another goroutine is writing is left to it: that goroutine takes what was added before it lets go.
func (s *h2Session) flush() {
	s.mu.Lock()
	for len(s.dirty) > 0 {
		hc := s.dirty[len(s.dirty)-1]
		s.dirty = s.dirty[:len(s.dirty)-1]
		hc.dirty = false
		if hc.flushing || hc.c == nil || (hc.client && !hc.ready) {
			continue
		}
		hc.flushing = true
		for len(hc.out) > 0 && !hc.closed {
			buf := hc.out
			hc.out, hc.spare = hc.spare[:0], nil
			hc.control = 0
			s.mu.Unlock()
			_, err := hc.c.Write(buf)
			s.mu.Lock()
			if cap(buf) <= relayOutBufMax {
				hc.spare = buf[:0]
			}
			if err != nil {
				hc.c.Close() // its reader ends and cleans up
				break
			}
		}
		hc.flushing = false
	}
	s.mu.Unlock()
}

// streamError resets the stream id of hc with code, and its other side with CANCEL.
func (s *h2Session) streamError(hc *h2Conn, id uint32, code http2.ErrCode) {
	if !hc.closed {
		hc.out = appendRST(hc.out, id, code)
		hc.resetSent(id)
		s.markDirty(hc)
	}
	st := hc.streams[id]
	if st == nil {
		return
	}
	if hc.client {
		st.upID = 0 // already reset
		delete(hc.streams, id)
		st.rstFromUp(http2.ErrCodeInternal)
		return
	}
	delete(hc.streams, id)
	st.downID = 0
	st.rstFromDown(http2.ErrCodeCancel)
}

// connError sends GOAWAY with code on hc and closes it.
func (s *h2Session) connError(hc *h2Conn, code http2.ErrCode) {
	if !hc.closed && hc.c != nil {
		last := hc.lastID
		hc.out = appendGoAway(hc.out, last, code)
		buf := hc.out
		hc.out = nil
		// Written here, under the lock, with a short deadline: the connection is ending anyway.
		_ = hc.c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		if !hc.flushing {
			_, _ = hc.c.Write(buf)
		}
	}
	s.connGone(hc, errors.New("connection error "+code.String()))
}

// connGone ends hc (read error, EOF, or a connection error already sent) and its streams.
func (s *h2Session) connGone(hc *h2Conn, err error) {
	if hc.closed {
		return
	}
	hc.closed = true
	if hc.c != nil {
		hc.c.Close()
	}
	if hc == s.down {
		s.closeLocked()
		return
	}
	if s.ups[hc.h] == hc {
		delete(s.ups, hc.h)
	}
	for id, st := range hc.streams {
		delete(hc.streams, id)
		st.upID = 0
		st.upGone(err)
	}
	waiting := hc.waiting
	hc.waiting = nil
	for _, st := range waiting {
		if !st.done {
			st.upGone(err)
		}
	}
}

// closeLocked ends the session: every connection closes and every stream ends.
func (s *h2Session) closeLocked() {
	if s.closed {
		return
	}
	s.closed = true
	s.stop()
	if s.idle != nil {
		s.idle.Stop()
	}
	if !s.down.closed {
		s.down.closed = true
		s.down.c.Close()
	}
	for _, st := range s.down.streams {
		st.finish()
	}
	for _, hc := range s.ups {
		hc.closed = true
		if hc.c != nil {
			hc.c.Close()
		}
	}
	clear(s.ups)
}

// shutdown closes the session from its client connection's reader.
func (s *h2Session) shutdown() {
	s.mu.Lock()
	s.closeLocked()
	s.mu.Unlock()
}

// drain sends GOAWAY to the client (the proxy is shutting down) and closes the session once its
// streams are done.
func (s *h2Session) drain() {
	s.mu.Lock()
	defer s.flush()
	defer s.mu.Unlock()
	if s.closed || s.draining {
		return
	}
	s.draining = true
	d := s.down
	last := d.lastID
	d.out = appendGoAway(d.out, last, http2.ErrCodeNo)
	d.goaway = true
	s.markDirty(d)
	if s.streams == 0 {
		go s.closeSoon()
	}
}

// closeSoon closes a drained session with no streams left, relayGoawayLinger after its GOAWAY is
// written (as net/http's server: streams the client opened before it read the GOAWAY are refused
// meanwhile, so that it retries them elsewhere, rather than lost in a connection reset); a client
// that closes first ends it at once.
func (s *h2Session) closeSoon() {
	s.flush()
	time.AfterFunc(relayGoawayLinger, func() {
		s.mu.Lock()
		if !s.closed {
			_ = s.down.c.Close() // the reader ends the session
		}
		s.mu.Unlock()
	})
}

// relayGoawayLinger is how long a drained session stays open after its last stream (net/http's
// HTTP/2 server waits 1 s too).
const relayGoawayLinger = time.Second

// armIdle closes the session after the proxy's idle timeout without streams.
func (s *h2Session) armIdle() {
	if s.idle == nil {
		s.idle = time.AfterFunc(s.p.idleTimeout, func() {
			s.mu.Lock()
			if s.streams == 0 && !s.closed {
				_ = s.down.c.Close() // the reader ends the session
			}
			s.mu.Unlock()
		})
		return
	}
	s.idle.Reset(s.p.idleTimeout)
}

// downHeaders takes a HEADERS block from the client: a new stream, or a stream's trailers.
func (s *h2Session) downHeaders(f *http2.MetaHeadersFrame) error {
	d := s.down
	id := f.StreamID
	if st := d.streams[id]; st != nil {
		if st.req.end {
			s.streamError(d, id, http2.ErrCodeStreamClosed) // RFC 9113 §5.1: half closed (remote)
			return nil
		}
		if !f.StreamEnded() || len(f.PseudoFields()) > 0 || f.HasPriority() && selfDependent(id, f.Priority) {
			s.streamError(d, id, http2.ErrCodeProtocol)
			return nil
		}
		st.req.trl = f.Fields
		st.req.end = true
		if st.req.clen >= 0 && st.req.seen != st.req.clen {
			s.streamError(d, id, http2.ErrCodeProtocol)
			return nil
		}
		s.pumpReq(st)
		return nil
	}
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if id <= d.lastID {
		if d.recentlyReset(id) {
			return nil // trailers the client had in flight when the relay reset the stream
		}
		return http2.ConnectionError(http2.ErrCodeStreamClosed) // RFC 9113 §5.1: a closed stream
	}
	d.lastID = id
	if f.HasPriority() && selfDependent(id, f.Priority) {
		s.streamError(d, id, http2.ErrCodeProtocol)
		return nil
	}
	if d.goaway {
		d.out = appendRST(d.out, id, http2.ErrCodeRefusedStream)
		d.resetSent(id)
		s.markDirty(d)
		return nil
	}
	if s.streams >= relayMaxStreams {
		d.out = appendRST(d.out, id, http2.ErrCodeRefusedStream) // RFC 9113 §5.1.2
		d.resetSent(id)
		s.markDirty(d)
		return nil
	}
	if f.Truncated {
		// Over the header list limit the relay announced: 431, as net/http's server answers.
		st := s.newStream(id, f)
		st.errorResponse(http.StatusRequestHeaderFieldsTooLarge, "request header list over "+strconv.Itoa(MaxHeaderBytes)+" bytes")
		return nil
	}
	st := s.newStream(id, f)
	if !validRequestHeaders(f) {
		s.streamError(d, id, http2.ErrCodeProtocol)
		return nil
	}
	s.route(st, f)
	return nil
}

// relayStreams counts the streams the relay took (tests read it).
var relayStreams atomic.Int64

func (s *h2Session) newStream(id uint32, f *http2.MetaHeadersFrame) *h2Stream {
	relayStreams.Add(1)
	st := &h2Stream{s: s, downID: id}
	st.rs = reqState{info: s.info, start: time.Now()}
	st.req = h2Half{recvWin: relayStreamWindow, clen: -1, end: f.StreamEnded()}
	st.resp = h2Half{recvWin: relayStreamWindow, clen: -1, sendWin: s.down.peerInitWin}
	s.down.streams[id] = st
	s.streams++
	s.resetWindow()
	s.opened++
	if s.idle != nil {
		s.idle.Stop()
	}
	return st
}

// validRequestHeaders checks what RFC 9113 §8.2 and §8.3 make a malformed request (the Framer has
// checked names, values and the place of pseudo-header fields).
func validRequestHeaders(f *http2.MetaHeadersFrame) bool {
	var method, path, scheme, authority, protocol int
	for _, hf := range f.Fields {
		switch hf.Name {
		case ":method":
			method++
		case ":path":
			path++
			if hf.Value == "" {
				return false
			}
		case ":scheme":
			scheme++
		case ":authority":
			authority++
		case ":protocol":
			protocol++
		case ":status":
			return false
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return false
		case "te":
			if hf.Value != "trailers" {
				return false
			}
		}
	}
	if method != 1 || authority > 1 || protocol > 0 {
		return false
	}
	if f.PseudoValue("method") == http.MethodConnect {
		return path == 0 && scheme == 0 && authority == 1
	}
	return path == 1 && scheme == 1
}

// route decides where st goes, as serveHTTP would: the relay forwards it, or the bridge hands it to
// serveHTTP itself (see the package comment of this file for which).
func (s *h2Session) route(st *h2Stream, f *http2.MetaHeadersFrame) {
	authority := f.PseudoValue("authority")
	if authority == "" {
		for _, hf := range f.RegularFields() {
			if hf.Name == "host" {
				authority = hf.Value
			}
		}
	}
	path := f.PseudoValue("path")
	if q := strings.IndexByte(path, '?'); q >= 0 {
		path = path[:q]
	}
	st.rs.authority = authority
	origH1 := false
	for _, hf := range f.RegularFields() {
		switch hf.Name {
		case "content-type":
			st.grpc = len(hf.Value) >= 16 && hf.Value[:16] == "application/grpc"
		case "content-length":
			if n, err := strconv.ParseInt(hf.Value, 10, 64); err == nil && n >= 0 {
				st.req.clen = n
			}
		case "grpc-timeout":
			st.deadline, _ = grpcTimeout(hf.Value)
		case origProtoHeaderLower:
			origH1 = s.info.direction == "inbound"
		}
	}
	if origH1 {
		s.toBridge(st, f) // HTTP/1.1 from the client's sidecar: its upstream is HTTP/1.1 (serveHTTP)
		return
	}
	if st.req.clen >= 0 && st.req.end && st.req.clen != 0 {
		s.streamError(s.down, st.downID, http2.ErrCodeProtocol)
		return
	}
	rt := s.p.rt.Load()
	var route *config.Route
	var cl *clusterRT
	// A tap that is open, a chain with HTTP RBAC (authz.go), a request that tracing may trace
	// (trace.go), or a virtual host whose routes match on more than the path or have filters
	// (routefilter.go) leave the request to serveHTTP through the bridge, as the lean HTTP/1.1 path
	// does: its hooks decide, answer and report.
	// So does a :path that serveHTTP would route or forward differently (percent escapes, a query
	// it cleans: h2relay_headers.go).
	if f.PseudoValue("method") != http.MethodConnect && path != "" && path[0] == '/' && s.p.tap.on.Load() == nil &&
		!authzOn(rt, s.info) && !s.p.mayTrace(f.RegularFields()) && relayPathAsIs(f.PseudoValue("path")) {
		if table := rt.routeTableFor(s.info, authority); table != nil {
			if vh := table.match(authority); vh != nil && !vh.Extended {
				route = matchRoute(vh, path, nil)
			}
		}
		if route != nil {
			cl = rt.clusters[routeCluster(route)]
		}
	}
	if cl == nil || !relayable(route, cl) || cl.state.h2c == nil {
		s.toBridge(st, f)
		return
	}
	st.rs.route, st.rs.cluster, st.rs.timeout = route, cl, route.Timeout
	if cl.cfg.LB == config.LBRingHash {
		st.rs.hashKey = hashString(remoteIP(s.down.c.RemoteAddr().String()))
	}
	st.hdrs = withoutFields(f.Fields, relayDropsRequest) // h2relay_headers.go
	if route.HostRewrite != "" {
		st.hdrs = rewriteAuthority(st.hdrs, route.HostRewrite)
	}
	if cst := cl.state; cst.active.Add(1) > limit(cl.cfg.Breakers.MaxRequests, 1024) {
		cst.active.Add(-1)
		st.errorResponse(http.StatusServiceUnavailable, "circuit open for "+cl.cfg.Name)
		return
	}
	st.held = true
	if st.rs.timeout > 0 {
		st.timer = time.AfterFunc(st.rs.timeout, st.expire)
	}
	h := cl.pick(st.rs.hashKey)
	if h == nil {
		st.errorResponse(http.StatusServiceUnavailable, "cluster "+cl.cfg.Name+" has no ready endpoints")
		return
	}
	st.h = h
	st.tried.add(h)
	h.active.Add(1)
	s.attachUp(st)
}

const origProtoHeaderLower = "weft-orig-proto"

// relayable reports whether the relay forwards a request of route to cl itself. Routes with a retry
// policy go through net/http (a retry may need the request body again; the relay sends it as it
// comes), as do ORIGINAL_DST clusters (no endpoints to pick). Virtual hosts with Gateway API matches or
// filters (VirtualHost.Extended) and requests while a tap is open never get here (route, above). A
// route field added later that changes requests or responses must be added here or to Extended until
// the relay implements it.
func relayable(route *config.Route, cl *clusterRT) bool {
	return retryCount(route.Retry) == 0 && cl.cfg.Kind != config.ClusterOriginalDst
}

func rewriteAuthority(fields []hpack.HeaderField, host string) []hpack.HeaderField {
	out := make([]hpack.HeaderField, 0, len(fields))
	for _, f := range fields {
		switch f.Name {
		case ":authority":
			f.Value = host
		case "host":
			continue
		}
		out = append(out, f)
	}
	return out
}

// attachUp puts st on the session's connection to its endpoint, dialing one if there is none.
func (s *h2Session) attachUp(st *h2Stream) {
	h := st.h
	up := s.ups[h]
	if up == nil {
		up = s.newConn(nil, true)
		up.h, up.cl = h, st.rs.cluster
		up.tls = st.rs.cluster.cfg.TLS != nil && st.rs.cluster.state.tlsH2 != nil
		s.ups[h] = up
		s.wg.Add(1)
		go s.dialUp(up)
	}
	st.up = up
	if up.ready && int64(len(up.streams)) < int64(up.peerMaxStrm) {
		s.startUp(st)
		return
	}
	up.waiting = append(up.waiting, st)
}

// startUp opens st's stream on its upstream connection: its request head, then what the client has
// sent so far.
func (s *h2Session) startUp(st *h2Stream) {
	up := st.up
	st.upID = up.nextID
	up.nextID += 2
	up.streams[st.upID] = st
	st.req.sendWin = up.peerInitWin
	st.rs.upTLS = up.tls
	st.rs.serverID = up.server
	end := st.req.end && st.req.pending() == 0 && st.req.trl == nil
	s.writeHeaders(up, st.upID, st.hdrs, end)
	st.hdrs = nil
	if end {
		st.req.sent = true
	}
	s.pumpReq(st)
}

// dialUp connects up (its endpoint's address, mTLS to another sidecar or h2c), writes the preface and
// starts the streams waiting for it, then reads it until it ends.
func (s *h2Session) dialUp(up *h2Conn) {
	defer s.wg.Done()
	c, server, err := s.p.relayDial(s.ctx, up.cl, up.h, up.tls)
	s.mu.Lock()
	if err == nil && (s.closed || up.closed) {
		c.Close()
		err = net.ErrClosed
	}
	if err != nil {
		up.closed = true
		if s.ups[up.h] == up {
			delete(s.ups, up.h)
		}
		if s.ctx.Err() == nil {
			up.cl.outcome(up.h, 0)
		}
		waiting := up.waiting
		up.waiting = nil
		for _, st := range waiting {
			if !st.done {
				st.dialFailed(err)
			}
		}
		s.mu.Unlock()
		s.flush()
		return
	}
	up.attach(c)
	up.server = server
	up.out = append(up.out, clientPreface...)
	up.out = appendSettings(up.out, []http2.Setting{
		{ID: http2.SettingEnablePush, Val: 0},
		{ID: http2.SettingInitialWindowSize, Val: relayStreamWindow},
		{ID: http2.SettingMaxHeaderListSize, Val: MaxHeaderBytes},
	})
	up.out = appendWindowUpdate(up.out, 0, relayConnWindow-relayDefaultWindow)
	up.recvWin = relayConnWindow
	up.ready = true
	s.startWaiting(up)
	s.markDirty(up)
	s.mu.Unlock()
	s.flush()
	s.readLoop(up)
	s.mu.Lock()
	s.connGone(up, io.EOF)
	s.mu.Unlock()
	s.flush()
}

// startWaiting starts the streams waiting for up, as far as its concurrency limit allows.
func (s *h2Session) startWaiting(up *h2Conn) {
	for len(up.waiting) > 0 && int64(len(up.streams)) < int64(up.peerMaxStrm) && !up.goaway && !up.closed {
		st := up.waiting[0]
		up.waiting = up.waiting[1:]
		if !st.done {
			s.startUp(st)
		}
	}
}

// relayDial opens a connection to h: mTLS with ALPN h2 to another sidecar, else TCP (h2c). It takes
// one of the cluster's max_connections, as the Transports' dials do.
func (p *Proxy) relayDial(ctx context.Context, cl *clusterRT, h *host, useTLS bool) (net.Conn, string, error) {
	st := cl.state
	if useTLS {
		c, err := p.dialTLS(ctx, st, h.addrStr, []string{"h2"}, true)
		if err != nil {
			return nil, "", err
		}
		tc, ok := c.(*tls.Conn)
		if !ok {
			return c, "", nil
		}
		cs := tc.ConnectionState()
		if cs.NegotiatedProtocol != "h2" {
			tc.Close()
			return nil, "", &handshakeError{addr: h.addrStr, err: errors.New("peer did not agree to h2 (ALPN)")}
		}
		id := ""
		if len(cs.PeerCertificates) > 0 {
			id = spiffeID(cs.PeerCertificates[0])
		}
		return tc, id, nil
	}
	if err := st.acquireConn(); err != nil {
		return nil, "", err
	}
	d := net.Dialer{Timeout: st.cfg.Load().ConnectTimeout, KeepAlive: 30 * time.Second}
	c, err := d.DialContext(ctx, "tcp", h.addrStr)
	if c, err = st.countedConn(c, err); err != nil {
		return nil, "", err
	}
	return newRawSockConn(c), "", nil // rawio.go
}

// dialFailed moves st to another endpoint after its connection was never made (connretry.go), or
// answers with the failure.
func (st *h2Stream) dialFailed(err error) {
	s := st.s
	cl := st.rs.cluster
	st.h.active.Add(-1)
	st.up = nil
	if s.ctx.Err() == nil && !errors.Is(err, errCircuitOpen) {
		if next := cl.pickUntried(&st.tried); next != nil {
			s.p.metrics.connectRetry(cl.cfg.Name)
			st.h = next
			st.tried.add(next)
			next.active.Add(1)
			s.attachUp(st)
			return
		}
	}
	st.h = nil
	pe := leanTripError(&st.rs, st.tried.last().addrStr, err, false)
	st.errorResponse(pe.status, pe.msg)
}

func (t *triedHosts) last() *host { return t.h[t.n-1] }

// upGone ends st after its upstream connection ended.
func (st *h2Stream) upGone(err error) {
	if st.done {
		return
	}
	if !st.headers {
		st.rs.cluster.outcome(st.h, 0) // a gateway failure for outlier detection, as roundTrip's
		st.errorResponse(http.StatusBadGateway, "upstream "+st.h.addrStr+": connection closed")
		return
	}
	st.resetDown(http2.ErrCodeInternal)
}

// upGoaway takes an upstream's GOAWAY: no new streams go to hc, and the streams it did not process are
// refused to the client (it may retry them).
func (s *h2Session) upGoaway(hc *h2Conn, last uint32) {
	hc.goaway = true
	if s.ups[hc.h] == hc {
		delete(s.ups, hc.h)
	}
	for id, st := range hc.streams {
		if id > last {
			delete(hc.streams, id)
			st.upID = 0
			st.resetDown(http2.ErrCodeRefusedStream)
		}
	}
	waiting := hc.waiting
	hc.waiting = nil
	for _, st := range waiting {
		if !st.done {
			st.up = nil
			s.attachUp(st) // a new connection to the same endpoint
		}
	}
	if len(hc.streams) == 0 {
		s.connGone(hc, errors.New("GOAWAY"))
	}
}

// upHeaders takes a HEADERS block from an upstream: a response head (1xx or final) or trailers.
func (s *h2Session) upHeaders(hc *h2Conn, f *http2.MetaHeadersFrame) error {
	st := hc.streams[f.StreamID]
	if st == nil {
		if f.StreamID >= hc.nextID || f.StreamID%2 == 0 {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil // a stream the relay reset
	}
	if st.headers {
		// Trailers.
		if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
			s.streamError(hc, f.StreamID, http2.ErrCodeProtocol)
			return nil
		}
		if g := hpackValue(f.Fields, "grpc-status"); g != "" {
			st.gstatus = g
		}
		st.resp.trl = f.Fields
		st.resp.end = true
		s.pumpResp(st)
		return nil
	}
	status := f.PseudoValue("status")
	code, err := strconv.Atoi(status)
	if f.Truncated || err != nil || code < 100 || code > 999 {
		s.streamError(hc, f.StreamID, http2.ErrCodeProtocol)
		return nil
	}
	if code < 200 {
		if f.StreamEnded() {
			s.streamError(hc, f.StreamID, http2.ErrCodeProtocol)
			return nil
		}
		s.writeHeaders(s.down, st.downID, f.Fields, false) // 1xx passes on
		return nil
	}
	st.headers = true
	st.code = code
	if g := hpackValue(f.Fields, "grpc-status"); g != "" {
		st.gstatus = g
	}
	for _, hf := range f.RegularFields() {
		if hf.Name == "content-length" {
			if n, err := strconv.ParseInt(hf.Value, 10, 64); err == nil && n >= 0 {
				st.resp.clen = n
			}
		}
	}
	if st.h != nil {
		st.rs.cluster.outcome(st.h, code)
	}
	end := f.StreamEnded()
	s.writeHeaders(s.down, st.downID, withoutFields(f.Fields, relayDropsResponse), end)
	if end {
		st.resp.end, st.resp.sent = true, true
		st.maybeDone()
	}
	return nil
}

func hpackValue(fields []hpack.HeaderField, name string) string {
	for _, f := range fields {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// rstFromUp passes an upstream's RST_STREAM on to the client.
func (st *h2Stream) rstFromUp(code http2.ErrCode) {
	if st.up != nil && st.upID != 0 {
		delete(st.up.streams, st.upID)
		st.upID = 0
	}
	if st.resp.sent && code == http2.ErrCodeNo {
		// The response is complete and the upstream wants no more of the request (RFC 9113 §8.1).
		st.resetDown(http2.ErrCodeNo)
		return
	}
	st.resetDown(code)
}

// rstFromDown passes the client's RST_STREAM on to the upstream (or the bridged handler).
func (st *h2Stream) rstFromDown(code http2.ErrCode) {
	s := st.s
	if st.downID != 0 {
		delete(s.down.streams, st.downID)
		st.downID = 0
	}
	st.resetUp(code)
	st.finish()
}

// resetUp resets st's upstream stream, if it has one.
func (st *h2Stream) resetUp(code http2.ErrCode) {
	up := st.up
	if up != nil && st.upID != 0 {
		delete(up.streams, st.upID)
		if !up.closed {
			up.out = appendRST(up.out, st.upID, code)
			st.s.markDirty(up)
		}
		st.upID = 0
		if up.goaway && len(up.streams) == 0 {
			st.s.connGone(up, errors.New("GOAWAY"))
		}
	}
}

// resetDown resets st towards the client with code (and its upstream stream with CANCEL) and ends it.
func (st *h2Stream) resetDown(code http2.ErrCode) {
	s := st.s
	if st.downID != 0 {
		delete(s.down.streams, st.downID)
		if !s.down.closed {
			s.down.out = appendRST(s.down.out, st.downID, code)
			s.down.resetSent(st.downID)
			s.markDirty(s.down)
		}
		st.downID = 0
	}
	st.resetUp(http2.ErrCodeCancel)
	st.finish()
}

// expire ends a stream at its route's timeout.
func (st *h2Stream) expire() {
	s := st.s
	s.mu.Lock()
	if !st.done {
		if !st.headers {
			st.errorResponse(http.StatusGatewayTimeout, "upstream timeout after "+st.rs.timeout.String())
		} else {
			st.resetDown(http2.ErrCodeCancel)
		}
	}
	s.mu.Unlock()
	s.flush()
}

// errorResponse answers st with a proxy-made failure (as writeWeftError: gRPC clients get a gRPC
// status) and resets its upstream stream.
func (st *h2Stream) errorResponse(status int, msg string) {
	s := st.s
	st.resetUp(http2.ErrCodeCancel)
	if st.downID == 0 || s.down.closed {
		st.finish()
		return
	}
	st.headers = true
	fields := make([]hpack.HeaderField, 0, 6)
	if st.grpc {
		code := "14"
		if status == http.StatusGatewayTimeout {
			code = "4"
		}
		st.code, st.gstatus = http.StatusOK, code
		fields = append(fields, hpack.HeaderField{Name: ":status", Value: "200"},
			hpack.HeaderField{Name: "content-type", Value: "application/grpc"},
			hpack.HeaderField{Name: "grpc-status", Value: code},
			hpack.HeaderField{Name: "grpc-message", Value: grpcMessage(msg)},
			hpack.HeaderField{Name: "weft-error", Value: msg})
		s.writeHeaders(s.down, st.downID, fields, true)
		st.resp.end, st.resp.sent = true, true
	} else {
		st.code = status
		fields = append(fields, hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)},
			hpack.HeaderField{Name: "weft-error", Value: msg},
			hpack.HeaderField{Name: "content-type", Value: "text/plain; charset=utf-8"},
			hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(len(msg) + 1)})
		s.writeHeaders(s.down, st.downID, fields, false)
		st.resp.buf = append(st.resp.buf[:0], msg...)
		st.resp.buf = append(st.resp.buf, '\n')
		st.resp.off, st.resp.end = 0, true
		s.pump(&st.resp, nil, 0, s.down, st.downID)
	}
	// The request's remaining bytes are not wanted: the client gets its window back as they come
	// (data on a stream whose request is "sent" is credited at once).
	st.req.sent = true
	st.s.creditAll(st)
	st.maybeDone()
}

// creditAll gives the client back what st buffered of its request (st no longer forwards it).
func (s *h2Session) creditAll(st *h2Stream) {
	if n := st.req.pending(); n > 0 {
		st.req.off = len(st.req.buf)
		s.credit(s.down, nil, 0, int64(n))
	}
}

// maybeDone ends st once its response has gone to the client in full and its request is done.
func (st *h2Stream) maybeDone() {
	if !st.resp.sent {
		return
	}
	if st.req.sent || st.upID == 0 && st.bridge == nil {
		if st.downID != 0 {
			delete(st.s.down.streams, st.downID)
			if !st.req.end {
				// The response is whole before the request: the client need send no more (RFC 9113 §8.1).
				st.s.down.out = appendRST(st.s.down.out, st.downID, http2.ErrCodeNo)
				st.s.down.resetSent(st.downID)
				st.s.markDirty(st.s.down)
			}
			st.downID = 0
		}
		if st.upID != 0 && st.up != nil {
			delete(st.up.streams, st.upID)
			if !st.req.sent {
				st.resetUp(http2.ErrCodeCancel)
			}
			st.upID = 0
		}
		st.finish()
	}
}

// finish ends st: its counts, timer, buffers and metrics (once).
func (st *h2Stream) finish() {
	if st.done {
		return
	}
	st.done = true
	s := st.s
	if st.downID != 0 {
		delete(s.down.streams, st.downID)
		st.downID = 0
	}
	if st.upID != 0 && st.up != nil {
		delete(st.up.streams, st.upID)
		if !st.up.closed {
			st.up.out = appendRST(st.up.out, st.upID, http2.ErrCodeCancel)
			s.markDirty(st.up)
		}
		st.upID = 0
	}
	if st.timer != nil {
		st.timer.Stop()
	}
	if st.h != nil {
		st.h.active.Add(-1)
		st.h = nil
	}
	if st.held {
		st.rs.cluster.state.active.Add(-1)
		st.held = false
	}
	if st.up != nil && !st.up.closed && st.up.ready {
		s.startWaiting(st.up)
		if st.up.goaway && len(st.up.streams) == 0 {
			s.connGone(st.up, errors.New("GOAWAY"))
		}
	}
	if st.bridge != nil {
		st.bridge.ended()
	} else {
		if st.code == 0 && st.grpc {
			// No response: counted as net/http's path counts it (a gRPC deadline that passed, else
			// CANCELLED; a request without response is a failure either way).
			st.code, st.gstatus = http.StatusOK, "1"
			if st.deadline > 0 && time.Since(st.rs.start) >= st.deadline {
				st.gstatus = "4"
			}
		}
		var h http.Header
		if st.gstatus != "" {
			if s.ghdr == nil {
				s.ghdr = http.Header{"Grpc-Status": {""}}
			}
			h = s.ghdr // the session's, reused (s.mu is held)
			h["Grpc-Status"][0] = st.gstatus
		}
		s.p.metrics.observeHTTP(s.p, &st.rs, st.code, h, st.rs.start)
	}
	putRelayBuf(st.req.buf)
	putRelayBuf(st.resp.buf)
	st.req.buf, st.resp.buf = nil, nil
	s.streams--
	if s.streams == 0 && !s.closed {
		if s.draining {
			go s.closeSoon()
		} else {
			s.armIdle()
		}
	}
}

// Frame writing (the Framer is used for reading only: writing appends to a connection's buffer).

// Fields go big-endian with encoding/binary's appenders; lengths are at most the peer's max frame
// size (2^24-1 by the RFC), and stream ids and window increments are 31-bit (the top bit, reserved,
// is cleared).

func appendFrameHdr(b []byte, length int, typ http2.FrameType, flags http2.Flags, id uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(length&0xffffff)<<8|uint32(typ)) // #nosec G115 -- masked to 24 bits
	b = append(b, byte(flags))
	return binary.BigEndian.AppendUint32(b, id&0x7fffffff)
}

func appendSettings(b []byte, settings []http2.Setting) []byte {
	b = appendFrameHdr(b, 6*len(settings), http2.FrameSettings, 0, 0)
	for _, s := range settings {
		b = binary.BigEndian.AppendUint16(b, uint16(s.ID))
		b = binary.BigEndian.AppendUint32(b, s.Val)
	}
	return b
}

func appendWindowUpdate(b []byte, id, inc uint32) []byte {
	b = appendFrameHdr(b, 4, http2.FrameWindowUpdate, 0, id)
	return binary.BigEndian.AppendUint32(b, inc&0x7fffffff)
}

func appendRST(b []byte, id uint32, code http2.ErrCode) []byte {
	b = appendFrameHdr(b, 4, http2.FrameRSTStream, 0, id)
	return binary.BigEndian.AppendUint32(b, uint32(code))
}

func appendGoAway(b []byte, lastID uint32, code http2.ErrCode) []byte {
	b = appendFrameHdr(b, 8, http2.FrameGoAway, 0, 0)
	b = binary.BigEndian.AppendUint32(b, lastID&0x7fffffff)
	return binary.BigEndian.AppendUint32(b, uint32(code))
}

// relaySessions are the relay's client connections, for the proxy's drain.
type relaySessions struct {
	mu      sync.Mutex
	m       map[*h2Session]struct{}
	wg      sync.WaitGroup
	closing bool
}

func (r *relaySessions) add(s *h2Session) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing {
		return false
	}
	if r.m == nil {
		r.m = map[*h2Session]struct{}{}
	}
	r.m[s] = struct{}{}
	r.wg.Add(1)
	return true
}

func (r *relaySessions) remove(s *h2Session) {
	r.mu.Lock()
	delete(r.m, s)
	r.mu.Unlock()
	r.wg.Done()
}

// drain sends GOAWAY on every session; each closes when its streams are done.
func (r *relaySessions) drain() {
	r.mu.Lock()
	r.closing = true
	all := make([]*h2Session, 0, len(r.m))
	for s := range r.m {
		all = append(all, s)
	}
	r.mu.Unlock()
	for _, s := range all {
		s.drain()
	}
}

// closeAll closes every session at once (the drain's deadline passed).
func (r *relaySessions) closeAll() {
	r.mu.Lock()
	all := make([]*h2Session, 0, len(r.m))
	for s := range r.m {
		all = append(all, s)
	}
	r.mu.Unlock()
	for _, s := range all {
		s.mu.Lock()
		if !s.closed {
			s.down.c.Close() // the reader ends the session
		}
		s.mu.Unlock()
	}
}

// mayTrace reports whether tracing may trace a request with these header fields: it starts traces, or
// the request carries a W3C or B3 context.
func (p *Proxy) mayTrace(fields []hpack.HeaderField) bool {
	if p.tracer == nil {
		return false
	}
	if p.tracer.SamplesNew() {
		return true
	}
	for _, hf := range fields {
		if hf.Name == "traceparent" || hf.Name == "b3" || strings.HasPrefix(hf.Name, "x-b3-") {
			return true
		}
	}
	return false
}
