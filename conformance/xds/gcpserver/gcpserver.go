// Package gcpserver is a plain go-control-plane xDS server, as its own example builds one: a
// SnapshotCache (ads=false) behind server.NewServer, with ADS and the per-type services registered. It
// implements the conformance suite's Driver, so the suite can measure the library itself.
//
// What it serves for each service (name, namespace, port, endpoint IPs), named as Weft names them: an EDS
// cluster and its ClusterLoadAssignment "outbound|<port>||<name>.<ns>.svc.cluster.local", an API
// listener "<name>.<ns>.svc.cluster.local:<port>" whose connection manager uses RDS route "<port>", and
// that route configuration with one virtual host per service on the port.
//
// Versions are what an application on go-control-plane typically does: one counter for the snapshot,
// starting at 1 when the process starts, bumped on every rebuild.
package gcpserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sort"
	"strconv"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	clustersvc "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointsvc "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenersvc "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routesvc "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	xdsconf "github.com/weftmesh/weft/conformance/xds"
)

// Server is a running go-control-plane server and its input.
type Server struct {
	nodeID string

	mu       sync.Mutex // guards everything below
	services map[string]xdsconf.Service
	version  int
	addr     string
	cache    cache.SnapshotCache
	grpc     *grpc.Server
	done     chan struct{}
}

// Start serves services to node nodeID on addr (use "127.0.0.1:0" for any port).
func Start(addr, nodeID string, services []xdsconf.Service) (*Server, error) {
	s := &Server{nodeID: nodeID, services: map[string]xdsconf.Service{}}
	for _, svc := range services {
		s.services[key(svc.Namespace, svc.Name)] = svc
	}
	if err := s.start(addr); err != nil {
		return nil, err
	}
	return s, nil
}

func key(ns, name string) string { return ns + "/" + name }

// start builds a fresh cache and gRPC server, as a new process would. Callers hold no lock.
func (s *Server) start(addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	c := cache.NewSnapshotCache(false, cache.IDHash{}, nil)
	srv := server.NewServer(context.Background(), c, nil)
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	clustersvc.RegisterClusterDiscoveryServiceServer(g, srv)
	endpointsvc.RegisterEndpointDiscoveryServiceServer(g, srv)
	listenersvc.RegisterListenerDiscoveryServiceServer(g, srv)
	routesvc.RegisterRouteDiscoveryServiceServer(g, srv)
	done := make(chan struct{})
	s.mu.Lock()
	s.addr, s.cache, s.grpc, s.done, s.version = lis.Addr().String(), c, g, done, 0
	err = s.publishLocked()
	s.mu.Unlock()
	if err != nil {
		lis.Close()
		return err
	}
	go func() {
		defer close(done)
		_ = g.Serve(lis)
	}()
	return nil
}

// Addr is the server's address, HOST:PORT.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Close stops the server.
func (s *Server) Close() {
	s.mu.Lock()
	g, done := s.grpc, s.done
	s.mu.Unlock()
	g.Stop()
	<-done
}

// publishLocked builds a snapshot of the services at the next version and sets it.
func (s *Server) publishLocked() error {
	s.version++
	snap, err := cache.NewSnapshot(strconv.Itoa(s.version), Resources(s.servicesLocked()))
	if err != nil {
		return fmt.Errorf("building snapshot: %w", err)
	}
	return s.cache.SetSnapshot(context.Background(), s.nodeID, snap)
}

func (s *Server) servicesLocked() []xdsconf.Service {
	out := make([]xdsconf.Service, 0, len(s.services))
	for _, svc := range s.services {
		out = append(out, svc)
	}
	sort.Slice(out, func(i, j int) bool { return key(out[i].Namespace, out[i].Name) < key(out[j].Namespace, out[j].Name) })
	return out
}

// AddService implements xds.Driver.
func (s *Server) AddService(_ context.Context, svc xdsconf.Service) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.services[key(svc.Namespace, svc.Name)] = svc
	return s.publishLocked()
}

// RemoveService implements xds.Driver.
func (s *Server) RemoveService(_ context.Context, namespace, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.services, key(namespace, name))
	return s.publishLocked()
}

// SetEndpoints implements xds.Driver.
func (s *Server) SetEndpoints(_ context.Context, namespace, name string, ips []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	svc, ok := s.services[key(namespace, name)]
	if !ok {
		return fmt.Errorf("no service %s/%s", namespace, name)
	}
	svc.Endpoints = append([]string(nil), ips...)
	s.services[key(namespace, name)] = svc
	return s.publishLocked()
}

// Resync implements xds.Driver: it rebuilds the snapshot from unchanged input, as an application does
// on every event it receives.
func (s *Server) Resync(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.publishLocked()
}

// Restart implements xds.Driver: a new cache and gRPC server on the same address, the version counter
// starting again, as after a process restart.
func (s *Server) Restart(context.Context) error {
	addr := s.Addr()
	s.Close()
	if err := s.start(addr); err != nil {
		return errors.Join(errors.New("restarting"), err)
	}
	return nil
}

// Goroutines implements xds.GoroutineCounter (for the whole process: the server runs in it).
func (s *Server) Goroutines(context.Context) (int, error) { return runtime.NumGoroutine(), nil }

// ClusterName is the name of a service's cluster and of its ClusterLoadAssignment.
func ClusterName(svc xdsconf.Service) string {
	return fmt.Sprintf("outbound|%d||%s.%s.svc.cluster.local", svc.Port, svc.Name, svc.Namespace)
}

// Resources translates services into xDS resources, sorted by name.
func Resources(services []xdsconf.Service) map[resource.Type][]types.Resource {
	ads := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	out := map[resource.Type][]types.Resource{}
	vhosts := map[int][]*routev3.VirtualHost{}
	router, _ := anypb.New(&routerv3.Router{})
	for _, svc := range services {
		name := ClusterName(svc)
		host := fmt.Sprintf("%s.%s.svc.cluster.local", svc.Name, svc.Namespace)
		out[resource.ClusterType] = append(out[resource.ClusterType], &clusterv3.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads},
		})
		var lbs []*endpointv3.LbEndpoint
		for _, ip := range svc.Endpoints {
			lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(svc.Port)}}}}, // #nosec G115 -- test Service ports are 1-65535
			}}})
		}
		out[resource.EndpointType] = append(out[resource.EndpointType], &endpointv3.ClusterLoadAssignment{
			ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}},
		})
		hcm, _ := anypb.New(&hcmv3.HttpConnectionManager{
			StatPrefix:     host,
			RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: ads, RouteConfigName: strconv.Itoa(svc.Port)}},
			HttpFilters:    []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
		})
		out[resource.ListenerType] = append(out[resource.ListenerType], &listenerv3.Listener{
			Name:        fmt.Sprintf("%s:%d", host, svc.Port),
			ApiListener: &listenerv3.ApiListener{ApiListener: hcm},
		})
		vhosts[svc.Port] = append(vhosts[svc.Port], &routev3.VirtualHost{
			Name:    host,
			Domains: []string{host, fmt.Sprintf("%s:%d", host, svc.Port)},
			Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name}}},
			}},
		})
	}
	ports := make([]int, 0, len(vhosts))
	for p := range vhosts {
		ports = append(ports, p)
	}
	sort.Ints(ports)
	for _, p := range ports {
		out[resource.RouteType] = append(out[resource.RouteType], &routev3.RouteConfiguration{Name: strconv.Itoa(p), VirtualHosts: vhosts[p]})
	}
	return out
}
