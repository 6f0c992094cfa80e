package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftmesh/weft/dataplane/config"
	"github.com/weftmesh/weft/dataplane/testpki"
)

// countingConn counts the Write calls that reach a socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// h2Frame is one HTTP/2 frame: 9-byte header and payload.
func h2Frame(typ, flags byte, stream uint32, payload []byte) []byte {
	b := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[5:], stream)
	return append(b, payload...)
}

func TestH2WriteConnHoldsOpenStreams(t *testing.T) {
	a, b := tcpPair(t)
	cc := &countingConn{Conn: a}
	w := newH2WriteConn(cc, false)
	w.holdMax = time.Hour
	var sent []byte
	write := func(p []byte) {
		t.Helper()
		sent = append(sent, p...)
		if n, err := w.Write(p); n != len(p) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	wantWrites := func(n int64, what string) {
		t.Helper()
		if got := cc.writes.Load(); got != n {
			t.Fatalf("%s: %d write calls, want %d", what, got, n)
		}
	}
	payload := bytes.Repeat([]byte("g"), 1029)

	// A gRPC response as net/http's server flushes it: HEADERS, DATA, trailers — two writes.
	write(h2Frame(h2FrameHeaders, h2FlagEndHdrs, 1, []byte("head")))
	wantWrites(0, "HEADERS of an open stream")
	write(h2Frame(h2FrameData, 0, 1, payload))
	wantWrites(1, "the stream's message, with its HEADERS")
	write(h2Frame(h2FrameHeaders, h2FlagEndHdrs|h2FlagEndStrm, 1, []byte("trailers")))
	wantWrites(2, "trailers ending the stream")

	// Control frames go at once, and take held bytes along.
	write(h2Frame(0x4, 0, 0, nil)) // SETTINGS
	wantWrites(3, "SETTINGS")
	write(h2Frame(h2FrameHeaders, h2FlagEndHdrs, 3, []byte("head")))
	write(h2Frame(0x8, 0, 0, []byte{0, 0, 1, 0})) // WINDOW_UPDATE
	wantWrites(4, "WINDOW_UPDATE after held HEADERS")

	// A write that ends inside a frame is not held; the frame's end is found in the next one.
	f := h2Frame(h2FrameHeaders, h2FlagEndHdrs, 5, payload)
	write(f[:4]) // inside the frame header
	wantWrites(5, "a write ending inside a frame header")
	write(f[4:100])
	wantWrites(6, "a write ending inside a payload")
	write(f[100:])
	wantWrites(6, "the rest of stream 5's HEADERS")
	write(h2Frame(h2FrameData, h2FlagEndStrm, 5, nil))
	wantWrites(7, "END_STREAM")

	// A streaming call: no message is held, the first included.
	write(h2Frame(h2FrameHeaders, h2FlagEndHdrs, 9, []byte("head")))
	write(h2Frame(h2FrameData, 0, 9, payload))
	wantWrites(8, "HEADERS and first message of stream 9")
	write(h2Frame(h2FrameData, 0, 9, payload))
	wantWrites(9, "stream 9's second message")

	// HEADERS without END_HEADERS (CONTINUATION follows), HEADERS ending the stream, and bulk
	// writes are not held.
	write(h2Frame(h2FrameHeaders, 0, 7, []byte("part")))
	wantWrites(10, "HEADERS without END_HEADERS")
	write(h2Frame(0x9, h2FlagEndHdrs, 7, []byte("rest")))
	wantWrites(11, "CONTINUATION")
	write(h2Frame(h2FrameHeaders, h2FlagEndHdrs|h2FlagEndStrm, 11, []byte("head")))
	wantWrites(12, "HEADERS with END_STREAM (a GET)")
	write(h2Frame(h2FrameHeaders, h2FlagEndHdrs, 13, bytes.Repeat([]byte("b"), h2HoldBytes)))
	wantWrites(13, "HEADERS over h2HoldBytes")

	// Close writes what is held.
	write(h2Frame(h2FrameHeaders, h2FlagEndHdrs, 15, []byte("head")))
	wantWrites(13, "HEADERS of stream 15")
	w.Close()
	_ = b.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(got, sent) {
		t.Fatalf("the peer read %d bytes (%v), want the %d written, in order", len(got), err, len(sent))
	}
}

// A held frame with nothing after it still goes out, holdMax after it was held.
func TestH2WriteConnReleasesAlone(t *testing.T) {
	a, b := tcpPair(t)
	cc := &countingConn{Conn: a}
	w := newH2WriteConn(cc, false)
	msg := h2Frame(h2FrameHeaders, h2FlagEndHdrs, 1, []byte("head of an event stream"))
	if _, err := w.Write(msg); err != nil {
		t.Fatal(err)
	}
	if cc.writes.Load() != 0 {
		t.Fatal("a stream's HEADERS were written at once")
	}
	_ = b.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read %q, %v; want the held frame after holdMax", got, err)
	}
}

