package config_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weftmesh/weft/dataplane/config"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

var cmpOpts = []cmp.Option{
	cmpopts.EquateEmpty(),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
}

func TestDecodeCluster(t *testing.T) {
	const name = "outbound|8080||echo.shop.svc.cluster.local"
	for _, tc := range []struct {
		name    string
		in      *clusterv3.Cluster
		want    *config.Cluster
		wantErr string
	}{{
		name: "eds with mTLS, breakers and outlier detection",
		in: fx.WithOutlier(fx.WithBreakers(fx.WithMTLS(fx.EDSCluster(name, clusterv3.Cluster_LEAST_REQUEST), "spiffe://cluster.local/ns/shop/sa/echo"), 10, 20, 3),
			5, 30*time.Second, 50),
		want: &config.Cluster{
			Name: name, Kind: config.ClusterEDS, EDSServiceName: name, LB: config.LBLeastRequest, ConnectTimeout: 2 * time.Second,
			Breakers: config.CircuitBreakers{MaxConnections: 10, MaxRequests: 20, MaxRetries: 3},
			Outlier:  &config.OutlierDetection{Consecutive5xx: 5, Interval: time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 30 * time.Second, MaxEjectionPercent: 50},
			TLS: &config.UpstreamTLS{CertSecret: "default", ValidationSecret: "ROOTCA", ALPN: []string{"weft"},
				SANs: []config.StringMatcher{{Exact: "spiffe://cluster.local/ns/shop/sa/echo"}}},
		},
	}, {
		name: "static inbound",
		in:   fx.StaticCluster("inbound|8080||", netip.MustParseAddrPort("127.0.0.1:8080")),
		want: &config.Cluster{Name: "inbound|8080||", Kind: config.ClusterStatic, LB: config.LBRoundRobin, ConnectTimeout: 2 * time.Second,
			Static: &config.ClusterLoadAssignment{ClusterName: "inbound|8080||", Localities: []config.Locality{{
				Endpoints: []config.Endpoint{{Address: netip.MustParseAddrPort("127.0.0.1:8080"), Weight: 1, Health: config.HealthHealthy}}}}}},
	}, {
		name: "passthrough",
		in:   fx.Passthrough(),
		want: &config.Cluster{Name: "passthrough", Kind: config.ClusterOriginalDst, ConnectTimeout: 2 * time.Second},
	}, {
		name:    "maglev is refused",
		in:      fx.EDSCluster(name, clusterv3.Cluster_MAGLEV),
		wantErr: `cluster "outbound|8080||echo.shop.svc.cluster.local": lb_policy MAGLEV is not supported`,
	}, {
		name:    "dns clusters are refused",
		in:      &clusterv3.Cluster{Name: "x", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}},
		wantErr: `cluster "x": discovery type STRICT_DNS is not supported (want EDS, STATIC or ORIGINAL_DST)`,
	}, {
		name: "eds from a separate config source is refused",
		in: &clusterv3.Cluster{Name: "x", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{}}}}},
		wantErr: `cluster "x": eds_config must be ads (or self)`,
	}, {
		name:    "zero connect timeout",
		in:      &clusterv3.Cluster{Name: "x", ConnectTimeout: durationpb.New(0), ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}},
		wantErr: `cluster "x": connect_timeout must be > 0`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := config.DecodeCluster(tc.in)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got, cmpOpts...); d != "" {
				t.Errorf("-want +got:\n%s", d)
			}
		})
	}
}

