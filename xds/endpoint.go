package xds

import (
	"slices"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weftmesh/weft/discovery"
)

// loadAssignment is the ClusterLoadAssignment of one Service port: ready, non-terminating endpoints,
// grouped by zone into localities, each with a weight equal to its number of endpoints (so load
// spreads evenly over endpoints; grpc-go ignores localities without a weight).
func loadAssignment(svc discovery.Service, sp discovery.ServicePort, o Options) *endpoint.ClusterLoadAssignment {
	cla := &endpoint.ClusterLoadAssignment{ClusterName: OutboundClusterName(sp.Port, fqdn(svc, o))}
	byZone := map[string]*endpoint.LocalityLbEndpoints{}
	var zones []string
	for _, ep := range svc.Endpoints { // sorted by address
		if !ep.Ready || ep.Terminating {
			continue
		}
		port, ok := ep.Port(sp.Name)
		if !ok || port <= 0 {
			continue
		}
		loc, ok := byZone[ep.Zone]
		if !ok {
			loc = &endpoint.LocalityLbEndpoints{Locality: &core.Locality{Zone: ep.Zone}}
			byZone[ep.Zone] = loc
			zones = append(zones, ep.Zone)
		}
		loc.LbEndpoints = append(loc.LbEndpoints, lbEndpoint(ep.Address, uint32(port)))
	}
	slices.Sort(zones)
	for _, z := range zones {
		loc := byZone[z]
		loc.LoadBalancingWeight = wrapperspb.UInt32(uint32(len(loc.LbEndpoints))) // #nosec G115 -- a count of endpoints
		cla.Endpoints = append(cla.Endpoints, loc)
	}
	return cla
}

func lbEndpoint(addr string, port uint32) *endpoint.LbEndpoint {
	return &endpoint.LbEndpoint{
		HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
			Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
				Address:       addr,
				PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
			}}},
		}},
		HealthStatus: core.HealthStatus_HEALTHY,
	}
}