// The Transport's end starts with the client preface, which is not a frame.
func TestH2WriteConnClientPreface(t *testing.T) {
	a, _ := tcpPair(t)
	cc := &countingConn{Conn: a}
	w := newH2WriteConn(cc, true)
	w.holdMax = time.Hour
	if _, err := w.Write(append([]byte(clientPreface), h2Frame(0x4, 0, 0, nil)...)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(h2Frame(h2FrameHeaders, h2FlagEndHdrs, 1, []byte("head"))); err != nil {
		t.Fatal(err)
	}
	if n := cc.writes.Load(); n != 1 {
		t.Fatalf("%d write calls after preface+SETTINGS and an open stream's HEADERS, want 1", n)
	}
}

// What the coalescing is for: net/http's HTTP/2 server answering a gRPC-style response (headers,
// a flushed message, trailers) on an h2c connection made one write call per frame; through
// h2WriteConn, as the listeners' h2c connections are, two per response (HEADERS with the message,
// then the trailers).
func TestH2WriteConnCoalescesH2cResponse(t *testing.T) {
	for _, coalesce := range []bool{false, true} {
		p := New(Options{})
		t.Cleanup(func() { _ = p.Shutdown(context.Background()) })
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		conns := make(chan *countingConn, 1)
		srv := p.newHTTPServer(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Trailer", "Grpc-Status")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(bytes.Repeat([]byte("m"), 1029))
			_ = http.NewResponseController(w).Flush()
			w.Header().Set("Grpc-Status", "0")
		})
		go func() { _ = srv.Serve(wrapListener{l, coalesce, conns}) }()

		st := newClusterState(p, "c")
		st.cfg.Store(&config.Cluster{Name: "c", ConnectTimeout: 5 * time.Second})
		var cnt *countingConn
		var prev int64
		for i := range 6 {
			req, _ := http.NewRequest("GET", "http://"+l.Addr().String()+"/", nil)
			resp, err := st.h2c.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || len(body) != 1029 || resp.Trailer.Get("Grpc-Status") != "0" {
				t.Fatalf("%d-byte body, %v, trailers %v", len(body), err, resp.Trailer)
			}
			if cnt == nil {
				cnt = <-conns
			}
			n := cnt.writes.Load()
			if i > 0 { // the first response shares writes with the connection's SETTINGS
				want := int64(3)
				if coalesce {
					want = 2
				}
				if n-prev != want {
					t.Errorf("coalesce=%v: a response took %d write calls, want %d", coalesce, n-prev, want)
				}
			}
			prev = n
		}
		st.close()
		srv.Close()
	}
}

// wrapListener counts the writes of accepted connections, optionally under an h2WriteConn.
type wrapListener struct {
	net.Listener
	coalesce bool
	conns    chan<- *countingConn
}

func (l wrapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &countingConn{Conn: c}
	select {
	case l.conns <- cc:
	default:
	}
	if !l.coalesce {
		return cc, nil
	}
	w := newH2WriteConn(cc, false)
	w.holdMax = time.Hour
	return w, nil
}

// h2FrameScan against a model of its rule, over frames of every kind (padded and prioritized
// HEADERS, CONTINUATION, PUSH_PROMISE, RST_STREAM, control frames, frames larger than a write)
// interleaved across streams and written in arbitrary pieces (the client preface and frame headers
// split too): at the end of each piece it reports "held" exactly when the piece ends a HEADERS frame
// with END_HEADERS and without END_STREAM.
func TestH2FrameScanModel(t *testing.T) {
	type frame struct {
		end        int
		typ, flags byte
		id         uint32
	}
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 7))
		client := seed%2 == 0
		var stream []byte
		if client {
			stream = append(stream, clientPreface...)
		}
		var frames []frame
		for range 1000 {
			id := uint32(1 + 2*r.IntN(1000))
			typ := []byte{0, 0, 0, 1, 1, 1, 2, 3, 4, 5, 6, 8, 9, 0x42}[r.IntN(14)]
			n := r.IntN(40)
			if r.IntN(20) == 0 {
				n = 5000 + r.IntN(20000)
			}
			stream = append(stream, h2Frame(typ, byte(r.IntN(256)), id, make([]byte, n))...)
			frames = append(frames, frame{len(stream), typ, stream[len(stream)-n-5], id})
		}
		// The model.
		held := map[int]bool{}
		for _, f := range frames {
			if f.typ == h2FrameHeaders {
				held[f.end] = f.flags&(h2FlagEndStrm|h2FlagEndHdrs) == h2FlagEndHdrs
			}
		}
		var s h2FrameScan
		if client {
			s.preface = len(clientPreface)
		}
		for off := 0; off < len(stream); {
			n := 1 + r.IntN(60)
			if r.IntN(3) == 0 { // up to the end of the frame in progress
				i := slices.IndexFunc(frames, func(f frame) bool { return f.end > off })
				n = frames[i].end - off
			}
			n = min(n, len(stream)-off)
			got := s.scan(stream[off : off+n])
			off += n
			if got != held[off] {
				t.Fatalf("seed %d: a write ending at byte %d: scan says held=%v, want %v", seed, off, got, held[off])
			}
		}
	}
}