func TestDecodeRouteConfig(t *testing.T) {
	rc := fx.RouteConfig("8080", fx.VirtualHost{Name: "echo", Domains: []string{"Echo.Shop", "echo.shop:8080"},
		Routes: []fx.Route{{Prefix: "/api", Cluster: "a", Timeout: 3 * time.Second, RetryOn: "5xx,connect-failure,unavailable", NumRetries: 2}, {Cluster: "b"}}})
	got, err := config.DecodeRouteConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	want := &config.RouteConfig{Name: "8080", VirtualHosts: []config.VirtualHost{{Name: "echo", Domains: []string{"echo.shop", "echo.shop:8080"}, Routes: []config.Route{
		{Kind: config.PathPrefix, Prefix: "/api", Cluster: "a", Timeout: 3 * time.Second, Retry: &config.RetryPolicy{
			On: config.Retry5xx | config.RetryConnectFailure | config.RetryGRPCUnavailable, NumRetries: 2, BaseInterval: 25 * time.Millisecond, MaxInterval: 250 * time.Millisecond}},
		{Kind: config.PathPrefix, Prefix: "/", Cluster: "b"},
	}}}}
	if d := cmp.Diff(want, got, cmpOpts...); d != "" {
		t.Errorf("-want +got:\n%s", d)
	}

	for _, tc := range []struct {
		name    string
		mutate  func(*routev3.RouteConfiguration)
		wantErr string
	}{
		{"unknown retry condition", func(r *routev3.RouteConfiguration) {
			r.VirtualHosts[0].Routes[0].GetRoute().RetryPolicy.RetryOn = "5xx,sometimes"
		}, `retry_on "sometimes" is not supported`},
		{"range header matchers", func(r *routev3.RouteConfiguration) {
			r.VirtualHosts[0].Routes[0].Match.Headers = []*routev3.HeaderMatcher{{Name: "x", HeaderMatchSpecifier: &routev3.HeaderMatcher_RangeMatch{}}}
		}, "match.headers[0]: field range_match (6) is not supported"},
		{"filter action", func(r *routev3.RouteConfiguration) {
			r.VirtualHosts[0].Routes[1].Action = &routev3.Route_FilterAction{FilterAction: &routev3.FilterAction{}}
		}, "virtual_hosts[0].routes[1]: field filter_action (17) is not supported"},
		{"no domains", func(r *routev3.RouteConfiguration) { r.VirtualHosts[0].Domains = nil }, `virtual_hosts[0] "echo": no domains`},
		{"weights", func(r *routev3.RouteConfiguration) {
			r.VirtualHosts[0].Routes[0].GetRoute().ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
				Clusters: []*routev3.WeightedCluster_ClusterWeight{{Name: "a", Weight: wrapperspb.UInt32(0)}}}}
		}, "weighted_clusters with total weight 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := fx.RouteConfig("8080", fx.VirtualHost{Name: "echo", Domains: []string{"echo"},
				Routes: []fx.Route{{Prefix: "/api", Cluster: "a", RetryOn: "5xx", NumRetries: 1}, {Cluster: "b"}}})
			tc.mutate(rc)
			_, err := config.DecodeRouteConfig(rc)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), `route configuration "8080": `) {
				t.Fatalf("error = %v, want it to name the route configuration and contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestDecodeListener(t *testing.T) {
	l := fx.Listener("outbound", netip.MustParseAddrPort("0.0.0.0:15001"), &fx.Chain{Name: "passthrough", Cluster: "passthrough"},
		fx.Chain{Name: "web", IP: "10.96.0.10", Port: 80, Route: "80"},
		fx.Chain{Name: "db", IP: "10.96.0.11", Port: 5432, Cluster: "outbound|5432||db"})
	got, err := config.DecodeListener(l)
	if err != nil {
		t.Fatal(err)
	}
	want := &config.Listener{Name: "outbound", Address: netip.MustParseAddrPort("0.0.0.0:15001"), UseOriginalDst: true,
		Chains: []config.FilterChain{
			{Name: "web", Match: config.ChainMatch{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.96.0.10/32")}, DestinationPort: 80}, HTTP: &config.HTTPConnectionManager{RouteConfigName: "80"}},
			{Name: "db", Match: config.ChainMatch{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.96.0.11/32")}, DestinationPort: 5432}, TCP: &config.TCPProxy{Cluster: "outbound|5432||db"}},
		},
		Default: &config.FilterChain{Name: "passthrough", TCP: &config.TCPProxy{Cluster: "passthrough"}},
	}
	if d := cmp.Diff(want, got, cmpOpts...); d != "" {
		t.Errorf("-want +got:\n%s", d)
	}

	l.FilterChains[1].Filters[0].ConfigType = nil
	if _, err := config.DecodeListener(l); err == nil || !strings.Contains(err.Error(), `listener "outbound": filter_chains[1] "db": filter "envoy.filters.network.tcp_proxy": unsupported network filter type ""`) {
		t.Fatalf("error = %v", err)
	}
}

// TestJSONResolver renders an accepted listener as /config_dump does: the fields weft-proxy reads,
// nested typed configs included, with Envoy's type URLs.
func TestJSONResolver(t *testing.T) {
	l := fx.Listener("outbound", netip.MustParseAddrPort("0.0.0.0:15001"), nil, fx.Chain{Name: "web", IP: "10.96.0.10", Port: 80, Route: "80", MTLS: true})
	a, err := anypb.New(l)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := config.Decode(config.ListenerType, a); err != nil {
		t.Fatal(err)
	}
	b, err := protojson.MarshalOptions{UseProtoNames: true, Resolver: config.JSONResolver}.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"@type":"type.googleapis.com/envoy.config.listener.v3.Listener"`, `"name":"outbound"`,
		`"@type":"type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"`, `"route_config_name":"80"`,
		`"@type":"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"`, `"require_client_certificate":true`} {
		if !strings.Contains(strings.ReplaceAll(string(b), " ", ""), s) {
			t.Errorf("JSON lacks %s:\n%s", s, b)
		}
	}
}
