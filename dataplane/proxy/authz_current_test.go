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
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	netrbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weftmesh/weft/dataplane/testpki"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
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

// TestAuthorizationOnThePassthroughChain: a port no chain serves (the app listens on it, no Service
// declares it) goes through the listener's default chain; weft-control puts the pod's network RBAC
// there (xds/authz.go passthroughFilters), and the proxy enforces it: served before the policy, a
// new connection is closed once the pod is default-deny (an ALLOW without policies).
func TestAuthorizationOnThePassthroughChain(t *testing.T) {
	ca := testpki.NewCA("mesh")
	app := startBackend(t, "app", "127.0.0.1:0")
	lineApp := listen(t, "127.0.0.1:0")
	serveEach(lineApp, func(c net.Conn) { _, _ = io.WriteString(c, "line\n"); c.Close() })
	httpPort := int(app.addr.Port())
	undeclared := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.30"), uint16(lineApp.Addr().(*net.TCPAddr).Port)).String()

	msgs := func(rules ...*rbacv3.RBAC) []proto.Message {
		out := inboundPorts(map[int]bool{httpPort: false})
		// The default chain forwards to the app's undeclared port (weft-control's goes to the
		// original destination; without iptables here that would be the listener itself).
		out = append(out, fx.StaticCluster("passthrough", netip.MustParseAddrPort(lineApp.Addr().String())))
		for _, m := range out {
			if l, ok := m.(*listenerv3.Listener); ok {
				def := fx.Chain{Name: "passthrough", Cluster: "passthrough"}
				l.DefaultFilterChain = fx.Listener("x", netip.MustParseAddrPort("0.0.0.0:1"), &def).GetDefaultFilterChain()
				var fs []*listenerv3.Filter
				for _, r := range rules {
					a, err := anypb.New(&netrbac.RBAC{Rules: r, StatPrefix: "passthrough"})
					if err != nil {
						t.Fatal(err)
					}
					fs = append(fs, &listenerv3.Filter{Name: "envoy.filters.network.rbac", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}})
				}
				l.DefaultFilterChain.Filters = append(fs, l.DefaultFilterChain.Filters...)
			}
		}
		return out
	}
	cp := startCP(t, "127.0.0.1:0", nil, false)
	cp.set(t, serverNode.ID(), "v1", msgs()...)
	server := startSidecar(t, cp.addr, serverNode, testpki.Identity{Leaf: ca.Issue(echoID), CA: ca})
	server.inboundAt(t, undeclared)
	server.waitReady(t)
	line := func() (string, error) {
		c, err := net.Dial("tcp", undeclared)
		if err != nil {
			return "", err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		return bufio.NewReader(c).ReadString('\n')
	}
	if got, err := line(); err != nil || got != "line\n" {
		t.Fatalf("undeclared port without a policy: %q, %v; want it passed through", got, err)
	}
	cp.set(t, serverNode.ID(), "v2", msgs(&rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW})...) // default-deny
	waitFor(t, "undeclared port refused", func() bool { _, err := line(); return err != nil })
	deny := map[string]string{"transport": "tcp", "decision": "deny", "policy": "", "client_id": ""}
	if v := metricValue(t, server.reg, "inbound_authz_total", deny); v < 1 {
		t.Errorf("inbound_authz_total%v = %v, want at least 1", deny, v)
	}
}