// Close ends a write stuck on a peer that does not read — Write's own, or the timer's release of
// held bytes — instead of waiting for it; the stuck write then fails. On a plain socket and under
// TLS (the inbound listener's plainView).
func TestH2WriteConnCloseEndsStuckWrite(t *testing.T) {
	ca := testpki.NewCA("test")
	client := New(Options{Identity: testpki.Identity{Leaf: ca.Issue("spiffe://cluster.local/ns/a/sa/client"), CA: ca}})
	server := New(Options{Identity: testpki.Identity{Leaf: ca.Issue("spiffe://cluster.local/ns/a/sa/server"), CA: ca}})
	t.Cleanup(func() { _ = client.Shutdown(context.Background()); _ = server.Shutdown(context.Background()) })
	tlsPair := func(t *testing.T) (net.Conn, net.Conn) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				accepted <- nil
				return
			}
			tc := tls.Server(newRawSockConn(c), server.serverTLS(nil))
			if tc.Handshake() != nil {
				tc.Close()
				accepted <- nil
				return
			}
			accepted <- plainView{tc}
		}()
		st := newClusterState(client, "c")
		st.cfg.Store(&config.Cluster{Name: "c", ConnectTimeout: 5 * time.Second})
		peer, err := client.dialTLS(context.Background(), st, l.Addr().String(), []string{"h2"}, false)
		if err != nil {
			t.Fatal(err)
		}
		c := <-accepted
		if c == nil {
			t.Fatal("TLS handshake failed")
		}
		t.Cleanup(func() { peer.Close(); c.Close() })
		return c, peer
	}
	rawPair := func(t *testing.T) (net.Conn, net.Conn) {
		a, b := tcpPair(t)
		return newRawSockConn(a), b
	}
	for _, tc := range []struct {
		name    string
		pair    func(*testing.T) (net.Conn, net.Conn)
		release bool
	}{
		{"raw/Write", rawPair, false},
		{"raw/release", rawPair, true},
		{"tls/Write", tlsPair, false},
		{"tls/release", tlsPair, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := tc.pair(t) // the peer never reads
			w := newH2WriteConn(c, false)
			w.holdMax = time.Millisecond
			stuck := make(chan error, 1)
			if tc.release {
				// Held frames, each released by the timer, until a release finds the socket full and
				// waits (holding w.mu, so the next Write waits too).
				go func() {
					for id := uint32(1); ; id += 2 {
						if _, err := w.Write(h2Frame(h2FrameHeaders, h2FlagEndHdrs, id, make([]byte, 4000))); err != nil {
							stuck <- err
							return
						}
					}
				}()
			} else {
				// 64 MB in one Write, more than the socket buffers hold.
				big := h2Frame(h2FrameData, 0, 1, make([]byte, 1<<24-1))
				big = bytes.Repeat(big, 4)
				go func() {
					_, err := w.Write(big)
					stuck <- err
				}()
			}
			// Wait until w.mu stays held: a write is stuck on the socket.
			deadline := time.Now().Add(30 * time.Second)
			for free := 0; ; {
				if time.Now().After(deadline) {
					t.Fatal("no write got stuck")
				}
				if w.mu.TryLock() {
					w.mu.Unlock()
					free = 0
				} else if free++; free > 200 {
					break
				}
				time.Sleep(100 * time.Microsecond)
			}
			closed := make(chan error, 1)
			go func() { closed <- w.Close() }()
			select {
			case <-closed:
			case <-time.After(30 * time.Second):
				t.Fatal("Close waits for a write stuck on the socket")
			}
			select {
			case err := <-stuck:
				if err == nil {
					t.Fatal("the stuck write succeeded after Close")
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the stuck write goes on after Close")
			}
		})
	}
}
