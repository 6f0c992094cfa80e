package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/weftmesh/weft/dataplane/config"
	"github.com/weftmesh/weft/dataplane/testpki"
)

// tcpPair is a connected pair of loopback TCP sockets.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// The sidecars' mTLS hop runs TLS over rawSockConn on both ends: the client sidecar's dialed
// connection (dialTLS), and through it a TLS server on a rawSockConn as the inbound listener makes
// one; megabytes both ways at once (writes that fill the socket buffers and wait for the poller) come
// through intact.
func TestMTLSHopOverRawSockets(t *testing.T) {
	ca := testpki.NewCA("test")
	client := New(Options{Identity: testpki.Identity{Leaf: ca.Issue("spiffe://cluster.local/ns/a/sa/client"), CA: ca}})
	server := New(Options{Identity: testpki.Identity{Leaf: ca.Issue("spiffe://cluster.local/ns/a/sa/server"), CA: ca}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	payload := make([]byte, 4<<20)
	_, _ = rand.Read(payload)
	type result struct {
		got   []byte
		under net.Conn
		err   error
	}
	served := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			served <- result{err: err}
			return
		}
		under := newRawSockConn(c)
		tc := tls.Server(under, server.serverTLS(nil))
		defer tc.Close()
		werr := make(chan error, 1)
		go func() { _, err := tc.Write(payload); werr <- err }()
		got, err := io.ReadAll(io.LimitReader(tc, int64(len(payload))))
		if err == nil {
			err = <-werr
		}
		served <- result{got: got, under: under, err: err}
	}()

	st := newClusterState(client, "c")
	st.cfg.Store(&config.Cluster{Name: "c", ConnectTimeout: 5 * time.Second})
	conn, err := client.dialTLS(context.Background(), st, l.Addr().String(), []string{"h2"}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := conn.(*tls.Conn)
	if _, ok := tc.NetConn().(*rawSockConn); !ok {
		t.Fatalf("dialTLS runs TLS over %T, want *rawSockConn", tc.NetConn())
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN %q, want h2", p)
	}
	werr := make(chan error, 1)
	go func() { _, err := tc.Write(payload); werr <- err }()
	got, err := io.ReadAll(io.LimitReader(tc, int64(len(payload))))
	if err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("the client read other bytes than the server wrote")
	}
	r := <-served
	if r.err != nil {
		t.Fatal(r.err)
	}
	if _, ok := r.under.(*rawSockConn); !ok {
		t.Fatalf("the server side is %T, want *rawSockConn", r.under)
	}
	if !bytes.Equal(r.got, payload) {
		t.Fatal("the server read other bytes than the client wrote")
	}
	if n := st.connections.Load(); n != 1 {
		t.Fatalf("cluster counts %d connections, want 1", n)
	}
	conn.Close()
	if n := st.connections.Load(); n != 0 {
		t.Fatalf("cluster counts %d connections after Close, want 0", n)
	}
}

// rawSockConn reads and writes as the socket would: deadlines time out (and can be lifted), the
// peer's close is EOF, Close ends a waiting Read with net.ErrClosed, and a connection with a read
// buffer of its own is not wrapped.
func TestRawSockConnSemantics(t *testing.T) {
	a, b := tcpPair(t)
	ra := newRawSockConn(a)
	if _, ok := ra.(*rawSockConn); !ok {
		t.Fatalf("a TCP connection is not wrapped: %T", ra)
	}
	if c, ok := newRawSockConn(&peekedConn{Conn: a}).(*rawSockConn); ok {
		t.Fatalf("a peeked connection (bytes in its buffer) was wrapped: %T", c)
	}

	// A read deadline ends a waiting Read with a timeout, as on the socket.
	_ = ra.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	buf := make([]byte, 16)
	_, err := ra.Read(buf)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline: %v, want a timeout", err)
	}
	_ = ra.SetReadDeadline(time.Time{})

	if _, err := b.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	n, err := io.ReadFull(ra, buf[:5])
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	if _, err := ra.Write([]byte("world")); err != nil {
		t.Fatal(err)
	}
	if n, err := io.ReadFull(b, buf[:5]); err != nil || string(buf[:n]) != "world" {
		t.Fatalf("peer read %q, %v", buf[:n], err)
	}

	// A write deadline ends a write the peer does not read.
	big := make([]byte, 64<<20) // before the deadline: zeroing it can take longer than 50 ms
	_ = ra.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err = ra.Write(big)
	if !errors.As(err, &ne) || !ne.Timeout() || n == 0 || n >= len(big) {
		t.Fatalf("Write past its deadline: %d, %v; want part written and a timeout", n, err)
	}
	_ = ra.SetWriteDeadline(time.Time{})

	// The peer's close is EOF once its bytes are read.
	a2, b2 := tcpPair(t)
	r2 := newRawSockConn(a2)
	b2.Close()
	if _, err := io.ReadAll(r2); err != nil {
		t.Fatalf("ReadAll after the peer closed: %v, want EOF", err)
	}

	// Close ends a waiting Read.
	a3, _ := tcpPair(t)
	r3 := newRawSockConn(a3)
	done := make(chan error, 1)
	go func() { _, err := r3.Read(buf); done <- err }()
	time.AfterFunc(10*time.Millisecond, func() { r3.Close() })
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read ended by Close: %v, want net.ErrClosed", err)
	}
}

