// Package xdsfixture builds the Envoy resources weft-control emits (DESIGN.md names), for tests of the
// data plane. It only builds protos: no server, no cache.
package xdsfixture

import (
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
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Any marshals a message into an Any, panicking on error (fixtures only).
func Any(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

func ads() *corev3.ConfigSource {
	return &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
}

func sockAddr(ap netip.AddrPort) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ap.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(ap.Port())}}}}
}

// ClusterName is outbound|<port>||<fqdn>.
func ClusterName(port int, fqdn string) string { return "outbound|" + strconv.Itoa(port) + "||" + fqdn }

// EDSCluster is an EDS-over-ADS cluster with a load-balancing policy.
func EDSCluster(name string, lb clusterv3.Cluster_LbPolicy) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads()},
		ConnectTimeout:       durationpb.New(2 * time.Second),
		LbPolicy:             lb,
	}
}

// StaticCluster is a STATIC cluster (inbound|<port>|| to the app on localhost).
func StaticCluster(name string, addrs ...netip.AddrPort) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(2 * time.Second),
		LoadAssignment:       CLA(name, addrs...),
	}
}

// Passthrough is the ORIGINAL_DST cluster "passthrough".
func Passthrough() *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 "passthrough",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		ConnectTimeout:       durationpb.New(2 * time.Second),
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
	}
}

// WithMTLS adds the UpstreamTlsContext of a meshed upstream: SDS "default" and "ROOTCA", and an exact
// URI SAN matcher per SPIFFE id.
func WithMTLS(c *clusterv3.Cluster, spiffeIDs ...string) *clusterv3.Cluster {
	var sans []*tlsv3.SubjectAltNameMatcher
	for _, id := range spiffeIDs {
		sans = append(sans, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}}})
	}
	utc := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		AlpnProtocols:                  []string{"weft"},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "default", SdsConfig: ads()}},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "ROOTCA", SdsConfig: ads()},
		}},
	}}
	c.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: Any(utc)}}
	return c
}

// Locality is one weighted group of endpoint addresses.
type Locality struct {
	Zone   string
	Weight uint32
	Addrs  []netip.AddrPort
}

// CLA is a ClusterLoadAssignment with one locality.
func CLA(name string, addrs ...netip.AddrPort) *endpointv3.ClusterLoadAssignment {
	return CLALocalities(name, Locality{Addrs: addrs})
}

// CLALocalities is a ClusterLoadAssignment with weighted localities.
func CLALocalities(name string, locs ...Locality) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	for _, l := range locs {
		le := &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Zone: l.Zone}}
		if l.Weight > 0 {
			le.LoadBalancingWeight = wrapperspb.UInt32(l.Weight)
		}
		for _, a := range l.Addrs {
			le.LbEndpoints = append(le.LbEndpoints, &endpointv3.LbEndpoint{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sockAddr(a)}},
				HealthStatus:   corev3.HealthStatus_HEALTHY,
			})
		}
		cla.Endpoints = append(cla.Endpoints, le)
	}
	return cla
}

// Chain describes one filter chain of a listener.
type Chain struct {
	Name string
	IP   string // destination prefix (exact address); "" for any
	Port uint32 // destination port; 0 for any
	// Exactly one of Route (RDS name → http_connection_manager) and Cluster (tcp_proxy).
	Route   string
	Cluster string
	// AppProtocols matches only after protocol detection said one of these (http/1.1, h2c).
	AppProtocols []string
	// MTLS terminates TLS with SDS "default"/"ROOTCA" and requires a client certificate (ALPN "weft",
	// as weft-control sends it).
	MTLS bool
	// Transport matches on transport_protocol ("tls" or "raw_buffer"; "" for any).
	Transport string
}

