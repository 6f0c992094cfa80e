package proxy_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	httprbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weftmesh/weft/dataplane/testpki"
)

// allowOnly is an ALLOW RBAC for one SPIFFE ID (any permission), and denyAdmin a DENY of /admin/.
func allowOnly(id string) *rbacv3.RBAC {
	return &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"shop/allow-client/0": {
		Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
		Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{
			PrincipalName: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}},
		}}}},
	}}}
}

var denyAdmin = &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: map[string]*rbacv3.Policy{"shop/deny-admin/0": {
	Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
		Rule: &matcherv3.PathMatcher_Path{Path: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "/admin/"}}},
	}}}},
	Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}},
}}}

// withRBAC puts RBAC filters on every chain of l, as weft-control does: HTTP RBAC in the connection
// manager before the router, network RBAC before tcp_proxy.
func withRBAC(t *testing.T, l *listenerv3.Listener, rules ...*rbacv3.RBAC) {
	t.Helper()
	for _, fc := range l.GetFilterChains() {
		f := fc.GetFilters()[0]
		if strings.HasSuffix(f.GetTypedConfig().GetTypeUrl(), "HttpConnectionManager") {
			var h hcmv3.HttpConnectionManager
			if err := f.GetTypedConfig().UnmarshalTo(&h); err != nil {
				t.Fatal(err)
			}
			var hfs []*hcmv3.HttpFilter
			for _, r := range rules {
				a, err := anypb.New(&httprbac.RBAC{Rules: r})
				if err != nil {
					t.Fatal(err)
				}
				hfs = append(hfs, &hcmv3.HttpFilter{Name: "envoy.filters.http.rbac", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}})
			}
			h.HttpFilters = append(hfs, h.HttpFilters...)
			a, err := anypb.New(&h)
			if err != nil {
				t.Fatal(err)
			}
			f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
			continue
		}
		var fs []*listenerv3.Filter
		for _, r := range rules {
			if r == denyAdmin {
				continue // paths mean nothing on TCP
			}
			a, err := anypb.New(&netrbac.RBAC{Rules: r, StatPrefix: fc.GetName()})
			if err != nil {
				t.Fatal(err)
			}
			fs = append(fs, &listenerv3.Filter{Name: "envoy.filters.network.rbac", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}})
		}
		fc.Filters = append(fs, fc.GetFilters()...)
	}
}

