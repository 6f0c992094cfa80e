package config

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

// decodeRouteConfig validates and decodes a RouteConfiguration.
func decodeRouteConfig(rc *xp.RouteConfiguration) (*RouteConfig, error) {
	if rc.GetName() == "" {
		return nil, errors.New("route configuration has no name")
	}
	out := &RouteConfig{Name: rc.GetName()}
	for i, vh := range rc.GetVirtualHosts() {
		v, err := decodeVirtualHost(vh)
		if err != nil {
			return nil, fmt.Errorf("route configuration %q: virtual_hosts[%d] %q: %w", rc.GetName(), i, vh.GetName(), err)
		}
		out.VirtualHosts = append(out.VirtualHosts, *v)
	}
	return out, nil
}

func decodeVirtualHost(vh *xp.VirtualHost) (*VirtualHost, error) {
	if len(vh.GetDomains()) == 0 {
		return nil, errors.New("no domains")
	}
	out := &VirtualHost{Name: vh.GetName()}
	for _, d := range vh.GetDomains() {
		out.Domains = append(out.Domains, strings.ToLower(d))
	}
	if rp := vh.GetRetryPolicy(); rp != nil {
		r, err := decodeRetry(rp)
		if err != nil {
			return nil, fmt.Errorf("retry_policy: %w", err)
		}
		out.Retry = r
	}
	for i, r := range vh.GetRoutes() {
		rt, err := decodeRoute(r)
		if err != nil {
			return nil, fmt.Errorf("routes[%d] %q: %w", i, r.GetName(), err)
		}
		if rt.Retry == nil {
			rt.Retry = out.Retry
		}
		out.Routes = append(out.Routes, *rt)
	}
	return out, nil
}

func decodeRoute(r *xp.Route) (*Route, error) {
	out := &Route{Name: r.GetName()}
	m := r.GetMatch()
	if len(m.GetHeaders()) > 0 || len(m.GetQueryParameters()) > 0 {
		return nil, errors.New("header and query parameter matching is not supported")
	}
	if m.GetCaseSensitive() != nil && !m.GetCaseSensitive().GetValue() {
		return nil, errors.New("case-insensitive path matching is not supported")
	}
	switch ps := m.GetPathSpecifier().(type) {
	case *xp.RouteMatch_Prefix:
		out.Kind, out.Prefix = PathPrefix, ps.Prefix
	case *xp.RouteMatch_Path:
		out.Kind, out.Path = PathExact, ps.Path
	case *xp.RouteMatch_SafeRegex:
		re, err := regexp.Compile("^(?:" + ps.SafeRegex.GetRegex() + ")$")
		if err != nil {
			return nil, fmt.Errorf("safe_regex: %w", err)
		}
		out.Kind, out.Regex = PathRegex, re
	default:
		return nil, errors.New("path match must be prefix, path or safe_regex")
	}
	ra := r.GetRoute()
	if ra == nil {
		return nil, errors.New("only route actions are supported (no redirect or direct_response)")
	}
	switch cs := ra.GetClusterSpecifier().(type) {
	case *xp.RouteAction_Cluster:
		if cs.Cluster == "" {
			return nil, errors.New("empty cluster")
		}
		out.Cluster = cs.Cluster
	case *xp.RouteAction_WeightedClusters:
		for _, wc := range cs.WeightedClusters.GetClusters() {
			if wc.GetName() == "" {
				return nil, errors.New("weighted cluster without a name")
			}
			w := wc.GetWeight().GetValue()
			out.WeightedClusters = append(out.WeightedClusters, WeightedCluster{Name: wc.GetName(), Weight: w})
			out.TotalWeight += w
		}
		if out.TotalWeight == 0 {
			return nil, errors.New("weighted_clusters with total weight 0")
		}
	default:
		return nil, errors.New("route action needs cluster or weighted_clusters")
	}
	if t := ra.GetTimeout(); t != nil {
		if t.AsDuration() < 0 {
			return nil, errors.New("negative timeout")
		}
		out.Timeout = t.AsDuration()
	}
	if rp := ra.GetRetryPolicy(); rp != nil {
		rr, err := decodeRetry(rp)
		if err != nil {
			return nil, fmt.Errorf("retry_policy: %w", err)
		}
		out.Retry = rr
	}
	out.HostRewrite = ra.GetHostRewriteLiteral()
	return out, nil
}

var retryConditions = map[string]RetryOn{
	"5xx":                    Retry5xx,
	"gateway-error":          RetryGatewayError,
	"reset":                  RetryReset,
	"reset-before-request":   RetryReset,
	"connect-failure":        RetryConnectFailure,
	"retriable-status-codes": RetryRetriableStatusCodes,
	"refused-stream":         RetryRefusedStream,
	"cancelled":              RetryGRPCCancelled,
	"deadline-exceeded":      RetryGRPCDeadlineExceeded,
	"resource-exhausted":     RetryGRPCResourceExhausted,
	"unavailable":            RetryGRPCUnavailable,
	"internal":               RetryGRPCInternal,
}

func decodeRetry(rp *xp.RetryPolicy) (*RetryPolicy, error) {
	out := &RetryPolicy{NumRetries: 1}
	for _, c := range strings.Split(rp.GetRetryOn(), ",") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		bit, ok := retryConditions[c]
		if !ok {
			return nil, fmt.Errorf("retry_on %q is not supported", c)
		}
		out.On |= bit
	}
	if n := rp.GetNumRetries(); n != nil {
		out.NumRetries = int(n.GetValue())
	}
	if t := rp.GetPerTryTimeout(); t != nil {
		out.PerTryTimeout = t.AsDuration()
	}
	for _, c := range rp.GetRetriableStatusCodes() {
		if c < 100 || c > 599 {
			return nil, fmt.Errorf("retriable status code %d out of range", c)
		}
		out.RetriableStatusCodes = append(out.RetriableStatusCodes, int(c))
	}
	out.BaseInterval, out.MaxInterval = 25e6, 250e6 // Envoy's defaults: 25 ms, 10x
	if b := rp.GetRetryBackOff(); b != nil {
		out.BaseInterval = b.GetBaseInterval().AsDuration()
		if b.GetMaxInterval() != nil {
			out.MaxInterval = b.GetMaxInterval().AsDuration()
		} else {
			out.MaxInterval = 10 * out.BaseInterval
		}
		if out.BaseInterval <= 0 || out.MaxInterval < out.BaseInterval {
			return nil, errors.New("retry_back_off: base_interval must be > 0 and <= max_interval")
		}
	}
	return out, nil
}
