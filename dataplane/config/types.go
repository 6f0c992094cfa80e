// Package config holds the small internal types weft-proxy decodes its xDS resources into, and the pure
// decoders that validate them. Nothing here does I/O: the xDS client feeds resources in, the proxy reads
// the immutable Snapshot out.
package config

import (
	"net/netip"
	"regexp"
	"time"
)

// Listener is a decoded envoy.config.listener.v3.Listener.
type Listener struct {
	Name           string
	Address        netip.AddrPort
	UseOriginalDst bool
	// Inspect is true when the listener asks for http_inspector or tls_inspector: chains that match on
	// application or transport protocol may then be chosen after a bounded first read.
	Inspect bool
	Chains  []FilterChain
	Default *FilterChain
}

// FilterChain is one filter chain with its match and the single terminal network filter we support.
type FilterChain struct {
	Name  string
	Match ChainMatch
	// Exactly one of HTTP and TCP is set.
	HTTP *HTTPConnectionManager
	TCP  *TCPProxy
	// TLS, when set, terminates TLS (mTLS) on this chain before the filter runs.
	TLS *DownstreamTLS
	// RBAC filters before the terminal one, in order (rbac.go): all must allow a connection.
	RBAC []*RBAC
}

// ChainMatch is the subset of FilterChainMatch we honour.
type ChainMatch struct {
	Prefixes             []netip.Prefix // destination; empty: any
	DestinationPort      uint32         // 0: any
	TransportProtocol    string         // "", "tls", "raw_buffer"
	ApplicationProtocols []string       // e.g. "http/1.1", "h2c"; empty: any
}

// HTTPConnectionManager is the http_connection_manager filter: routes come by RDS name or inline.
type HTTPConnectionManager struct {
	RouteConfigName string
	Inline          *RouteConfig
	// RBAC HTTP filters, in order (rbac.go): all must allow a request.
	RBAC []*RBAC
}

// TCPProxy is the tcp_proxy filter.
type TCPProxy struct {
	Cluster     string
	IdleTimeout time.Duration
}

// DownstreamTLS is a DownstreamTlsContext whose certificates come from SDS secrets.
type DownstreamTLS struct {
	CertSecret        string // usually "default"
	ValidationSecret  string // usually "ROOTCA"
	RequireClientCert bool
	ALPN              []string
}

// UpstreamTLS is an UpstreamTlsContext whose certificates come from SDS secrets.
type UpstreamTLS struct {
	CertSecret       string
	ValidationSecret string
	SNI              string
	// SANs lists the URI SAN matchers the server's certificate must satisfy (any of them); empty: any
	// certificate of the trust bundle.
	SANs []StringMatcher
	ALPN []string
}

// StringMatcher is envoy.type.matcher.v3.StringMatcher.
type StringMatcher struct {
	Exact, Prefix, Suffix, Contains string
	Regex                           *regexp.Regexp
	IgnoreCase                      bool
}

// RouteConfig is a decoded RouteConfiguration.
type RouteConfig struct {
	Name         string
	VirtualHosts []VirtualHost
}

// VirtualHost is one virtual host: the domains it serves and its ordered routes.
type VirtualHost struct {
	Name    string
	Domains []string
	Routes  []Route
	Retry   *RetryPolicy // the vhost default, used when a route has none
	// Extended is true when a route of the host is Extended: matching its requests takes more than
	// their path, so the lean path leaves them all to serveHTTP.
	Extended bool
}

// Route is one route: a path match and a cluster action.
type Route struct {
	Name   string
	Prefix string // when PathMatch is PathPrefix
	Path   string // when PathMatch is PathExact
	Regex  *regexp.Regexp
	Kind   PathMatch
	// Action: Cluster, or WeightedClusters.
	Cluster          string
	WeightedClusters []WeightedCluster
	TotalWeight      uint32
	Timeout          time.Duration // 0: none
	Retry            *RetryPolicy
	HostRewrite      string

	// The Gateway API features (routetypes.go).
	Headers []HeaderMatcher
	Query   []QueryMatcher
	// GRPC restricts the route to gRPC requests (RouteMatch.grpc).
	GRPC bool
	// Redirect or Direct, when set, is the action instead of a cluster.
	Redirect *Redirect
	Direct   *DirectResponse
	// RequestHeaders and ResponseHeaders are the route's, its virtual host's and its route
	// configuration's mutations in the order they apply; a weighted cluster's go before them, or
	// after them when MostSpecificWins.
	RequestHeaders, ResponseHeaders []HeaderMutation
	MostSpecificWins                bool
	PrefixRewrite                   string // replaces the matched prefix (or the exact path)
	RegexRewrite                    *Rewrite
	Mirrors                         []Mirror
	MaxStreamDuration               time.Duration // 0: none
	GRPCTimeout                     *GRPCTimeout  // nil: the grpc-timeout header does not set the timeout
	// Extended is true when the route uses any of the above, or path_separated_prefix.
	Extended bool
}

