package xdsclient

import (
	"context"

	"google.golang.org/grpc"

	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

// The ADS methods, called by name with the slim messages (go-control-plane's generated stubs would link
// all of Envoy's API into the sidecar).
const (
	adsSotWMethod  = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
	adsDeltaMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
)

var adsStreamDesc = &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}

type deltaStream = grpc.BidiStreamingClient[xp.DeltaDiscoveryRequest, xp.DeltaDiscoveryResponse]

type sotwStream = grpc.BidiStreamingClient[xp.DiscoveryRequest, xp.DiscoveryResponse]

func openDelta(ctx context.Context, cc grpc.ClientConnInterface) (deltaStream, error) {
	s, err := cc.NewStream(ctx, adsStreamDesc, adsDeltaMethod)
	if err != nil {
		return nil, err
	}
	return &grpc.GenericClientStream[xp.DeltaDiscoveryRequest, xp.DeltaDiscoveryResponse]{ClientStream: s}, nil
}

func openSotW(ctx context.Context, cc grpc.ClientConnInterface) (sotwStream, error) {
	s, err := cc.NewStream(ctx, adsStreamDesc, adsSotWMethod)
	if err != nil {
		return nil, err
	}
	return &grpc.GenericClientStream[xp.DiscoveryRequest, xp.DiscoveryResponse]{ClientStream: s}, nil
}
