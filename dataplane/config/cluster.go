package config

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// DecodeCluster validates and decodes a Cluster resource.
func DecodeCluster(c *clusterv3.Cluster) (*Cluster, error) {
	if c.GetName() == "" {
		return nil, errors.New("cluster has no name")
	}
	out, err := decodeCluster(c)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", c.GetName(), err)
	}
	return out, nil
}

func decodeCluster(c *clusterv3.Cluster) (*Cluster, error) {
	out := &Cluster{Name: c.GetName(), ConnectTimeout: 5 * time.Second}
	if c.GetConnectTimeout() != nil {
		out.ConnectTimeout = c.GetConnectTimeout().AsDuration()
		if out.ConnectTimeout <= 0 {
			return nil, errors.New("connect_timeout must be > 0")
		}
	}
	if c.GetClusterType() != nil {
		return nil, fmt.Errorf("custom cluster_type %q is not supported", c.GetClusterType().GetName())
	}
	switch c.GetType() {
	case clusterv3.Cluster_EDS:
		out.Kind = ClusterEDS
		eds := c.GetEdsClusterConfig()
		if src := eds.GetEdsConfig(); src != nil && src.GetAds() == nil && src.GetSelf() == nil {
			return nil, errors.New("eds_config must be ads (or self)")
		}
		out.EDSServiceName = eds.GetServiceName()
		if out.EDSServiceName == "" {
			out.EDSServiceName = c.GetName()
		}
	case clusterv3.Cluster_STATIC:
		out.Kind = ClusterStatic
		cla, err := DecodeLoadAssignment(c.GetLoadAssignment())
		if err != nil {
			return nil, fmt.Errorf("load_assignment: %w", err)
		}
		out.Static = cla
	case clusterv3.Cluster_ORIGINAL_DST:
		out.Kind = ClusterOriginalDst
		if c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
			// Envoy insists on CLUSTER_PROVIDED; accept the default too.
			if c.GetLbPolicy() != clusterv3.Cluster_ROUND_ROBIN {
				return nil, errors.New("ORIGINAL_DST needs lb_policy CLUSTER_PROVIDED")
			}
		}
	default:
		return nil, fmt.Errorf("discovery type %s is not supported (want EDS, STATIC or ORIGINAL_DST)", c.GetType())
	}
	if out.Kind != ClusterOriginalDst {
		switch c.GetLbPolicy() {
		case clusterv3.Cluster_LEAST_REQUEST:
			out.LB = LBLeastRequest
		case clusterv3.Cluster_ROUND_ROBIN:
			out.LB = LBRoundRobin
		case clusterv3.Cluster_RING_HASH:
			out.LB = LBRingHash
		case clusterv3.Cluster_RANDOM:
			out.LB = LBRandom
		default:
			return nil, fmt.Errorf("lb_policy %s is not supported", c.GetLbPolicy())
		}
		if c.GetLoadBalancingPolicy() != nil {
			return nil, errors.New("load_balancing_policy is not supported; use lb_policy")
		}
	}
	for _, t := range c.GetCircuitBreakers().GetThresholds() {
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		out.Breakers = CircuitBreakers{
			MaxConnections:     t.GetMaxConnections().GetValue(),
			MaxPendingRequests: t.GetMaxPendingRequests().GetValue(),
			MaxRequests:        t.GetMaxRequests().GetValue(),
			MaxRetries:         t.GetMaxRetries().GetValue(),
		}
	}
	if od := c.GetOutlierDetection(); od != nil {
		o := &OutlierDetection{
			Consecutive5xx:            5,
			ConsecutiveGatewayFailure: 0,
			Interval:                  10 * time.Second,
			BaseEjectionTime:          30 * time.Second,
			MaxEjectionTime:           300 * time.Second,
			MaxEjectionPercent:        10,
		}
		if v := od.GetConsecutive_5Xx(); v != nil {
			o.Consecutive5xx = v.GetValue()
		}
		if od.GetEnforcingConsecutive_5Xx() != nil && od.GetEnforcingConsecutive_5Xx().GetValue() == 0 {
			o.Consecutive5xx = 0
		}
		if v := od.GetConsecutiveGatewayFailure(); v != nil {
			o.ConsecutiveGatewayFailure = v.GetValue()
		}
		if od.GetEnforcingConsecutiveGatewayFailure() != nil && od.GetEnforcingConsecutiveGatewayFailure().GetValue() == 0 {
			o.ConsecutiveGatewayFailure = 0
		}
		if v := od.GetInterval(); v != nil {
			o.Interval = v.AsDuration()
		}
		if v := od.GetBaseEjectionTime(); v != nil {
			o.BaseEjectionTime = v.AsDuration()
		}
		if v := od.GetMaxEjectionTime(); v != nil {
			o.MaxEjectionTime = v.AsDuration()
		}
		if v := od.GetMaxEjectionPercent(); v != nil {
			o.MaxEjectionPercent = v.GetValue()
		}
		if o.MaxEjectionPercent > 100 {
			return nil, errors.New("outlier_detection: max_ejection_percent > 100")
		}
		if o.BaseEjectionTime <= 0 || o.Interval <= 0 {
			return nil, errors.New("outlier_detection: interval and base_ejection_time must be > 0")
		}
		out.Outlier = o
	}
	if opts, ok := c.GetTypedExtensionProtocolOptions()[httpOptsExtName]; ok {
		if opts.GetTypeUrl() != httpOptsTypeURL {
			return nil, fmt.Errorf("typed_extension_protocol_options[%s]: unexpected type %q", httpOptsExtName, opts.GetTypeUrl())
		}
		var hpo httpv3.HttpProtocolOptions
		if err := opts.UnmarshalTo(&hpo); err != nil {
			return nil, fmt.Errorf("http protocol options: %w", err)
		}
		if e := hpo.GetExplicitHttpConfig(); e != nil && e.GetHttp2ProtocolOptions() != nil {
			out.HTTP2 = true
		}
	}
	if ts := c.GetTransportSocket(); ts != nil {
		if ts.GetTypedConfig().GetTypeUrl() != upTLSTypeURL {
			return nil, fmt.Errorf("transport_socket %q: only UpstreamTlsContext is supported", ts.GetTypedConfig().GetTypeUrl())
		}
		var utc tlsv3.UpstreamTlsContext
		if err := ts.GetTypedConfig().UnmarshalTo(&utc); err != nil {
			return nil, fmt.Errorf("transport_socket: %w", err)
		}
		t, err := decodeUpstreamTLS(&utc)
		if err != nil {
			return nil, fmt.Errorf("transport_socket: %w", err)
		}
		out.TLS = t
	}
	if len(c.GetTransportSocketMatches()) > 0 {
		return nil, errors.New("transport_socket_matches is not supported")
	}
	return out, nil
}

