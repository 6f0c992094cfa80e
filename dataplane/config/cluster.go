package config

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"google.golang.org/protobuf/proto"

	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

// decodeClusterResource validates and decodes a Cluster resource.
func decodeClusterResource(c *xp.Cluster) (*Cluster, error) {
	if c.GetName() == "" {
		return nil, errors.New("cluster has no name")
	}
	out, err := decodeCluster(c)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", c.GetName(), err)
	}
	return out, nil
}

func decodeCluster(c *xp.Cluster) (*Cluster, error) {
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
	case xp.Cluster_EDS:
		out.Kind = ClusterEDS
		eds := c.GetEdsClusterConfig()
		if src := eds.GetEdsConfig(); src != nil && src.GetAds() == nil && src.GetSelf() == nil {
			return nil, errors.New("eds_config must be ads (or self)")
		}
		out.EDSServiceName = eds.GetServiceName()
		if out.EDSServiceName == "" {
			out.EDSServiceName = c.GetName()
		}
	case xp.Cluster_STATIC:
		out.Kind = ClusterStatic
		cla, err := decodeLoadAssignment(c.GetLoadAssignment())
		if err != nil {
			return nil, fmt.Errorf("load_assignment: %w", err)
		}
		out.Static = cla
	case xp.Cluster_ORIGINAL_DST:
		out.Kind = ClusterOriginalDst
		if c.GetLbPolicy() != xp.Cluster_CLUSTER_PROVIDED {
			// Envoy insists on CLUSTER_PROVIDED; accept the default too.
			if c.GetLbPolicy() != xp.Cluster_ROUND_ROBIN {
				return nil, errors.New("ORIGINAL_DST needs lb_policy CLUSTER_PROVIDED")
			}
		}
	default:
		return nil, fmt.Errorf("discovery type %s is not supported (want EDS, STATIC or ORIGINAL_DST)", c.GetType())
	}
	if out.Kind != ClusterOriginalDst {
		switch c.GetLbPolicy() {
		case xp.Cluster_LEAST_REQUEST:
			out.LB = LBLeastRequest
		case xp.Cluster_ROUND_ROBIN:
			out.LB = LBRoundRobin
		case xp.Cluster_RING_HASH:
			out.LB = LBRingHash
		case xp.Cluster_RANDOM:
			out.LB = LBRandom
		default:
			return nil, fmt.Errorf("lb_policy %s is not supported", c.GetLbPolicy())
		}
		if c.GetLoadBalancingPolicy() != nil {
			return nil, errors.New("load_balancing_policy is not supported; use lb_policy")
		}
	}
	for _, t := range c.GetCircuitBreakers().GetThresholds() {
		if t.GetPriority() != xp.RoutingPriority_DEFAULT {
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
		var hpo xp.HttpProtocolOptions
		if err := proto.Unmarshal(opts.GetValue(), &hpo); err != nil {
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
		var utc xp.UpstreamTlsContext
		if err := proto.Unmarshal(ts.GetTypedConfig().GetValue(), &utc); err != nil {
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

func decodeUpstreamTLS(u *xp.UpstreamTlsContext) (*UpstreamTLS, error) {
	ct := u.GetCommonTlsContext()
	cert, val, err := sdsNames(ct)
	if err != nil {
		return nil, err
	}
	out := &UpstreamTLS{CertSecret: cert, ValidationSecret: val, SNI: u.GetSni(), ALPN: ct.GetAlpnProtocols()}
	var sans []*xp.StringMatcher
	if cvc, ok := ct.GetValidationContextType().(*xp.CommonTlsContext_CombinedValidationContext); ok {
		dvc := cvc.CombinedValidationContext.GetDefaultValidationContext()
		for _, m := range dvc.GetMatchTypedSubjectAltNames() {
			if m.GetSanType() != xp.SubjectAltNameMatcher_URI {
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

func decodeStringMatcher(m *xp.StringMatcher) (StringMatcher, error) {
	out := StringMatcher{IgnoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *xp.StringMatcher_Exact:
		out.Exact = p.Exact
	case *xp.StringMatcher_Prefix:
		out.Prefix = p.Prefix
	case *xp.StringMatcher_Suffix:
		out.Suffix = p.Suffix
	case *xp.StringMatcher_Contains:
		out.Contains = p.Contains
	case *xp.StringMatcher_SafeRegex:
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