// PathMatch says how a route matches the path.
type PathMatch uint8

// Path match kinds.
const (
	PathPrefix PathMatch = iota
	PathExact
	PathRegex
	// PathSeparatedPrefix matches Prefix itself or Prefix followed by "/".
	PathSeparatedPrefix
)

// WeightedCluster is one target of weighted_clusters.
type WeightedCluster struct {
	Name   string
	Weight uint32
	// The cluster's own header mutations and host rewrite (nil, "": none).
	RequestHeaders, ResponseHeaders *HeaderMutation
	HostRewrite                     string
}

// RetryOn is a bit set of the retry_on conditions we support.
type RetryOn uint16

// Retry conditions, as named in Envoy's retry_on.
const (
	Retry5xx RetryOn = 1 << iota
	RetryGatewayError
	RetryReset
	RetryConnectFailure
	RetryRetriableStatusCodes
	RetryGRPCCancelled
	RetryGRPCDeadlineExceeded
	RetryGRPCResourceExhausted
	RetryGRPCUnavailable
	RetryGRPCInternal
	RetryRefusedStream
)

// RetryPolicy is a decoded route RetryPolicy.
type RetryPolicy struct {
	On                   RetryOn
	NumRetries           int
	PerTryTimeout        time.Duration
	RetriableStatusCodes []int
	BaseInterval         time.Duration
	MaxInterval          time.Duration
}

// ClusterKind is how a cluster finds its endpoints.
type ClusterKind uint8

// Cluster kinds.
const (
	ClusterEDS ClusterKind = iota
	ClusterStatic
	ClusterOriginalDst
)

func (k ClusterKind) String() string {
	switch k {
	case ClusterEDS:
		return "EDS"
	case ClusterStatic:
		return "STATIC"
	default:
		return "ORIGINAL_DST"
	}
}

// LBPolicy is the cluster's load-balancing policy.
type LBPolicy uint8

// Load-balancing policies.
const (
	LBLeastRequest LBPolicy = iota // power of two choices
	LBRoundRobin
	LBRingHash
	LBRandom
)

func (p LBPolicy) String() string {
	return [...]string{"LEAST_REQUEST", "ROUND_ROBIN", "RING_HASH", "RANDOM"}[p]
}

// Cluster is a decoded envoy.config.cluster.v3.Cluster.
type Cluster struct {
	Name           string
	Kind           ClusterKind
	EDSServiceName string                 // the EDS resource name (cluster name unless set)
	Static         *ClusterLoadAssignment // inline load_assignment for STATIC clusters
	LB             LBPolicy
	ConnectTimeout time.Duration
	HTTP2          bool // explicit HTTP/2 upstream
	Breakers       CircuitBreakers
	Outlier        *OutlierDetection
	TLS            *UpstreamTLS
}

// CircuitBreakers holds the default-priority thresholds (0 means Envoy's default of 1024).
type CircuitBreakers struct {
	MaxConnections     uint32
	MaxPendingRequests uint32
	MaxRequests        uint32
	MaxRetries         uint32
}

// OutlierDetection is a decoded OutlierDetection.
type OutlierDetection struct {
	Consecutive5xx            uint32 // 0: disabled
	ConsecutiveGatewayFailure uint32 // 0: disabled
	Interval                  time.Duration
	BaseEjectionTime          time.Duration
	MaxEjectionTime           time.Duration
	MaxEjectionPercent        uint32
}

// ClusterLoadAssignment is a decoded ClusterLoadAssignment.
type ClusterLoadAssignment struct {
	ClusterName string
	Localities  []Locality
}

// Locality is one group of endpoints with its weight and priority.
type Locality struct {
	Region, Zone, SubZone string
	Weight                uint32 // 0: not weighted
	Priority              uint32
	Endpoints             []Endpoint
}

// Health is an endpoint's health status as EDS reports it.
type Health uint8

// Health values. Unknown counts as healthy, as in Envoy.
const (
	HealthUnknown Health = iota
	HealthHealthy
	HealthUnhealthy
	HealthDraining
	HealthTimeout
	HealthDegraded
)

// Ready reports whether traffic may be sent to an endpoint in this state.
func (h Health) Ready() bool { return h == HealthUnknown || h == HealthHealthy || h == HealthDegraded }

func (h Health) String() string {
	return [...]string{"UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED"}[h]
}

// Endpoint is one upstream address.
type Endpoint struct {
	Address netip.AddrPort
	Weight  uint32
	Health  Health
}
