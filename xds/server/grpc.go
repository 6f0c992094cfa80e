package server

import (
	"context"
	"errors"
	"io"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	// Every type the control plane emits, linked in so reflection (grpcurl) can decode Any payloads.
	_ "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// Register adds the xDS services (ADS, and CDS, EDS, LDS, RDS, SDS on their own), CSDS and server
// reflection to g.
func (s *Server) Register(g *grpc.Server) {
	discoverypb.RegisterAggregatedDiscoveryServiceServer(g, &ads{gcp: s.xds, srv: s})
	clusterservice.RegisterClusterDiscoveryServiceServer(g, s.xds)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, s.xds)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, s.xds)
	routeservice.RegisterRouteDiscoveryServiceServer(g, s.xds)
	secretservice.RegisterSecretDiscoveryServiceServer(g, s.xds)
	statuspb.RegisterClientStatusDiscoveryServiceServer(g, csds{s})
	reflection.Register(g)
}

// csds is the Client Status Discovery Service: for each connected client its node and, per resource,
// version, status (SYNCED, STALE, ERROR, NOT_SENT) and config.
type csds struct{ s *Server }

func (c csds) FetchClientStatus(_ context.Context, req *statuspb.ClientStatusRequest) (*statuspb.ClientStatusResponse, error) {
	return &statuspb.ClientStatusResponse{Config: c.s.clients.clientConfigs(req.GetNodeMatchers())}, nil
}

func (c csds) StreamClientStatus(stream statuspb.ClientStatusDiscoveryService_StreamClientStatusServer) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&statuspb.ClientStatusResponse{Config: c.s.clients.clientConfigs(req.GetNodeMatchers())}); err != nil {
			return err
		}
	}
}

// nodeMatches applies CSDS node matchers to the node id (metadata matchers are not supported and
// match nothing).
func nodeMatches(n *core.Node, ms []*matcher.NodeMatcher) bool {
	if len(ms) == 0 {
		return true
	}
	for _, m := range ms {
		if len(m.GetNodeMetadatas()) > 0 {
			continue
		}
		if m.GetNodeId() == nil || stringMatches(m.GetNodeId(), n.GetId()) {
			return true
		}
	}
	return false
}