// A held write goes out with the next one, holdMax after holdNext when none follows, and before
// Close; without holdNext every write goes out at once.
func TestRawSockConnHoldNext(t *testing.T) {
	a, b := tcpPair(t)
	s := newRawSockConn(a).(*rawSockConn)
	s.enableCoalescing()
	read := func(n int) string {
		t.Helper()
		_ = b.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, n)
		if _, err := io.ReadFull(b, buf); err != nil {
			t.Fatal(err)
		}
		return string(buf)
	}
	write := func(p string) {
		t.Helper()
		if n, err := s.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}

	write("plain")
	if got := read(5); got != "plain" || s.writes.Load() != 1 {
		t.Fatalf("read %q after %d writes", got, s.writes.Load())
	}

	// Held until the next write: two Writes, one write call.
	s.co.holdMax = time.Hour
	s.holdNext()
	write("HEAD")
	if s.writes.Load() != 1 {
		t.Fatal("the held write was written at once")
	}
	write("DATA")
	if got := read(8); got != "HEADDATA" || s.writes.Load() != 2 {
		t.Fatalf("read %q after %d writes, want HEADDATA after 2", got, s.writes.Load())
	}
	// Only the next write is held.
	write("more")
	if got := read(4); got != "more" || s.writes.Load() != 3 {
		t.Fatalf("read %q after %d writes", got, s.writes.Load())
	}
	// Another handler's holdNext while a write is held: the write that releases it leaves the next
	// one held, and that one, with nothing after it, still goes out after holdMax.
	s.holdNext()
	write("H1")
	s.holdNext()
	write("D1")
	if got := read(4); got != "H1D1" || s.writes.Load() != 4 {
		t.Fatalf("read %q after %d writes, want H1D1 after 4", got, s.writes.Load())
	}
	s.co.holdMax = holdMax
	write("H2")
	if got := read(2); got != "H2" {
		t.Fatalf("read %q, want the held H2 after holdMax", got)
	}

	// Close writes what is held.
	s.co.holdMax = time.Hour
	s.holdNext()
	write("last")

	// With no write after it, a held one goes out after holdMax.
	a2, b2 := tcpPair(t)
	s2 := newRawSockConn(a2).(*rawSockConn)
	s2.enableCoalescing()
	s2.holdNext()
	if _, err := s2.Write([]byte("alone")); err != nil {
		t.Fatal(err)
	}
	_ = b2.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(b2, buf); err != nil || string(buf) != "alone" {
		t.Fatalf("read %q, %v; want the held write after holdMax", buf, err)
	}

	s.Close()
	if got, err := io.ReadAll(b); string(got) != "last" || err != nil {
		t.Fatalf("after Close the peer read %q, %v; want the held write, then EOF", got, err)
	}
}

