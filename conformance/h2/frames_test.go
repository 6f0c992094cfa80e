package h2

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// frameEvent is what the server sent, as the attacking client saw it.
type frameEvent struct {
	typ      http2.FrameType
	stream   uint32
	code     http2.ErrCode // GOAWAY, RST_STREAM
	status   string        // HEADERS: :status
	ack      bool          // PING, SETTINGS
	closed   error         // the connection ended (io.EOF or the read error); typ is meaningless
	debug    string        // GOAWAY's debug data
	lastSent int64         // bytes the client had written when this arrived
}

func (e frameEvent) String() string {
	switch {
	case e.closed != nil:
		return fmt.Sprintf("connection closed (%v)", e.closed)
	case e.typ == http2.FrameGoAway:
		return fmt.Sprintf("GOAWAY %v %q", e.code, e.debug)
	case e.typ == http2.FrameRSTStream:
		return fmt.Sprintf("RST_STREAM stream %d %v", e.stream, e.code)
	case e.typ == http2.FrameHeaders:
		return fmt.Sprintf("HEADERS stream %d :status %s", e.stream, e.status)
	}
	return fmt.Sprintf("%v stream %d", e.typ, e.stream)
}

// h2client is a raw HTTP/2 client connection for sending what a well-behaved client never would. A
// goroutine reads every frame the server sends (acking its SETTINGS) and passes it on as an event.
type h2client struct {
	t        testing.TB
	conn     net.Conn
	wmu      sync.Mutex // guards bw, fr's writes, enc, sent
	bw       *bufio.Writer
	fr       *http2.Framer
	enc      *hpack.Encoder
	encBuf   bytes.Buffer
	sent     int64
	events   chan frameEvent
	settings map[http2.SettingID]uint32
	next     uint32 // next stream id
	// ended is set when GOAWAY arrives or the connection ends.
	ended atomic.Bool
}

// dialH2C opens prior-knowledge HTTP/2 to addr.
func dialH2C(t testing.TB, addr string) *h2client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return newH2Client(t, c)
}

