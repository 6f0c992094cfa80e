// Package testcp is a small xDS control plane for tests of xDS clients: go-control-plane's snapshot
// cache and server, recording the nodes and NACKs it sees. The data plane's tests use it (the
// data plane itself may not import go-control-plane's cache or server; its tests may).
package testcp

import (
	"context"
	"net"
	"sync"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// CP is a running test control plane.
type CP struct {
	Cache cachev3.SnapshotCache
	Addr  string
	srv   *grpc.Server

	mu    sync.Mutex // guards the fields below
	nacks []string
	nodes []*corev3.Node
}

// Options of Start; the zero value serves delta and SotW ADS on a new snapshot cache.
type Options struct {
	// Listener to serve on; when nil, Start listens on its addr argument.
	Listener net.Listener
	// Cache to serve; a new ADS SnapshotCache keyed by node id when nil.
	Cache cachev3.SnapshotCache
	// SotWOnly makes delta ADS answer Unimplemented, like a server without delta.
	SotWOnly bool
	// ServerOptions for the gRPC server (credentials, interceptors).
	ServerOptions []grpc.ServerOption
}

type noDelta struct{ serverv3.Server }

func (noDelta) DeltaAggregatedResources(discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return status.Error(codes.Unimplemented, "no delta here")
}

// Start serves ADS on addr ("127.0.0.1:0" for any port) or o.Listener until the test ends.
func Start(t testing.TB, addr string, o Options) *CP {
	t.Helper()
	if o.Cache == nil {
		o.Cache = cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	}
	cp := &CP{Cache: o.Cache}
	record := func(node *corev3.Node, nack string, isNACK bool) error {
		cp.mu.Lock()
		defer cp.mu.Unlock()
		if node != nil {
			cp.nodes = append(cp.nodes, node)
		}
		if isNACK {
			cp.nacks = append(cp.nacks, nack)
		}
		return nil
	}
	cb := serverv3.CallbackFuncs{
		StreamDeltaRequestFunc: func(_ int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			return record(r.GetNode(), r.GetErrorDetail().GetMessage(), r.GetErrorDetail() != nil)
		},
		StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
			return record(r.GetNode(), r.GetErrorDetail().GetMessage(), r.GetErrorDetail() != nil)
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	var ads discoveryv3.AggregatedDiscoveryServiceServer = serverv3.NewServer(ctx, o.Cache, cb)
	if o.SotWOnly {
		ads = noDelta{ads.(serverv3.Server)}
	}
	lis := o.Listener
	if lis == nil {
		var err error
		if lis, err = net.Listen("tcp", addr); err != nil {
			cancel()
			t.Fatalf("listen: %v", err)
		}
	}
	cp.Addr = lis.Addr().String()
	cp.srv = grpc.NewServer(o.ServerOptions...)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(cp.srv, ads)
	go func() { _ = cp.srv.Serve(lis) }()
	t.Cleanup(func() { cp.srv.Stop(); cancel() })
	return cp
}

// Stop ends the server now (every stream drops), as a crashed control plane would.
func (cp *CP) Stop() { cp.srv.Stop() }

// NACKs are the error_detail messages of every NACK received so far.
func (cp *CP) NACKs() []string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]string(nil), cp.nacks...)
}

// Nodes are the nodes of every request that carried one, in order.
func (cp *CP) Nodes() []*corev3.Node {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]*corev3.Node(nil), cp.nodes...)
}

// Set publishes a snapshot of these resources (clusters, endpoints, listeners, routes, secrets) for node.
func (cp *CP) Set(t testing.TB, node, version string, msgs ...proto.Message) {
	t.Helper()
	res := map[resource.Type][]types.Resource{}
	for _, m := range msgs {
		var typ string
		switch m.(type) {
		case *clusterv3.Cluster:
			typ = resource.ClusterType
		case *endpointv3.ClusterLoadAssignment:
			typ = resource.EndpointType
		case *listenerv3.Listener:
			typ = resource.ListenerType
		case *routev3.RouteConfiguration:
			typ = resource.RouteType
		case *tlsv3.Secret:
			typ = resource.SecretType
		default:
			t.Fatalf("testcp: unexpected resource %T", m)
		}
		res[typ] = append(res[typ], m.(types.Resource))
	}
	snap, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.Cache.SetSnapshot(context.Background(), node, snap); err != nil {
		t.Fatal(err)
	}
}
