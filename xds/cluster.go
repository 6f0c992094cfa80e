package xds

import (
	"slices"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tls "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/weftmesh/weft/discovery"
)

const (
	connectTimeoutSeconds   = 5
	httpProtocolOptionsName = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	tlsTransportSocketName  = "envoy.transport_sockets.tls"
)

// outboundCluster is `outbound|<port>||<fqdn>`, an EDS cluster over ADS. For sidecars it has an mTLS
// transport socket when every endpoint of the Service runs a weft-proxy; for proxyless gRPC
// (forGRPC) it has neither transport socket nor Envoy-only protocol options.
func outboundCluster(s *discovery.State, svc discovery.Service, sp discovery.ServicePort, o Options, forGRPC bool) *cluster.Cluster {
	name := OutboundClusterName(sp.Port, fqdn(svc, o))
	c := &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
		ConnectTimeout:       durationpb.New(connectTimeoutSeconds * 1e9),
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
	}
	if forGRPC {
		return c
	}
	// Sidecars balance by least request with power of two choices (Envoy's default choice count).
	// Proxyless gRPC keeps round robin, which every grpc-go version honours.
	c.LbPolicy = cluster.Cluster_LEAST_REQUEST
	if PortProtocol(sp.AppProtocol, sp.Name).IsHTTP2() {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{
			httpProtocolOptionsName: mustAny(&httpopts.HttpProtocolOptions{
				UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{
					ExplicitHttpConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig{
						ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
							Http2ProtocolOptions: &core.Http2ProtocolOptions{},
						},
					},
				},
			}),
		}
	}
	if ids, meshed := peerIdentities(s, svc, o); meshed {
		c.TransportSocket = upstreamMTLS(fqdn(svc, o), ids)
	}
	return c
}

// peerIdentities returns the SPIFFE IDs of a Service's pods, and whether all of its endpoints that
// are pods run a weft-proxy (and there is at least one).
func peerIdentities(s *discovery.State, svc discovery.Service, o Options) ([]string, bool) {
	var ids []string
	meshed := false
	for _, ep := range svc.Endpoints {
		if ep.Pod == "" {
			return nil, false
		}
		pod, ok := s.Pod(svc.Namespace, ep.Pod)
		if !ok || !pod.HasProxy {
			return nil, false
		}
		meshed = true
		ids = append(ids, SPIFFEID(o.trustDomain(), pod.Namespace, pod.ServiceAccount))
	}
	slices.Sort(ids)
	return slices.Compact(ids), meshed
}

// upstreamMTLS presents the workload's certificate (SDS `default`) and accepts only the given SPIFFE
// IDs, validated against the trust bundle (SDS `ROOTCA`).
func upstreamMTLS(sni string, ids []string) *core.TransportSocket {
	var sans []*tls.SubjectAltNameMatcher
	for _, id := range ids {
		sans = append(sans, &tls.SubjectAltNameMatcher{
			SanType: tls.SubjectAltNameMatcher_URI,
			Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: id}},
		})
	}
	ctx := &tls.UpstreamTlsContext{
		Sni: sni,
		CommonTlsContext: &tls.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tls.SdsSecretConfig{{Name: CertificateSecret, SdsConfig: adsSource()}},
			ValidationContextType: &tls.CommonTlsContext_CombinedValidationContext{
				CombinedValidationContext: &tls.CommonTlsContext_CombinedCertificateValidationContext{
					DefaultValidationContext:         &tls.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
					ValidationContextSdsSecretConfig: &tls.SdsSecretConfig{Name: TrustBundleSecret, SdsConfig: adsSource()},
				},
			},
			AlpnProtocols: []string{"weft"},
		},
	}
	return &core.TransportSocket{Name: tlsTransportSocketName, ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)}}
}

// passthroughCluster forwards to the original destination, for traffic outside the mesh.
func passthroughCluster() *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 PassthroughCluster,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
		ConnectTimeout:       durationpb.New(connectTimeoutSeconds * 1e9),
		LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
	}
}

// blackholeCluster is a static cluster with no endpoints.
func blackholeCluster() *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 BlackholeCluster,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(connectTimeoutSeconds * 1e9),
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
		LoadAssignment:       &endpoint.ClusterLoadAssignment{ClusterName: BlackholeCluster},
	}
}

// inboundCluster is `inbound|<port>||`: the application on localhost.
func inboundCluster(port int32) *cluster.Cluster {
	name := InboundClusterName(port)
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(connectTimeoutSeconds * 1e9),
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpoint.LocalityLbEndpoints{{
				LbEndpoints: []*endpoint.LbEndpoint{lbEndpoint("127.0.0.1", uint32(port))}, // #nosec G115 -- Service ports are 1-65535 (the apiserver and the file source check them)
			}},
		},
	}
}
