package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
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
	t.Cleanup(func() { _ = client.Shutdown(context.Background()); _ = server.Shutdown(context.Background()) })
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
