package config

import (
	"errors"
	"fmt"
	"net/netip"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

const (
	hcmTypeURL       = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	tcpProxyTypeURL  = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
	downTLSTypeURL   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
	upTLSTypeURL     = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
	routerTypeURL    = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
	httpOptsTypeURL  = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	httpOptsExtName  = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	httpInspectorURL = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
	tlsInspectorURL  = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
	origDstFilterURL = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
)

// decodeListenerResource validates and decodes a Listener resource.
func decodeListenerResource(l *xp.Listener) (*Listener, error) {
	if l.GetName() == "" {
		return nil, errors.New("listener has no name")
	}
	out := &Listener{Name: l.GetName(), UseOriginalDst: l.GetUseOriginalDst().GetValue()}
	if sa := l.GetAddress().GetSocketAddress(); sa != nil {
		ap, err := socketAddr(sa)
		if err != nil {
			return nil, fmt.Errorf("listener %q: address: %w", l.GetName(), err)
		}
		out.Address = ap
	}
	for _, lf := range l.GetListenerFilters() {
		switch lf.GetTypedConfig().GetTypeUrl() {
		case httpInspectorURL, tlsInspectorURL:
			out.Inspect = true
		case origDstFilterURL:
			out.UseOriginalDst = true
		}
		switch lf.GetName() {
		case "envoy.filters.listener.http_inspector", "envoy.filters.listener.tls_inspector":
			out.Inspect = true
		case "envoy.filters.listener.original_dst":
			out.UseOriginalDst = true
		}
	}
	for i, fc := range l.GetFilterChains() {
		c, err := decodeChain(fc)
		if err != nil {
			return nil, fmt.Errorf("listener %q: filter_chains[%d] %q: %w", l.GetName(), i, fc.GetName(), err)
		}
		out.Chains = append(out.Chains, *c)
	}
	if dfc := l.GetDefaultFilterChain(); dfc != nil {
		c, err := decodeChain(dfc)
		if err != nil {
			return nil, fmt.Errorf("listener %q: default_filter_chain: %w", l.GetName(), err)
		}
		out.Default = c
	}
	if len(out.Chains) == 0 && out.Default == nil {
		return nil, fmt.Errorf("listener %q has no filter chains", l.GetName())
	}
	return out, nil
}

func socketAddr(sa *xp.SocketAddress) (netip.AddrPort, error) {
	addr, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not an IP address (hostnames are not supported)", sa.GetAddress())
	}
	port := sa.GetPortValue()
	if port > 65535 {
		return netip.AddrPort{}, fmt.Errorf("port %d out of range", port)
	}
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

func decodeChain(fc *xp.FilterChain) (*FilterChain, error) {
	out := &FilterChain{Name: fc.GetName()}
	if m := fc.GetFilterChainMatch(); m != nil {
		for _, r := range m.GetPrefixRanges() {
			a, err := netip.ParseAddr(r.GetAddressPrefix())
			if err != nil {
				return nil, fmt.Errorf("prefix_ranges: %q is not an IP address", r.GetAddressPrefix())
			}
			bits := a.BitLen()
			if r.GetPrefixLen() != nil {
				bits = int(r.GetPrefixLen().GetValue())
			}
			p, err := a.Unmap().Prefix(bits)
			if err != nil {
				return nil, fmt.Errorf("prefix_ranges: %s/%d: %w", a, bits, err)
			}
			out.Match.Prefixes = append(out.Match.Prefixes, p)
		}
		if dp := m.GetDestinationPort(); dp != nil {
			if dp.GetValue() == 0 || dp.GetValue() > 65535 {
				return nil, fmt.Errorf("destination_port %d out of range", dp.GetValue())
			}
			out.Match.DestinationPort = dp.GetValue()
		}
		switch tp := m.GetTransportProtocol(); tp {
		case "", "tls", "raw_buffer":
			out.Match.TransportProtocol = tp
		default:
			return nil, fmt.Errorf("transport_protocol %q is not supported (want tls or raw_buffer)", tp)
		}
		out.Match.ApplicationProtocols = m.GetApplicationProtocols()
		if len(m.GetServerNames()) > 0 || len(m.GetSourcePrefixRanges()) > 0 || len(m.GetSourcePorts()) > 0 {
			return nil, errors.New("filter_chain_match on server_names or source is not supported")
		}
	}
	if ts := fc.GetTransportSocket(); ts != nil {
		if ts.GetTypedConfig().GetTypeUrl() != downTLSTypeURL {
			return nil, fmt.Errorf("transport_socket %q: only DownstreamTlsContext is supported", ts.GetTypedConfig().GetTypeUrl())
		}
		var dtc xp.DownstreamTlsContext
		if err := proto.Unmarshal(ts.GetTypedConfig().GetValue(), &dtc); err != nil {
			return nil, fmt.Errorf("transport_socket: %w", err)
		}
		t, err := decodeDownstreamTLS(&dtc)
		if err != nil {
			return nil, fmt.Errorf("transport_socket: %w", err)
		}
		out.TLS = t
	}
	if len(fc.GetFilters()) == 0 {
		return nil, errors.New("no network filters")
	}
	// The terminal filter is the last one; filters before it we do not know are refused, because
	// ignoring them would change what the user asked for.
	for i, f := range fc.GetFilters() {
		last := i == len(fc.GetFilters())-1
		tc := f.GetTypedConfig()
		switch tc.GetTypeUrl() {
		case hcmTypeURL:
			if !last {
				return nil, errors.New("http_connection_manager must be the last filter")
			}
			h, err := decodeHCM(tc)
			if err != nil {
				return nil, fmt.Errorf("filter %q: %w", f.GetName(), err)
			}
			out.HTTP = h
		case networkRBACTypeURL: // rbac.go
			if last {
				return nil, errors.New("rbac cannot be the last filter (tcp_proxy or http_connection_manager must follow)")
			}
			r, err := decodeNetworkRBAC(tc)
			if err != nil {
				return nil, fmt.Errorf("filter %q: %w", f.GetName(), err)
			}
			out.RBAC = append(out.RBAC, r)
		case tcpProxyTypeURL:
			if !last {
				return nil, errors.New("tcp_proxy must be the last filter")
			}
			var tp xp.TcpProxy
			if err := proto.Unmarshal(tc.GetValue(), &tp); err != nil {
				return nil, fmt.Errorf("filter %q: %w", f.GetName(), err)
			}
			if tp.GetCluster() == "" {
				return nil, fmt.Errorf("filter %q: tcp_proxy: only a single cluster is supported", f.GetName())
			}
			out.TCP = &TCPProxy{Cluster: tp.GetCluster()}
			if it := tp.GetIdleTimeout(); it != nil {
				out.TCP.IdleTimeout = it.AsDuration()
			}
		default:
			return nil, fmt.Errorf("filter %q: unsupported network filter type %q", f.GetName(), tc.GetTypeUrl())
		}
	}
	return out, nil
}

func decodeHCM(a *anypb.Any) (*HTTPConnectionManager, error) {
	var h xp.HttpConnectionManager
	if err := proto.Unmarshal(a.GetValue(), &h); err != nil {
		return nil, err
	}
	out := &HTTPConnectionManager{}
	for _, hf := range h.GetHttpFilters() {
		if u := hf.GetTypedConfig().GetTypeUrl(); u == httpRBACTypeURL { // rbac.go
			r, err := decodeHTTPRBAC(hf.GetTypedConfig())
			if err != nil {
				return nil, fmt.Errorf("http filter %q: %w", hf.GetName(), err)
			}
			out.RBAC = append(out.RBAC, r)
		} else if u != "" && u != routerTypeURL && !hf.GetIsOptional() {
			return nil, fmt.Errorf("http filter %q (%s) is not supported", hf.GetName(), u)
		}
	}
	switch rs := h.GetRouteSpecifier().(type) {
	case *xp.HttpConnectionManager_Rds:
		if rs.Rds.GetRouteConfigName() == "" {
			return nil, errors.New("rds without route_config_name")
		}
		out.RouteConfigName = rs.Rds.GetRouteConfigName()
	case *xp.HttpConnectionManager_RouteConfig:
		rc, err := decodeRouteConfig(rs.RouteConfig)
		if err != nil {
			return nil, err
		}
		out.Inline = rc
	default:
		return nil, errors.New("http_connection_manager needs rds or route_config")
	}
	return out, nil
}

func decodeDownstreamTLS(d *xp.DownstreamTlsContext) (*DownstreamTLS, error) {
	out := &DownstreamTLS{RequireClientCert: d.GetRequireClientCertificate().GetValue()}
	ct := d.GetCommonTlsContext()
	cert, val, err := sdsNames(ct)
	if err != nil {
		return nil, err
	}
	out.CertSecret, out.ValidationSecret, out.ALPN = cert, val, ct.GetAlpnProtocols()
	return out, nil
}

// sdsNames returns the SDS secret names of a CommonTlsContext; we only take certificates from SDS.
func sdsNames(ct *xp.CommonTlsContext) (cert, validation string, err error) {
	if len(ct.GetTlsCertificates()) > 0 {
		return "", "", errors.New("inline tls_certificates are not supported (use SDS)")
	}
	sds := ct.GetTlsCertificateSdsSecretConfigs()
	if len(sds) != 1 {
		return "", "", fmt.Errorf("want exactly 1 tls_certificate_sds_secret_configs, got %d", len(sds))
	}
	cert = sds[0].GetName()
	switch v := ct.GetValidationContextType().(type) {
	case *xp.CommonTlsContext_ValidationContextSdsSecretConfig:
		validation = v.ValidationContextSdsSecretConfig.GetName()
	case *xp.CommonTlsContext_CombinedValidationContext:
		validation = v.CombinedValidationContext.GetValidationContextSdsSecretConfig().GetName()
	case nil:
	default:
		return "", "", errors.New("validation context must come from SDS")
	}
	return cert, validation, nil
}
