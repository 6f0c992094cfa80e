package config_test

import (
	"net/netip"
	"os"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	httprbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	netrbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weftmesh/weft/dataplane/config"
	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

// TestRBACWireCompatible: rbac.proto's mirrors against Envoy's descriptors (as TestWireCompatible).
func TestRBACWireCompatible(t *testing.T) {
	checkMessage(t, (&xp.NetworkRBAC{}).ProtoReflect().Descriptor(), (&netrbac.RBAC{}).ProtoReflect().Descriptor(), map[protoreflect.FullName]bool{})
	checkMessage(t, (&xp.HttpRBAC{}).ProtoReflect().Descriptor(), (&httprbac.RBAC{}).ProtoReflect().Descriptor(), map[protoreflect.FullName]bool{})
}

// decide runs every RBAC filter in order, as the proxy does: the first that denies decides.
func decide(rs []*config.RBAC, req *config.AuthzRequest) bool {
	for _, r := range rs {
		if ok, _ := r.Allows(req); !ok {
			return false
		}
	}
	return true
}

// TestRBACOfWeftControlOutput decodes the inbound listener weft-control makes for testdata/authz.yaml
// (xds/testdata/authz.api-0.golden.json) and checks the decisions a user expects of its policies:
// allow-frontend (frontend and batch/* by SPIFFE ID, monitoring by namespace except */sa/intruder,
// GET/HEAD on /api/* and /healthz of 8080; frontend on 5432) and deny-admin (/admin/* except OPTIONS).
func TestRBACOfWeftControlOutput(t *testing.T) {
	raw, err := os.ReadFile("../../xds/testdata/authz.api-0.golden.json")
	if err != nil {
		t.Fatal(err)
	}
	var m listenerv3.Listener
	must(t, protojson.Unmarshal(raw, &m))
	l, err := config.DecodeListener(&m)
	if err != nil {
		t.Fatal(err)
	}
	chains := map[string]config.FilterChain{}
	for _, c := range l.Chains {
		chains[c.Name] = c
	}
	http, tcp := chains["inbound|8080||mtls"], chains["inbound|5432||mtls"]
	if http.HTTP == nil || len(http.HTTP.RBAC) != 2 || len(tcp.RBAC) != 2 {
		t.Fatalf("want 2 HTTP RBAC filters on 8080 and 2 network RBAC filters on 5432; got %d and %d", len(http.HTTP.RBAC), len(tcp.RBAC))
	}
	const (
		frontend = "spiffe://cluster.local/ns/web/sa/frontend"
		batch    = "spiffe://cluster.local/ns/batch/sa/cron"
		monitor  = "spiffe://cluster.local/ns/monitoring/sa/prom"
		intruder = "spiffe://cluster.local/ns/monitoring/sa/intruder"
		other    = "spiffe://cluster.local/ns/web/sa/other"
	)
	dst8080 := netip.MustParseAddrPort("10.2.0.1:8080")
	dst5432 := netip.MustParseAddrPort("10.2.0.1:5432")
	for _, tc := range []struct {
		name         string
		peer, method string
		path         string
		want         bool
	}{
		{"frontend GET /api/x", frontend, "GET", "/api/x", true},
		{"frontend HEAD /healthz", frontend, "HEAD", "/healthz", true},
		{"frontend POST /api/x", frontend, "POST", "/api/x", false},
		{"frontend GET /other", frontend, "GET", "/other", false},
		{"batch prefix", batch, "GET", "/api/x", true},
		{"monitoring namespace", monitor, "GET", "/healthz", true},
		{"monitoring intruder", intruder, "GET", "/healthz", false},
		{"other identity", other, "GET", "/api/x", false},
		{"plaintext", "", "GET", "/api/x", false},
		{"deny admin even for frontend", frontend, "GET", "/admin/x", false},
	} {
		req := &config.AuthzRequest{PeerID: tc.peer, Dst: dst8080, HTTP: true, Method: tc.method, Path: tc.path}
		if got := decide(http.HTTP.RBAC, req); got != tc.want {
			t.Errorf("%s: allowed %v, want %v", tc.name, got, tc.want)
		}
	}
	// On the TCP port, deny-admin has no port and its path cannot be checked: it denies every
	// connection (a DENY rule loses its HTTP-only conditions on TCP: it denies more, never less).
	if decide(tcp.RBAC, &config.AuthzRequest{PeerID: frontend, Dst: dst5432}) {
		t.Error("TCP 5432: frontend allowed although deny-admin (no port) denies all TCP")
	}
}

// TestRBACNack: what the proxy cannot enforce exactly is refused with a reason.
func TestRBACNack(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    *rbacv3.RBAC
	}{
		{"LOG action", &rbacv3.RBAC{Action: rbacv3.RBAC_LOG}},
		{"metadata permission", &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"p": {
			Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Metadata{}}},
			Principals:  []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}},
		}}}},
		{"empty principals", &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"p": {
			Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
		}}}},
	} {
		a, err := anypb.New(&netrbac.RBAC{Rules: tc.r, StatPrefix: "x"})
		must(t, err)
		l := &listenerv3.Listener{Name: "inbound", FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{
				{Name: "envoy.filters.network.rbac", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}},
				tcpProxyFilter(t),
			},
		}}}
		if _, err := config.DecodeListener(l); err == nil {
			t.Errorf("%s: decoded, want a NACK", tc.name)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
	}
}

func TestNormalizePath(t *testing.T) {
	for in, want := range map[string]string{
		"/a/b":         "/a/b",
		"/a//b":        "/a/b",
		"/a/./b/":      "/a/b/",
		"/a/../admin":  "/admin",
		"/../../x":     "/x",
		"/api/x?q=/..": "/api/x",
		"":             "/",
	} {
		if got := config.NormalizePath(in); got != want {
			t.Errorf("NormalizePath(%q) = %q, want %q", in, got, want)
		}
	}
}

func tcpProxyFilter(t *testing.T) *listenerv3.Filter {
	a, err := anypb.New(&tcpproxyv3.TcpProxy{ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "c"}})
	must(t, err)
	return &listenerv3.Filter{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}}
}

// BenchmarkRBACOfWeftControlOutput: one request through the DENY and ALLOW filters of
// xds/testdata/authz.api-0.golden.json (an allowed GET: every policy is looked at).
func BenchmarkRBACOfWeftControlOutput(b *testing.B) {
	raw, err := os.ReadFile("../../xds/testdata/authz.api-0.golden.json")
	if err != nil {
		b.Fatal(err)
	}
	var m listenerv3.Listener
	if err := protojson.Unmarshal(raw, &m); err != nil {
		b.Fatal(err)
	}
	l, err := config.DecodeListener(&m)
	if err != nil {
		b.Fatal(err)
	}
	var rs []*config.RBAC
	for _, c := range l.Chains {
		if c.Name == "inbound|8080||mtls" {
			rs = c.HTTP.RBAC
		}
	}
	req := &config.AuthzRequest{PeerID: "spiffe://cluster.local/ns/monitoring/sa/prom", Dst: netip.MustParseAddrPort("10.2.0.1:8080"), HTTP: true, Method: "GET", Path: "/api/v1/items"}
	b.ReportAllocs()
	for b.Loop() {
		if !decide(rs, req) {
			b.Fatal("denied")
		}
	}
}
