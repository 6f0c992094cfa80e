package proxy

import (
	"bytes"
	"net"
	"testing"
	"time"
)

// recordConn is a net.Conn that records what is written to it.
type recordConn struct {
	net.Conn
	buf    bytes.Buffer
	writes int
}

func (c *recordConn) Write(p []byte) (int, error)       { c.writes++; return c.buf.Write(p) }
func (c *recordConn) Close() error                      { return nil }
func (c *recordConn) SetWriteDeadline(time.Time) error  { return nil }
func (c *recordConn) SetDeadline(time.Time) error       { return nil }
func (c *recordConn) SetReadDeadline(t time.Time) error { return nil }

// FuzzH2WriteConn is the HTTP/2 frame scanner of the proxy's h2c connections (h2coalesce.go) on
// arbitrary bytes written in arbitrary pieces, with or without the client preface. It must not
// panic; a write is held exactly when a frame-by-frame reading of the whole stream says it ends a
// HEADERS frame with END_HEADERS and without END_STREAM and the held bytes stay within h2HoldBytes;
// what is not held is written at once, in order; and after Close the peer has every byte, once.
func FuzzH2WriteConn(f *testing.F) {
	hdrs := h2Frame(h2FrameHeaders, h2FlagEndHdrs, 1, []byte("hpack"))
	data := h2Frame(h2FrameData, h2FlagEndStrm, 1, []byte("body"))
	settings := h2Frame(0x4, 0, 0, make([]byte, 6))
	f.Add(true, append(append(append([]byte(clientPreface), settings...), hdrs...), data...), []byte{24, 15, 14, 13})
	f.Add(false, append(append(settings, hdrs...), data...), []byte{15, 14, 1, 200})
	f.Add(false, append(hdrs, h2Frame(h2FrameHeaders, h2FlagEndHdrs|h2FlagEndStrm, 3, nil)...), []byte{14, 9})
	f.Add(false, h2Frame(h2FrameHeaders, h2FlagEndHdrs, 1, make([]byte, 5000)), []byte{255})
	f.Add(true, []byte("PRI * HTTP/2.0\r\n"), []byte{3})
	f.Add(false, []byte{0xff, 0xff, 0xff, 1, 4, 0, 0, 0, 1}, []byte{9})
	f.Fuzz(func(t *testing.T, client bool, stream, cuts []byte) {
		// The model: where each frame ends, and whether a write ending there is held.
		held := map[int]bool{}
		off := 0
		if client {
			off = min(len(clientPreface), len(stream))
		}
		for off+9 <= len(stream) {
			h := stream[off : off+9]
			end := off + 9 + (int(h[0])<<16 | int(h[1])<<8 | int(h[2]))
			held[end] = h[3] == h2FrameHeaders && h[4]&(h2FlagEndStrm|h2FlagEndHdrs) == h2FlagEndHdrs
			off = end
		}

		rc := &recordConn{}
		w := newH2WriteConn(rc, client)
		w.holdMax = time.Hour // no timer release during the test: what is held is what Write decided
		pos, model := 0, 0    // model: the bytes that should be held
		for i := 0; pos < len(stream); i++ {
			n := len(stream) - pos
			if i < len(cuts) {
				n = min(n, int(cuts[i]))
			}
			if k, err := w.Write(stream[pos : pos+n]); k != n || err != nil {
				t.Fatalf("Write of %d bytes: %d, %v", n, k, err)
			}
			pos += n
			if held[pos] && model+n <= h2HoldBytes {
				model += n
			} else {
				model = 0
			}
			w.mu.Lock()
			pending := len(w.pending)
			w.mu.Unlock()
			if pending != model {
				t.Fatalf("after a write ending at byte %d (ends an open HEADERS frame: %v), %d bytes held, want %d", pos, held[pos], pending, model)
			}
			if rc.buf.Len()+pending != pos || !bytes.Equal(rc.buf.Bytes(), stream[:rc.buf.Len()]) {
				t.Fatalf("at byte %d: %d bytes written (in order: %v) + %d held", pos, rc.buf.Len(), bytes.Equal(rc.buf.Bytes(), stream[:rc.buf.Len()]), pending)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(rc.buf.Bytes(), stream) {
			t.Fatalf("the peer got %d bytes that differ from the %d written", rc.buf.Len(), len(stream))
		}
	})
}
