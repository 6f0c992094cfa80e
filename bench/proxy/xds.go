package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

// The bench's control plane is go-control-plane's snapshot cache behind its ADS server: each proxy
// gets a fixed snapshot of the resource shapes weft-control emits (DESIGN.md names), built below.

// xdsServer is an in-process ADS server on loopback.
type xdsServer struct {
	cache cachev3.SnapshotCache
	srv   *grpc.Server
	addr  string
}

func startXDS(ctx context.Context) (*xdsServer, error) {
	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("xds server: %w", err)
	}
	// weft-proxy pings its control plane every 30 s, as weft-control permits (main.go there); with
	// gRPC's default enforcement (5 min) this server would send GOAWAY too_many_pings and make every
	// proxy reconnect and resync every ~2 minutes, in the middle of a measurement.
	srv := grpc.NewServer(grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}))
	s := &xdsServer{cache: cache, srv: srv, addr: l.Addr().String()}
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(s.srv, serverv3.NewServer(ctx, cache, nil))
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

func (s *xdsServer) stop() { s.srv.Stop() }

// set publishes the resources of one proxy (node id "<pod>.<namespace>").
func (s *xdsServer) set(ctx context.Context, node string, msgs ...proto.Message) error {
	res := map[resource.Type][]types.Resource{}
	for _, m := range msgs {
		var typ string
		switch m.(type) {
		case *clusterv3.Cluster:
			typ = resource.ClusterType
		case *endpointv3.ClusterLoadAssignment:
			typ = resource.EndpointType
		case *listenerv3.Listener:
			typ = resource.ListenerType
		case *routev3.RouteConfiguration:
			typ = resource.RouteType
		default:
			return fmt.Errorf("unexpected resource %T", m)
		}
		res[typ] = append(res[typ], m.(types.Resource))
	}
	snap, err := cachev3.NewSnapshot("bench-1", res)
	if err != nil {
		return err
	}
	if err := snap.Consistent(); err != nil {
		return fmt.Errorf("snapshot for %s: %w", node, err)
	}
	return s.cache.SetSnapshot(ctx, node, snap)
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
}

func sockAddr(ap netip.AddrPort) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ap.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(ap.Port())}}}}
}

func outboundClusterName(port uint16, fqdn string) string {
	return "outbound|" + strconv.Itoa(int(port)) + "||" + fqdn
}

func inboundClusterName(port uint16) string { return "inbound|" + strconv.Itoa(int(port)) + "||" }

// edsCluster is an outbound EDS cluster; with spiffeID it is meshed (mTLS, HTTP/2 between proxies,
// server identity checked against the URI SAN).
func edsCluster(name, spiffeID string) *clusterv3.Cluster {
	c := fx.EDSCluster(name, clusterv3.Cluster_LEAST_REQUEST)
	if spiffeID == "" {
		return c
	}
	utc := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		AlpnProtocols:                  []string{"h2", "http/1.1"},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "default", SdsConfig: adsSource()}},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext: &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
				SanType: tlsv3.SubjectAltNameMatcher_URI,
				Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: spiffeID}},
			}}},
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "ROOTCA", SdsConfig: adsSource()},
		}},
	}}
	c.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: fx.Any(utc)}}
	return c
}

// chain is one filter chain: matched on destination address, then either HTTP (route by RDS name) or
// opaque TCP (tcp_proxy to a cluster); mtls terminates mutual TLS first (SDS "default"/"ROOTCA").
type chain struct {
	name    string
	dst     netip.AddrPort // the zero value matches any address and port
	route   string
	cluster string
	mtls    bool
}

func (c chain) build() *listenerv3.FilterChain {
	fc := &listenerv3.FilterChain{Name: c.name, FilterChainMatch: &listenerv3.FilterChainMatch{}}
	if c.dst.IsValid() {
		fc.FilterChainMatch.PrefixRanges = []*corev3.CidrRange{{AddressPrefix: c.dst.Addr().String(), PrefixLen: wrapperspb.UInt32(32)}}
		fc.FilterChainMatch.DestinationPort = wrapperspb.UInt32(uint32(c.dst.Port()))
	}
	if c.route != "" {
		hcm := &hcmv3.HttpConnectionManager{
			StatPrefix:     c.name,
			RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: adsSource(), RouteConfigName: c.route}},
			HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router",
				ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: fx.Any(&routerv3.Router{})}}},
		}
		fc.Filters = []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: fx.Any(hcm)}}}
	} else {
		tp := &tcpproxyv3.TcpProxy{StatPrefix: c.name, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: c.cluster}}
		fc.Filters = []*listenerv3.Filter{{Name: "envoy.filters.network.tcp_proxy",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: fx.Any(tp)}}}
	}
	if c.mtls {
		dtc := &tlsv3.DownstreamTlsContext{
			RequireClientCertificate: wrapperspb.Bool(true),
			CommonTlsContext: &tlsv3.CommonTlsContext{
				AlpnProtocols:                  []string{"h2", "http/1.1"},
				TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "default", SdsConfig: adsSource()}},
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
					ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "ROOTCA", SdsConfig: adsSource()}},
			},
		}
		fc.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls",
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: fx.Any(dtc)}}
	}
	return fc
}

// listener is "outbound" (0.0.0.0:15001, original destination) or "inbound" (0.0.0.0:15006); the
// bench binds the real sockets with --outbound-addr / --inbound-addr on loopback, and with no iptables
// a connection's destination is the listener's own address.
func listener(name string, chains ...chain) *listenerv3.Listener {
	port := netip.MustParseAddrPort("0.0.0.0:15006")
	if name == "outbound" {
		port = netip.MustParseAddrPort("0.0.0.0:15001")
	}
	l := &listenerv3.Listener{Name: name, Address: sockAddr(port), UseOriginalDst: wrapperspb.Bool(name == "outbound")}
	for _, c := range chains {
		l.FilterChains = append(l.FilterChains, c.build())
	}
	if name == "outbound" {
		l.DefaultFilterChain = chain{name: "passthrough", cluster: "passthrough"}.build()
	}
	return l
}

// prefixRoute sends paths under prefix to cluster.
type prefixRoute struct{ prefix, cluster string }

// routeConfig is one virtual host for any authority with routes in order.
func routeConfig(name string, routes ...prefixRoute) *routev3.RouteConfiguration {
	vh := &routev3.VirtualHost{Name: name, Domains: []string{"*"}}
	for _, r := range routes {
		vh.Routes = append(vh.Routes, &routev3.Route{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: r.prefix}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: r.cluster}}},
		})
	}
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{vh}}
}
