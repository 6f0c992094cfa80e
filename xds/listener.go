package xds

import (
	"net/netip"
	"strconv"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	origdst "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tls "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weftmesh/weft/discovery"
)

const (
	hcmFilterName          = "envoy.filters.network.http_connection_manager"
	tcpProxyFilterName     = "envoy.filters.network.tcp_proxy"
	routerFilterName       = "envoy.filters.http.router"
	originalDstFilterName  = "envoy.filters.listener.original_dst"
	tlsInspectorFilterName = "envoy.filters.listener.tls_inspector"
)

// outboundListener is `outbound` on 0.0.0.0:15001: connections redirected there keep their original
// destination; a filter chain per Service ClusterIP:port (HTTP ports: HTTP connection manager with
// RDS; others: tcp_proxy to the Service's cluster) and passthrough for everything else.
func outboundListener(s *discovery.State, o Options) *listener.Listener {
	l := &listener.Listener{
		Name:             OutboundListenerName,
		Address:          socketAddress("0.0.0.0", OutboundListenerPort),
		TrafficDirection: core.TrafficDirection_OUTBOUND,
		UseOriginalDst:   wrapperspb.Bool(true),
		ListenerFilters: []*listener.ListenerFilter{{
			Name:       originalDstFilterName,
			ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&origdst.OriginalDst{})},
		}},
		DefaultFilterChain: &listener.FilterChain{Name: PassthroughCluster, Filters: []*listener.Filter{tcpProxy(PassthroughCluster)}},
	}
	for _, svc := range s.Services {
		if svc.Headless() {
			continue
		}
		ip, err := netip.ParseAddr(svc.ClusterIP)
		if err != nil {
			continue
		}
		for _, sp := range svc.Ports {
			if sp.Protocol != "TCP" {
				continue
			}
			cluster := OutboundClusterName(sp.Port, fqdn(svc, o))
			fc := &listener.FilterChain{
				Name: cluster,
				FilterChainMatch: &listener.FilterChainMatch{
					// #nosec G115 -- BitLen is 32 or 128
					PrefixRanges: []*core.CidrRange{{AddressPrefix: ip.String(), PrefixLen: wrapperspb.UInt32(uint32(ip.BitLen()))}},
					// #nosec G115 -- Service ports are 1-65535 (the apiserver and the file source check them)
					DestinationPort: wrapperspb.UInt32(uint32(sp.Port)),
				},
			}
			if PortProtocol(sp.AppProtocol, sp.Name).IsHTTP() {
				fc.Filters = []*listener.Filter{httpConnectionManager(cluster, OutboundRouteName(sp.Port))}
			} else {
				fc.Filters = []*listener.Filter{tcpProxy(cluster)}
			}
			l.FilterChains = append(l.FilterChains, fc)
		}
	}
	return l
}

// InboundListener is `inbound` on 0.0.0.0:15006 for a proxy whose pod serves ports: per port, a
// chain for mutual TLS (the peer's certificate checked against ROOTCA, ours from SDS `default`) and
// a plaintext chain: on permissive ports for clients outside the mesh, both forwarding to
// `inbound|<port>||`; on strict ports to the blackhole, which closes the connection. Anything else
// passes through.
func InboundListener(ports []InboundPort) *listener.Listener {
	l := &listener.Listener{
		Name:             InboundListenerName,
		Address:          socketAddress("0.0.0.0", InboundListenerPort),
		TrafficDirection: core.TrafficDirection_INBOUND,
		UseOriginalDst:   wrapperspb.Bool(true),
		ListenerFilters: []*listener.ListenerFilter{
			{Name: originalDstFilterName, ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&origdst.OriginalDst{})}},
			{Name: tlsInspectorFilterName, ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&tlsinspector.TlsInspector{})}},
		},
		DefaultFilterChain: &listener.FilterChain{Name: PassthroughCluster, Filters: passthroughFilters(ports)}, // authz.go
	}
	for _, p := range ports {
		if p.Port == 0 { // only the Authz of a pod without ports (authz.go)
			continue
		}
		cluster := InboundClusterName(p.Port)
		filters := func() []*listener.Filter {
			if p.Authz != nil { // authz.go
				return authzFilters(p, cluster)
			}
			if p.Protocol.IsHTTP() {
				return []*listener.Filter{httpConnectionManager(cluster, InboundRouteName(p.Port))}
			}
			return []*listener.Filter{tcpProxy(cluster)}
		}
		port := wrapperspb.UInt32(uint32(p.Port)) // #nosec G115 -- Service ports are 1-65535 (the apiserver and the file source check them)
		l.FilterChains = append(l.FilterChains, &listener.FilterChain{
			Name:             cluster + "mtls",
			FilterChainMatch: &listener.FilterChainMatch{DestinationPort: port, TransportProtocol: "tls"},
			Filters:          filters(),
			TransportSocket:  downstreamMTLS(),
		})
		plaintext := &listener.FilterChain{
			Name:             cluster + "plaintext",
			FilterChainMatch: &listener.FilterChainMatch{DestinationPort: port, TransportProtocol: "raw_buffer"},
			Filters:          filters(),
		}
		if !p.Permissive {
			plaintext.Name = cluster + "plaintext-refused"
			plaintext.Filters = []*listener.Filter{tcpProxy(BlackholeCluster)}
		}
		l.FilterChains = append(l.FilterChains, plaintext)
	}
	return l
}

// apiListener is the proxyless gRPC listener `<fqdn>:<port>`, named exactly as the client's
// xds:/// target, routing through RDS.
func apiListener(svc discovery.Service, sp discovery.ServicePort, o Options) *listener.Listener {
	name := fqdn(svc, o) + ":" + strconv.Itoa(int(sp.Port))
	return &listener.Listener{
		Name: name,
		ApiListener: &listener.ApiListener{
			ApiListener: mustAny(hcmConfig(name, OutboundRouteName(sp.Port))),
		},
	}
}

func hcmConfig(statPrefix, routeName string) *hcm.HttpConnectionManager {
	return &hcm.HttpConnectionManager{
		StatPrefix: statPrefix,
		CodecType:  hcm.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: routeName,
		}},
		HttpFilters: []*hcm.HttpFilter{{
			Name:       routerFilterName,
			ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerfilter.Router{})},
		}},
	}
}

func httpConnectionManager(statPrefix, routeName string) *listener.Filter {
	return &listener.Filter{
		Name:       hcmFilterName,
		ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(hcmConfig(statPrefix, routeName))},
	}
}

func tcpProxy(cluster string) *listener.Filter {
	return &listener.Filter{
		Name: tcpProxyFilterName,
		ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxy.TcpProxy{
			StatPrefix:       cluster,
			ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: cluster},
		})},
	}
}

func downstreamMTLS() *core.TransportSocket {
	ctx := &tls.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tls.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tls.SdsSecretConfig{{Name: CertificateSecret, SdsConfig: adsSource()}},
			ValidationContextType: &tls.CommonTlsContext_ValidationContextSdsSecretConfig{
				ValidationContextSdsSecretConfig: &tls.SdsSecretConfig{Name: TrustBundleSecret, SdsConfig: adsSource()},
			},
			AlpnProtocols: []string{"weft"},
		},
	}
	return &core.TransportSocket{Name: tlsTransportSocketName, ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)}}
}

func socketAddress(addr string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address:       addr,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}
