package proxy

import (
	"net"
	"sync"
	"time"
)

// h2WriteConn puts the frames net/http's HTTP/2 code flushes one at a time for one exchange into
// fewer writes, on the plaintext (h2c) connections of the proxy: the client's connection to
// net/http's server (outbound and inbound listeners) and the h2c connections of the Transport to
// the app.
//
// Both ends of net/http's HTTP/2 flush after every frame of a gRPC call. The server's serve loop
// flushes as soon as its queue is empty, and a handler's HEADERS, DATA and trailers reach it one at a
// time (each waits for the one before to be written); the Transport flushes the request's HEADERS,
// each DATA frame and the END_STREAM frame separately. So a unary gRPC call through the proxy was
// six system calls, and six wake-ups of the peers, where it could be two; on loopback a write is
// most of the cost of a small frame (the receiver's side of TCP runs inside the sender's system
// call).
//
// The connection reads the frame headers of what it is asked to write. A write that ends with a
// stream's HEADERS (END_HEADERS, no END_STREAM) is held, because the same stream's next frame
// normally follows within a few goroutine hand-offs (a call's first DATA frame: a response's message,
// a request's body); the next write takes the held bytes along. A write ending with anything else —
// a DATA frame (a message is never held back: a streaming call's messages go at once, the first one
// included), END_STREAM, SETTINGS, PING, WINDOW_UPDATE, RST_STREAM, GOAWAY, a CONTINUATION — or in the
// middle of a frame, or holding more than h2HoldBytes, is written at once with whatever is held. So a
// unary gRPC call's response is two writes (HEADERS and message, then trailers) where net/http made
// three, and its request through the h2c Transport two where it made three. Held bytes are never
// stranded: holdMax after they were first held (a head whose body is slow to come, such as an event
// stream's or a call whose client waits for the server to speak first) they are written anyway, and
// Close writes them first: the cost to such a stream is its head waiting once, about 1 ms in an
// otherwise idle proxy (see holdMax), and only when nothing else is written on the connection
// meanwhile. (Holding a stream's first DATA frame too made a unary call one write, but a streaming
// call's first message then waited at each hop that held it: ~4 ms over two sidecars.) Errors of a
// held write are reported by the next Write.
type h2WriteConn struct {
	net.Conn

	mu      sync.Mutex
	pending []byte
	err     error
	timer   *time.Timer
	holdMax time.Duration // holdMax (tests change it)
	parse   h2FrameScan
}

// holdMax is when held bytes are written if no write has taken them along (normally the next frame
// follows within tens of microseconds: a few goroutine hand-offs inside the process). It is a Go
// timer, and in a process with nothing else to do Go's timers fire in whole milliseconds (the
// runtime's epoll_wait timeout; runtime/netpoll_epoll.go): such a release comes about 1 ms after
// the hold, not 200 µs.
const holdMax = 200 * time.Microsecond

// h2HoldBytes bounds what is held: bulk transfers are written as they come.
const h2HoldBytes = 4 << 10

// clientPreface is what an HTTP/2 client writes before its first frame.
const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// newH2WriteConn wraps c, an HTTP/2 connection without TLS; client says that this end writes the
// client preface first (the Transport's end).
func newH2WriteConn(c net.Conn, client bool) *h2WriteConn {
	w := &h2WriteConn{Conn: c, holdMax: holdMax}
	if client {
		w.parse.preface = len(clientPreface)
	}
	return w
}

func (w *h2WriteConn) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	open := w.parse.scan(p)
	if open && len(w.pending)+len(p) <= h2HoldBytes {
		if len(w.pending) == 0 {
			if w.timer == nil {
				w.timer = time.AfterFunc(w.holdMax, w.release)
			} else {
				w.timer.Reset(w.holdMax)
			}
		}
		w.pending = append(w.pending, p...)
		return len(p), nil
	}
	if len(w.pending) == 0 {
		return w.Conn.Write(p)
	}
	w.timer.Stop()
	held := len(w.pending)
	w.pending = append(w.pending, p...)
	n, err := w.Conn.Write(w.pending)
	w.reset()
	if err != nil {
		w.err = err
		return max(0, n-held), err
	}
	return len(p), nil
}

// release writes what is held, holdMax after it was first held.
func (w *h2WriteConn) release() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.pending) == 0 || w.err != nil {
		return
	}
	if _, err := w.Conn.Write(w.pending); err != nil {
		w.err = err
	}
	w.reset()
}

func (w *h2WriteConn) reset() {
	if cap(w.pending) > 2*h2HoldBytes {
		w.pending = nil
		return
	}
	w.pending = w.pending[:0]
}

// Close writes held bytes (one attempt, unless a write is in progress: Close is what ends that),
// then closes the connection.
func (w *h2WriteConn) Close() error {
	if w.mu.TryLock() {
		if len(w.pending) > 0 && w.err == nil {
			if w.timer != nil {
				w.timer.Stop()
			}
			_ = w.Conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			_, _ = w.Conn.Write(w.pending)
		}
		w.reset()
		w.err = net.ErrClosed
		w.mu.Unlock()
	}
	return w.Conn.Close()
}

// h2FrameScan follows the frame boundaries of an HTTP/2 byte stream written in arbitrary pieces.
type h2FrameScan struct {
	preface int     // bytes of the client preface still to come
	hdr     [9]byte // a frame header being read
	nhdr    int
	skip    int // payload bytes of the current frame still to come
	typ     byte
	flags   byte
}

const (
	h2FrameData    = 0x0
	h2FrameHeaders = 0x1
	h2FlagEndStrm  = 0x1
	h2FlagEndHdrs  = 0x4
)

// scan consumes p and reports whether it ended exactly at the end of a HEADERS frame with
// END_HEADERS and without END_STREAM: a stream whose first DATA frame is still to come.
func (s *h2FrameScan) scan(p []byte) bool {
	for len(p) > 0 {
		switch {
		case s.preface > 0:
			n := min(s.preface, len(p))
			s.preface -= n
			p = p[n:]
			s.typ = 0xff
		case s.skip > 0:
			n := min(s.skip, len(p))
			s.skip -= n
			p = p[n:]
		default:
			n := copy(s.hdr[s.nhdr:], p)
			s.nhdr += n
			p = p[n:]
			if s.nhdr < len(s.hdr) {
				return false
			}
			s.nhdr = 0
			s.skip = int(s.hdr[0])<<16 | int(s.hdr[1])<<8 | int(s.hdr[2])
			s.typ, s.flags = s.hdr[3], s.hdr[4]
		}
	}
	if s.skip > 0 || s.nhdr > 0 || s.preface > 0 {
		return false
	}
	return s.typ == h2FrameHeaders && s.flags&(h2FlagEndStrm|h2FlagEndHdrs) == h2FlagEndHdrs
}

// h2cStart is how a connection of HTTP/2 with prior knowledge begins.
const h2cStart = "PRI * HTTP/2.0"
