package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/weftmesh/weft/dataplane/testpki"
)

// TestAuthorizationAppliesToOpenConnections: a policy pushed while connections are open applies to
// them. A keep-alive HTTP/1.1 connection (the lean path), an h2c connection (net/http's server), an
// mTLS HTTP/2 connection as between sidecars (the relay) and an mTLS TCP connection are open and
// allowed; then the control plane pushes an ALLOW that admits nobody: the next request on each SAME
// HTTP connection gets a 403, and the TCP connection is closed.
func TestAuthorizationAppliesToOpenConnections(t *testing.T) {
	ca := testpki.NewCA("mesh")
	app := startBackend(t, "app", "127.0.0.1:0")
	lineApp := listen(t, "127.0.0.1:0")
	serveEach(lineApp, func(c net.Conn) { _, _ = io.Copy(c, c); c.Close() }) // an echo that stays open
	httpPort, tcpPort := int(app.addr.Port()), lineApp.Addr().(*net.TCPAddr).Port

	cp := startCP(t, "127.0.0.1:0", nil, false)
	cp.set(t, serverNode.ID(), "v1", inboundPorts(map[int]bool{httpPort: false, tcpPort: true})...)
	server := startSidecar(t, cp.addr, serverNode, testpki.Identity{Leaf: ca.Issue(echoID), CA: ca})
	httpAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.30"), uint16(httpPort)).String()
	tcpAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.30"), uint16(tcpPort)).String()
	server.inboundAt(t, httpAddr)
	server.inboundAt(t, tcpAddr)
	server.waitReady(t)

	leaf := ca.Issue(clientID)
	tlsConf := func(protos ...string) *tls.Config {
		return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{leaf.TLS}, NextProtos: protos} // #nosec G402 -- a test client of the test CA
	}

	// HTTP/1.1 keep-alive, plaintext: GETs take the lean path.
	h1, err := net.Dial("tcp", httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer h1.Close()
	h1r := bufio.NewReader(h1)
	h1Get := func() int {
		t.Helper()
		_ = h1.SetDeadline(time.Now().Add(10 * time.Second))
		req, _ := http.NewRequest("GET", "http://"+httpAddr+"/x", nil)
		if err := req.Write(h1); err != nil {
			t.Fatalf("HTTP/1.1: %v (the connection must stay open)", err)
		}
		resp, err := http.ReadResponse(h1r, req)
		if err != nil {
			t.Fatalf("HTTP/1.1: %v (the connection must stay open)", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	// h2c with prior knowledge, and HTTP/2 over mTLS (ALPN h2, as a client sidecar): each client
	// counts its dials, so that "the same connection" is checked.
	var h2cDials, h2Dials atomic.Int32
	var h2cOnly, h2Only http.Protocols
	h2cOnly.SetUnencryptedHTTP2(true)
	h2Only.SetHTTP2(true)
	h2c := &http.Transport{Protocols: &h2cOnly, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		h2cDials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
	h2 := &http.Transport{Protocols: &h2Only, DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		h2Dials.Add(1)
		return (&tls.Dialer{Config: tlsConf("h2")}).DialContext(ctx, network, addr)
	}}
	defer h2c.CloseIdleConnections()
	defer h2.CloseIdleConnections()
	h2Get := func(rt http.RoundTripper, scheme string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", scheme+"://"+httpAddr+"/x", nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s: %v", scheme, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("%s: %s, want HTTP/2", scheme, resp.Proto)
		}
		return resp.StatusCode
	}
	// TCP over mTLS: an echo.
	tc, err := tls.Dial("tcp", tcpAddr, tlsConf())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tcr := bufio.NewReader(tc)
	echo := func() error {
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(tc, "ping\n"); err != nil {
			return err
		}
		_, err := tcr.ReadString('\n')
		return err
	}

	if c := h1Get(); c != 200 {
		t.Fatalf("HTTP/1.1 before the policy: %d", c)
	}
	if c := h2Get(h2c, "http"); c != 200 {
		t.Fatalf("h2c before the policy: %d", c)
	}
	if c := h2Get(h2, "https"); c != 200 {
		t.Fatalf("HTTP/2 over mTLS before the policy: %d", c)
	}
	if err := echo(); err != nil {
		t.Fatalf("TCP before the policy: %v", err)
	}

	msgs := inboundPorts(map[int]bool{httpPort: false, tcpPort: true})
	for _, m := range msgs {
		if l, ok := m.(*listenerv3.Listener); ok {
			withRBAC(t, l, allowOnly("spiffe://cluster.local/ns/shop/sa/nobody"))
		}
	}
	cp.set(t, serverNode.ID(), "v2", msgs...)

	waitFor(t, "HTTP/1.1 keep-alive connection denied", func() bool { return h1Get() == 403 })
	waitFor(t, "h2c connection denied", func() bool { return h2Get(h2c, "http") == 403 })
	waitFor(t, "HTTP/2 mTLS connection denied", func() bool { return h2Get(h2, "https") == 403 })
	if n, m := h2cDials.Load(), h2Dials.Load(); n != 1 || m != 1 {
		t.Errorf("dials: h2c %d, HTTP/2 over mTLS %d; want one connection each", n, m)
	}
	waitFor(t, "TCP connection closed", func() bool { return echo() != nil })
}
