package xdsclient

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

// testCP is a small control plane built from go-control-plane's snapshot cache and server.
type testCP struct {
	cache cachev3.SnapshotCache
	addr  string
	srv   *grpc.Server

	mu    sync.Mutex
	nacks []string
	nodes []*corev3.Node
	delta int
}

type noDelta struct{ serverv3.Server }

func (noDelta) DeltaAggregatedResources(discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return status.Error(codes.Unimplemented, "no delta here")
}

// startCP serves ADS on addr ("127.0.0.1:0" for any port). With sotwOnly, delta ADS is Unimplemented.
func startCP(t *testing.T, addr string, cache cachev3.SnapshotCache, sotwOnly bool) *testCP {
	t.Helper()
	if cache == nil {
		cache = cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	}
	cp := &testCP{cache: cache}
	cb := serverv3.CallbackFuncs{
		StreamDeltaRequestFunc: func(_ int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			cp.mu.Lock()
			defer cp.mu.Unlock()
			cp.delta++
			if r.GetNode() != nil {
				cp.nodes = append(cp.nodes, r.GetNode())
			}
			if r.GetErrorDetail() != nil {
				cp.nacks = append(cp.nacks, r.GetErrorDetail().GetMessage())
			}
			return nil
		},
		StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
			cp.mu.Lock()
			defer cp.mu.Unlock()
			if r.GetNode() != nil {
				cp.nodes = append(cp.nodes, r.GetNode())
			}
			if r.GetErrorDetail() != nil {
				cp.nacks = append(cp.nacks, r.GetErrorDetail().GetMessage())
			}
			return nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	var ads discoveryv3.AggregatedDiscoveryServiceServer = serverv3.NewServer(ctx, cache, cb)
	if sotwOnly {
		ads = noDelta{ads.(serverv3.Server)}
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		cancel()
		t.Fatalf("listen: %v", err)
	}
	cp.addr = lis.Addr().String()
	cp.srv = grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(cp.srv, ads)
	go func() { _ = cp.srv.Serve(lis) }()
	t.Cleanup(func() { cp.srv.Stop(); cancel() })
	return cp
}

func (cp *testCP) stop() { cp.srv.Stop() }

func (cp *testCP) nackList() []string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]string(nil), cp.nacks...)
}

// set publishes a snapshot of these resources for node.
func (cp *testCP) set(t *testing.T, node, version string, msgs ...proto.Message) {
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
			t.Fatalf("unexpected %T", m)
		}
		res[typ] = append(res[typ], m.(types.Resource))
	}
	snap, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), node, snap); err != nil {
		t.Fatal(err)
	}
}