// TestInboundAuthorization: the inbound listener's RBAC, enforced by the proxy. Over mTLS the allowed
// identity reaches the HTTP app (and the DENY of /admin/ still applies to it) and the TCP app; another
// identity of the mesh gets a 403 with weft-error, or its connection closed; a plaintext client (no
// identity) is refused the same way, on the lean HTTP/1.1 path too; a gRPC request is answered with
// grpc-status 7. The decisions are counted.
func TestInboundAuthorization(t *testing.T) {
	ca := testpki.NewCA("mesh")
	app := startBackend(t, "app", "127.0.0.1:0")
	lineApp := listen(t, "127.0.0.1:0")
	serveEach(lineApp, func(c net.Conn) { fmt.Fprintln(c, "line"); c.Close() })
	httpPort, tcpPort := int(app.addr.Port()), lineApp.Addr().(*net.TCPAddr).Port

	msgs := inboundPorts(map[int]bool{httpPort: false, tcpPort: true})
	for _, m := range msgs {
		if l, ok := m.(*listenerv3.Listener); ok {
			withRBAC(t, l, denyAdmin, allowOnly(clientID))
		}
	}
	cp := startCP(t, "127.0.0.1:0", nil, false)
	cp.set(t, serverNode.ID(), "v1", msgs...)
	server := startSidecar(t, cp.addr, serverNode, testpki.Identity{Leaf: ca.Issue(echoID), CA: ca})
	httpAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.30"), uint16(httpPort)).String()
	tcpAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.30"), uint16(tcpPort)).String()
	server.inboundAt(t, httpAddr)
	server.inboundAt(t, tcpAddr)
	server.waitReady(t)

	good, other := ca.Issue(clientID), ca.Issue("spiffe://cluster.local/ns/shop/sa/other")
	mtls := func(leaf *testpki.Leaf) func(network, addr string) (net.Conn, error) {
		return func(network, addr string) (net.Conn, error) {
			return tls.Dial(network, addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{leaf.TLS}}) // #nosec G402 -- a test client of the test CA
		}
	}
	plain := func(network, addr string) (net.Conn, error) { return net.Dial(network, addr) }
	request := func(dial func(string, string) (net.Conn, error), method, path string, header http.Header) *http.Response {
		t.Helper()
		c, err := dial("tcp", httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		req, _ := http.NewRequest(method, "http://"+httpAddr+path, nil)
		for k, v := range header {
			req.Header[k] = v
		}
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	line := func(dial func(string, string) (net.Conn, error)) (string, error) {
		c, err := dial("tcp", tcpAddr)
		if err != nil {
			return "", err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		return bufio.NewReader(c).ReadString('\n')
	}

	for _, tc := range []struct {
		name       string
		dial       func(string, string) (net.Conn, error)
		method     string
		path       string
		header     http.Header
		wantStatus int
		wantError  string
		wantGRPC   string
	}{
		{"allowed identity", mtls(good), "GET", "/x", nil, 200, "", ""},
		{"allowed identity, denied path", mtls(good), "GET", "/admin/users", nil, 403, "(shop/deny-admin)", ""},
		{"allowed identity, denied path with dot segments", mtls(good), "GET", "/public/../admin/users", nil, 403, "(shop/deny-admin)", ""},
		{"other identity", mtls(other), "GET", "/x", nil, 403, "from spiffe://cluster.local/ns/shop/sa/other", ""},
		{"plaintext (lean path)", plain, "GET", "/x", nil, 403, "without a mesh identity", ""},
		{"plaintext POST", plain, "POST", "/x", nil, 403, "without a mesh identity", ""},
		{"plaintext gRPC", plain, "POST", "/pkg.Svc/Call", http.Header{"Content-Type": {"application/grpc"}}, 200, "without a mesh identity", "7"},
	} {
		resp := request(tc.dial, tc.method, tc.path, tc.header)
		if resp.StatusCode != tc.wantStatus || !strings.Contains(resp.Header.Get("Weft-Error"), tc.wantError) || resp.Header.Get("Grpc-Status") != tc.wantGRPC {
			t.Errorf("%s: %d, weft-error %q, grpc-status %q; want %d, %q, %q", tc.name, resp.StatusCode, resp.Header.Get("Weft-Error"), resp.Header.Get("Grpc-Status"),
				tc.wantStatus, tc.wantError, tc.wantGRPC)
		}
	}
	if got, err := line(mtls(good)); err != nil || got != "line\n" {
		t.Errorf("TCP, allowed identity: %q, %v", got, err)
	}
	for name, dial := range map[string]func(string, string) (net.Conn, error){"other identity": mtls(other), "plaintext": plain} {
		if got, err := line(dial); err == nil {
			t.Errorf("TCP, %s: got %q, want the connection closed", name, got)
		}
	}
	// One allowed HTTP request, counted once (the lean path decides it; a double count would mean the
	// request was decided twice).
	allowHTTP := map[string]string{"transport": "http", "decision": "allow", "policy": "shop/allow-client", "client_id": clientID}
	if v := metricValue(t, server.reg, "inbound_authz_total", allowHTTP); v != 1 {
		t.Errorf("inbound_authz_total%v = %v, want 1", allowHTTP, v)
	}
	for _, want := range []map[string]string{
		{"transport": "http", "decision": "deny", "policy": "shop/deny-admin", "client_id": clientID},
		{"transport": "http", "decision": "deny", "policy": "", "client_id": ""},
		{"transport": "tcp", "decision": "allow", "policy": "shop/allow-client", "client_id": clientID},
		{"transport": "tcp", "decision": "deny", "policy": "", "client_id": "spiffe://cluster.local/ns/shop/sa/other"},
	} {
		if v := metricValue(t, server.reg, "inbound_authz_total", want); v < 1 {
			t.Errorf("inbound_authz_total%v = %v, want at least 1", want, v)
		}
	}
}