func (c Chain) build() *listenerv3.FilterChain {
	fc := &listenerv3.FilterChain{Name: c.Name, FilterChainMatch: &listenerv3.FilterChainMatch{ApplicationProtocols: c.AppProtocols, TransportProtocol: c.Transport}}
	if c.IP != "" {
		a := netip.MustParseAddr(c.IP)
		fc.FilterChainMatch.PrefixRanges = []*corev3.CidrRange{{AddressPrefix: c.IP, PrefixLen: wrapperspb.UInt32(uint32(a.BitLen()))}} // #nosec G115 -- BitLen is 32 or 128
	}
	if c.Port != 0 {
		fc.FilterChainMatch.DestinationPort = wrapperspb.UInt32(c.Port)
	}
	if c.Route != "" {
		hcm := &hcmv3.HttpConnectionManager{
			StatPrefix:     c.Name,
			RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: ads(), RouteConfigName: c.Route}},
			HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router",
				ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: Any(&routerv3.Router{})}}},
		}
		fc.Filters = []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: Any(hcm)}}}
	} else {
		tp := &tcpproxyv3.TcpProxy{StatPrefix: c.Name, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: c.Cluster}}
		fc.Filters = []*listenerv3.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: Any(tp)}}}
	}
	if c.MTLS {
		dtc := &tlsv3.DownstreamTlsContext{
			RequireClientCertificate: wrapperspb.Bool(true),
			CommonTlsContext: &tlsv3.CommonTlsContext{
				AlpnProtocols:                  []string{"weft"},
				TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "default", SdsConfig: ads()}},
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
					ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "ROOTCA", SdsConfig: ads()}},
			},
		}
		fc.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: Any(dtc)}}
	}
	return fc
}

// Listener builds a listener on addr with the chains and, when def is non-nil, a default chain.
func Listener(name string, addr netip.AddrPort, def *Chain, chains ...Chain) *listenerv3.Listener {
	l := &listenerv3.Listener{Name: name, Address: sockAddr(addr), UseOriginalDst: wrapperspb.Bool(name == "outbound")}
	for _, c := range chains {
		l.FilterChains = append(l.FilterChains, c.build())
	}
	if def != nil {
		l.DefaultFilterChain = def.build()
	}
	return l
}

// Route is one route of a virtual host.
type Route struct {
	Prefix  string // default "/"
	Cluster string
	Timeout time.Duration
	// Retry: retry_on conditions and count.
	RetryOn       string
	NumRetries    uint32
	PerTryTimeout time.Duration
}

// RouteConfig builds a RouteConfiguration with one virtual host per entry of vhosts (domains → routes).
func RouteConfig(name string, vhosts ...VirtualHost) *routev3.RouteConfiguration {
	rc := &routev3.RouteConfiguration{Name: name}
	for _, vh := range vhosts {
		v := &routev3.VirtualHost{Name: vh.Name, Domains: vh.Domains}
		for _, r := range vh.Routes {
			p := r.Prefix
			if p == "" {
				p = "/"
			}
			ra := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: r.Cluster}}
			if r.Timeout > 0 {
				ra.Timeout = durationpb.New(r.Timeout)
			}
			if r.RetryOn != "" {
				ra.RetryPolicy = &routev3.RetryPolicy{RetryOn: r.RetryOn, NumRetries: wrapperspb.UInt32(r.NumRetries)}
				if r.PerTryTimeout > 0 {
					ra.RetryPolicy.PerTryTimeout = durationpb.New(r.PerTryTimeout)
				}
			}
			v.Routes = append(v.Routes, &routev3.Route{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: p}},
				Action: &routev3.Route_Route{Route: ra},
			})
		}
		rc.VirtualHosts = append(rc.VirtualHosts, v)
	}
	return rc
}

// VirtualHost is one virtual host of a route configuration.
type VirtualHost struct {
	Name    string
	Domains []string
	Routes  []Route
}

// WithOutlier adds outlier detection: eject after n consecutive 5xx for base (growing), at most pct%.
func WithOutlier(c *clusterv3.Cluster, n uint32, base time.Duration, pct uint32) *clusterv3.Cluster {
	c.OutlierDetection = &clusterv3.OutlierDetection{
		Consecutive_5Xx:    wrapperspb.UInt32(n),
		Interval:           durationpb.New(time.Second),
		BaseEjectionTime:   durationpb.New(base),
		MaxEjectionTime:    durationpb.New(base),
		MaxEjectionPercent: wrapperspb.UInt32(pct),
	}
	return c
}

// WithBreakers sets the default-priority circuit breaker thresholds (0 leaves one unset).
func WithBreakers(c *clusterv3.Cluster, maxConnections, maxRequests, maxRetries uint32) *clusterv3.Cluster {
	t := &clusterv3.CircuitBreakers_Thresholds{}
	if maxConnections > 0 {
		t.MaxConnections = wrapperspb.UInt32(maxConnections)
	}
	if maxRequests > 0 {
		t.MaxRequests = wrapperspb.UInt32(maxRequests)
	}
	if maxRetries > 0 {
		t.MaxRetries = wrapperspb.UInt32(maxRetries)
	}
	c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{t}}
	return c
}