// What holdNext assumes of net/http's HTTP/2 server: a handler that returns with a small body
// unflushed gets HEADERS and DATA written as the next two flushes, which then take one write call
// (two without holdNext).
func TestHoldNextCoalescesH2Response(t *testing.T) {
	ca := testpki.NewCA("test")
	srvP := New(Options{Identity: testpki.Identity{Leaf: ca.Issue("spiffe://cluster.local/ns/a/sa/server"), CA: ca}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("x"), 1024)
	type sockKey struct{}
	socks := make(chan *rawSockConn, 1)
	srv := srvP.newHTTPServer(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1024")
		_, _ = w.Write(body)
		if r.URL.Query().Get("hold") == "1" {
			r.Context().Value(sockKey{}).(*rawSockConn).holdNext()
		}
	})
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, sockKey{}, c.(*tls.Conn).NetConn())
	}
	srv.TLSConfig = srvP.serverTLS(nil)
	go func() {
		_ = srv.Serve(tlsListener{l, srv.TLSConfig, socks})
	}()
	defer srv.Close()

	cliP := New(Options{Identity: testpki.Identity{Leaf: ca.Issue("spiffe://cluster.local/ns/a/sa/client"), CA: ca}})
	st := newClusterState(cliP, "c")
	st.cfg.Store(&config.Cluster{Name: "c", ConnectTimeout: 5 * time.Second})
	defer st.close()
	var sock *rawSockConn
	get := func(hold string) int64 {
		t.Helper()
		req, _ := http.NewRequest("GET", "https://"+l.Addr().String()+"/?hold="+hold, nil)
		resp, err := st.tlsH2.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(got, body) || resp.ProtoMajor != 2 {
			t.Fatalf("HTTP/%d response of %d bytes, %v", resp.ProtoMajor, len(got), err)
		}
		if sock == nil {
			sock = <-socks
		}
		return sock.writes.Load()
	}
	prev := get("0")
	for range 3 {
		n := get("0")
		if n-prev != 2 {
			t.Fatalf("a response without holdNext took %d write calls, want 2 (HEADERS, DATA)", n-prev)
		}
		prev = n
	}
	for range 10 {
		n := get("1")
		if n-prev != 1 {
			t.Fatalf("a response after holdNext took %d write calls, want 1", n-prev)
		}
		prev = n
	}
}

// tlsListener accepts TLS over a coalescing rawSockConn, as the inbound listener does.
type tlsListener struct {
	net.Listener
	conf  *tls.Config
	socks chan<- *rawSockConn
}

func (l tlsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	s := newRawSockConn(c).(*rawSockConn)
	s.enableCoalescing()
	s.co.holdMax = time.Hour // no release by the timer: only the DATA frame's write may release HEADERS
	select {
	case l.socks <- s:
	default:
	}
	return tls.Server(s, l.conf), nil
}

// forward arms holdNext only for what net/http's HTTP/2 server then writes as HEADERS and one DATA
// frame: a body of 1 to 4 KB that was not flushed (known length, not an event stream), no trailers.
func TestForwardResponseSmallBody(t *testing.T) {
	for _, tc := range []struct {
		name   string
		body   int
		length int64
		ctype  string
		trail  bool
		want   bool
	}{
		{"1 KB", 1024, 1024, "", false, true},
		{"4 KB", 4096, 4096, "", false, true},
		{"empty", 0, 0, "", false, false},
		{"over 4 KB", 4097, 4097, "", false, false},
		{"unknown length (flushed)", 1024, -1, "", false, false},
		{"event stream (flushed)", 1024, 1024, "text/event-stream", false, false},
		{"trailers", 1024, 1024, "", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := &http.Response{StatusCode: 200, Header: http.Header{}, ContentLength: tc.length,
				Body: io.NopCloser(bytes.NewReader(make([]byte, tc.body)))}
			if tc.ctype != "" {
				resp.Header.Set("Content-Type", tc.ctype)
			}
			if tc.trail {
				resp.Trailer = http.Header{"X-Sum": {"1"}}
			}
			rec := httptest.NewRecorder()
			sw := &statusWriter{ResponseWriter: rec}
			got := New(Options{}).forwardResponse(sw, h2Body{sw, http.NewResponseController(rec)}, resp)
			if got != tc.want {
				t.Fatalf("forwardResponse = %v, want %v", got, tc.want)
			}
			if rec.Body.Len() != tc.body {
				t.Fatalf("the client got %d bytes of %d", rec.Body.Len(), tc.body)
			}
		})
	}
}