func decodeUpstreamTLS(u *tlsv3.UpstreamTlsContext) (*UpstreamTLS, error) {
	ct := u.GetCommonTlsContext()
	cert, val, err := sdsNames(ct)
	if err != nil {
		return nil, err
	}
	out := &UpstreamTLS{CertSecret: cert, ValidationSecret: val, SNI: u.GetSni(), ALPN: ct.GetAlpnProtocols()}
	var sans []*matcherv3.StringMatcher
	if cvc, ok := ct.GetValidationContextType().(*tlsv3.CommonTlsContext_CombinedValidationContext); ok {
		dvc := cvc.CombinedValidationContext.GetDefaultValidationContext()
		for _, m := range dvc.GetMatchTypedSubjectAltNames() {
			if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
				return nil, fmt.Errorf("SAN matcher of type %s is not supported (only URI)", m.GetSanType())
			}
			sans = append(sans, m.GetMatcher())
		}
	}
	for _, m := range sans {
		sm, err := decodeStringMatcher(m)
		if err != nil {
			return nil, fmt.Errorf("SAN matcher: %w", err)
		}
		out.SANs = append(out.SANs, sm)
	}
	return out, nil
}

func decodeStringMatcher(m *matcherv3.StringMatcher) (StringMatcher, error) {
	out := StringMatcher{IgnoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		out.Exact = p.Exact
	case *matcherv3.StringMatcher_Prefix:
		out.Prefix = p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		out.Suffix = p.Suffix
	case *matcherv3.StringMatcher_Contains:
		out.Contains = p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := regexp.Compile("^(?:" + p.SafeRegex.GetRegex() + ")$")
		if err != nil {
			return out, err
		}
		out.Regex = re
	default:
		return out, errors.New("empty string matcher")
	}
	return out, nil
}
