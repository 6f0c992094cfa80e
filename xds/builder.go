package xds

import (
	"maps"
	"slices"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/weftmesh/weft/discovery"
)

// Builder makes Meshes exactly as BuildMesh does, but remembers what it built last: a Service
// whose inputs (the Service with its endpoints, and the identities of its pods) did not change keeps
// the very same resources, and the outbound listener and routes are kept while no Service's
// name, address or ports changed. A one-endpoint change then translates one Service instead of the
// whole mesh, and a consumer can tell an unchanged resource by its pointer. The resources are
// shared, so they must not be modified (no one does: they are immutable once built).
//
// A Builder is used by one goroutine at a time (the server's Update holds its lock).
type Builder struct {
	opts     Options
	services map[string]*builtService // by Service key
	heads    []discovery.Service      // every Service of the last Build, without its endpoints
	outbound *listener.Listener
	routes   []*route.RouteConfiguration
	// grpcRoutes are routes for proxyless gRPC; gammaIn the Gateway API objects they were made from.
	grpcRoutes []*route.RouteConfiguration
	gammaIn    gammaInputs
}

// builtService is what one Service translated to, with the inputs it was made from.
type builtService struct {
	svc          discovery.Service
	ids          []string
	meshed       bool
	clusters     []*cluster.Cluster
	grpcClusters []*cluster.Cluster
	endpoints    []*endpoint.ClusterLoadAssignment
	apis         []*listener.Listener
}

// NewBuilder returns a Builder that translates with o.
func NewBuilder(o Options) *Builder { return &Builder{opts: o} }

// Build translates s; the result equals BuildMesh(s, o).
func (b *Builder) Build(s *discovery.State) *Mesh {
	o := b.opts
	m := &Mesh{}
	inboundPorts := map[int32]Protocol{}
	for _, pod := range s.Pods {
		if !pod.HasProxy {
			continue
		}
		for _, ip := range podInboundPorts(s, pod, o) {
			if _, ok := inboundPorts[ip.Port]; !ok || ip.Protocol.IsHTTP() {
				inboundPorts[ip.Port] = ip.Protocol
			}
		}
	}
	built := make(map[string]*builtService, len(s.Services))
	for _, svc := range s.Services {
		ids, meshed := peerIdentities(s, svc, o)
		bs := b.services[svc.Key()]
		if bs == nil || bs.meshed != meshed || !slices.Equal(bs.ids, ids) || !sameService(bs.svc, svc) {
			bs = &builtService{svc: svc, ids: ids, meshed: meshed}
			for _, sp := range svc.Ports {
				if sp.Protocol != "TCP" {
					continue
				}
				bs.clusters = append(bs.clusters, outboundCluster(s, svc, sp, o, false))
				bs.grpcClusters = append(bs.grpcClusters, outboundCluster(s, svc, sp, o, true))
				bs.endpoints = append(bs.endpoints, loadAssignment(svc, sp, o))
				bs.apis = append(bs.apis, apiListener(svc, sp, o))
			}
		}
		built[svc.Key()] = bs
		m.Clusters = append(m.Clusters, bs.clusters...)
		m.GRPCClusters = append(m.GRPCClusters, bs.grpcClusters...)
		m.Endpoints = append(m.Endpoints, bs.endpoints...)
		m.APIListeners = append(m.APIListeners, bs.apis...)
	}
	m.Clusters = append(m.Clusters, passthroughCluster(), blackholeCluster())
	for port := range inboundPorts {
		m.Clusters = append(m.Clusters, inboundCluster(port))
		m.Routes = append(m.Routes, inboundRoute(port))
	}
	// The outbound listener and routes read only the Services' names, addresses and ports, and the
	// Gateway API objects.
	if b.outbound == nil || !slices.EqualFunc(b.heads, s.Services, sameHead) || !b.gammaIn.same(s) {
		b.outbound, b.routes = outboundListener(s, o), outboundRoutes(s, o, buildGAMMA(s, o))
		b.grpcRoutes = make([]*route.RouteConfiguration, len(b.routes))
		for i, rc := range b.routes {
			b.grpcRoutes[i] = grpcRouteConfig(rc)
		}
		b.gammaIn = gammaInputsOf(s)
		b.heads = make([]discovery.Service, len(s.Services))
		for i, svc := range s.Services {
			svc.Endpoints = nil
			b.heads[i] = svc
		}
	}
	m.Routes = append(m.Routes, b.routes...)
	m.GRPCRoutes = b.grpcRoutes
	m.Outbound = b.outbound
	b.services = built
	sortMesh(m)
	return m
}

// sameHead reports whether two Services agree on everything but their endpoints.
func sameHead(a, b discovery.Service) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.ClusterIP == b.ClusterIP &&
		slices.Equal(a.Ports, b.Ports) && maps.Equal(a.Annotations, b.Annotations)
}

// sameService reports whether two Services are equal, endpoints included.
func sameService(a, b discovery.Service) bool {
	return sameHead(a, b) && slices.EqualFunc(a.Endpoints, b.Endpoints, func(x, y discovery.Endpoint) bool {
		return x.Address == y.Address && x.Ready == y.Ready && x.Terminating == y.Terminating &&
			x.Zone == y.Zone && x.NodeName == y.NodeName && x.Hostname == y.Hostname && x.Pod == y.Pod &&
			slices.Equal(x.Ports, y.Ports)
	})
}