// dialH2TLS opens HTTP/2 over TLS (ALPN h2) to addr with conf.
func dialH2TLS(t testing.TB, addr string, conf *tls.Config) *h2client {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	if err != nil {
		t.Fatal(err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		c.Close()
		t.Fatalf("ALPN %q from %s, want h2", p, addr)
	}
	return newH2Client(t, c)
}

func newH2Client(t testing.TB, c net.Conn) *h2client {
	h := &h2client{t: t, conn: c, bw: bufio.NewWriterSize(c, 64<<10), events: make(chan frameEvent, 1<<16),
		settings: map[http2.SettingID]uint32{}, next: 1}
	h.fr = http2.NewFramer(h.bw, bufio.NewReader(c))
	h.fr.AllowIllegalWrites = true // the point of this client
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.fr.MaxHeaderListSize = 1 << 20
	h.enc = hpack.NewEncoder(&h.encBuf)
	t.Cleanup(func() { c.Close() })
	h.write(func() error {
		if _, err := h.bw.WriteString(http2.ClientPreface); err != nil {
			return err
		}
		return h.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
	})
	// The server's SETTINGS come first; read them before the reader goroutine takes over.
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := h.fr.ReadFrame()
	if err != nil {
		t.Fatalf("reading the server's SETTINGS: %v", err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		t.Fatalf("the server's first frame is %v, want SETTINGS", f.Header())
	}
	_ = sf.ForeachSetting(func(s http2.Setting) error { h.settings[s.ID] = s.Val; return nil })
	_ = c.SetReadDeadline(time.Time{})
	h.write(func() error { return h.fr.WriteSettingsAck() })
	go h.read()
	return h
}

// write runs f under the write lock and flushes; a write error is not fatal (the server may have
// closed the connection on purpose): it is returned.
func (h *h2client) write(f func() error) error {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	err := f()
	if err == nil {
		err = h.bw.Flush()
	}
	return err
}

func (h *h2client) read() {
	for {
		f, err := h.fr.ReadFrame()
		h.wmu.Lock()
		sent := h.sent
		h.wmu.Unlock()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) { // a frame we could not take, on one stream: keep reading
				continue
			}
			h.ended.Store(true)
			h.events <- frameEvent{closed: err, lastSent: sent}
			return
		}
		ev := frameEvent{typ: f.Header().Type, stream: f.Header().StreamID, lastSent: sent}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			ev.ack = f.IsAck()
			if !f.IsAck() {
				_ = h.write(func() error { return h.fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			ev.ack = f.IsAck()
		case *http2.GoAwayFrame:
			ev.code, ev.debug = f.ErrCode, string(f.DebugData())
			h.ended.Store(true)
			h.events <- ev // never dropped
			continue
		case *http2.RSTStreamFrame:
			ev.code = f.ErrCode
		case *http2.MetaHeadersFrame:
			ev.typ = http2.FrameHeaders
			ev.status = f.PseudoValue("status")
		}
		select {
		case h.events <- ev:
		default: // nobody reads (a flood's answers): drop
		}
	}
}

// headerBlock HPACK-encodes fields.
func (h *h2client) headerBlock(fields ...hpack.HeaderField) []byte {
	h.encBuf.Reset()
	for _, f := range fields {
		_ = h.enc.WriteField(f)
	}
	return bytes.Clone(h.encBuf.Bytes())
}

// get is the header fields of a GET of authority/path.
func get(authority, path string, extra ...hpack.HeaderField) []hpack.HeaderField {
	return append([]hpack.HeaderField{
		{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: authority}, {Name: ":path", Value: path},
	}, extra...)
}

// newStream returns the next client stream id.
func (h *h2client) newStream() uint32 {
	id := h.next
	h.next += 2
	return id
}

// request sends a whole GET on a new stream and returns its id.
func (h *h2client) request(fields []hpack.HeaderField) uint32 {
	id := h.newStream()
	err := h.write(func() error {
		block := h.headerBlock(fields...)
		h.sent += int64(len(block) + 9)
		return h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true})
	})
	if err != nil {
		h.t.Fatalf("sending a request: %v", err)
	}
	return id
}

// await returns the first event that match accepts, failing the test after within; every event seen
// is kept in seen (for the failure message).
func (h *h2client) await(within time.Duration, match func(frameEvent) bool) (frameEvent, []frameEvent, bool) {
	var seen []frameEvent
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case ev := <-h.events:
			seen = append(seen, ev)
			if match(ev) {
				return ev, seen, true
			}
			if ev.closed != nil {
				return ev, seen, false
			}
		case <-timer.C:
			return frameEvent{}, seen, false
		}
	}
}

// ping sends a PING and reports whether its ACK came back within the time (the connection is alive
// and the server reads it).
func (h *h2client) ping(within time.Duration) (bool, []frameEvent) {
	if err := h.write(func() error { return h.fr.WritePing(false, [8]byte{'w', 'e', 'f', 't'}) }); err != nil {
		return false, nil
	}
	_, seen, ok := h.await(within, func(ev frameEvent) bool { return ev.typ == http2.FramePing && ev.ack })
	return ok, seen
}

// summarize lists events compactly, collapsing runs of the same kind.
func summarize(evs []frameEvent) string {
	var b bytes.Buffer
	last, n := "", 0
	flush := func() {
		if n > 0 {
			fmt.Fprintf(&b, "%s ×%d; ", last, n)
		}
	}
	for _, ev := range evs {
		s := ev.String()
		if ev.typ == http2.FrameHeaders || ev.typ == http2.FrameRSTStream || ev.typ == http2.FrameData {
			s = fmt.Sprintf("%v", ev.typ)
			if ev.typ == http2.FrameRSTStream {
				s += " " + ev.code.String()
			}
		}
		if s == last {
			n++
			continue
		}
		flush()
		last, n = s, 1
	}
	flush()
	return b.String()
}
