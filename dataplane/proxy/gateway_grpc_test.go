package proxy_test

import (
	"context"
	"net/netip"
	"strconv"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

// namedGRPC names itself in the response header "backend" and reports each call on calls; a call
// whose payload is "slow" waits for its deadline.
type namedGRPC struct {
	testpb.UnimplementedTestServiceServer
	name  string
	calls chan string
}

func (b namedGRPC) UnaryCall(ctx context.Context, r *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	select {
	case b.calls <- string(r.GetPayload().GetBody()) + " tenant=" + first(md.Get("x-tenant")):
	default:
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs("backend", b.name))
	if string(r.GetPayload().GetBody()) == "slow" {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &testpb.SimpleResponse{Payload: r.GetPayload()}, nil
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func startNamedGRPC(t testing.TB, name string) (netip.AddrPort, chan string) {
	l := listen(t, "127.0.0.1:0")
	s := grpc.NewServer()
	calls := make(chan string, 100)
	testpb.RegisterTestServiceServer(s, namedGRPC{name: name, calls: calls})
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return netip.MustParseAddrPort(l.Addr().String()), calls
}

// TestGRPCRoute: a gRPC client through the proxy follows routes as weft-control emits them for a
// GRPCRoute: the method as an exact path with a header match, the service as a prefix, a response
// header, a mirror of the call (an HTTP/2 body of no announced length), and the client's grpc-timeout
// honoured up to max_stream_duration's grpc_timeout_header_max.
func TestGRPCRoute(t *testing.T) {
	a, _ := startNamedGRPC(t, "a")
	b, _ := startNamedGRPC(t, "b")
	m, mirrored := startNamedGRPC(t, "mirror")
	cl := func(n string) string { return fx.ClusterName(80, n+".shop.svc.cluster.local") }
	svc := newService(t, "grpc.shop.svc.cluster.local", "127.0.0.168", a)
	msgs := resources(svc)
	for n, addr := range map[string]netip.AddrPort{"a": a, "b": b, "mirror": m} {
		c := fx.EDSCluster(cl(n), clusterv3.Cluster_ROUND_ROBIN)
		msgs = append(msgs, c, fx.CLA(cl(n), addr))
	}
	method := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/grpc.testing.TestService/UnaryCall"},
		Headers: []*routev3.HeaderMatcher{headerIs("x-tenant", "beta")}}
	toB := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cl("b")},
		RequestMirrorPolicies: []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: cl("mirror")}}}
	toA := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cl("a")},
		MaxStreamDuration: &routev3.RouteAction_MaxStreamDuration{GrpcTimeoutHeaderMax: durationpb.New(300 * time.Millisecond)}}
	for _, msg := range msgs {
		if rc, ok := msg.(*routev3.RouteConfiguration); ok {
			rc.VirtualHosts[0].Routes = []*routev3.Route{
				{Match: method, Action: &routev3.Route_Route{Route: toB},
					ResponseHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-route", Value: "beta"}}}},
				{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/grpc.testing.TestService"}},
					Action: &routev3.Route_Route{Route: toA}},
			}
		}
	}
	meshWith(t, msgs, svc)
	client := testpb.NewTestServiceClient(grpcClient(t, svc.authority(), svc.ip+":"+strconv.Itoa(svc.port)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	call := func(ctx context.Context, body string) (string, string, error) {
		var hdr metadata.MD
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(body)}}, grpc.Header(&hdr))
		return first(hdr.Get("backend")), first(hdr.Get("x-route")), err
	}
	if be, route, err := call(ctx, "hello"); err != nil || be != "a" || route != "" {
		t.Fatalf("without the tenant header: backend %q x-route %q %v, want a", be, route, err)
	}
	beta := metadata.AppendToOutgoingContext(ctx, "x-tenant", "beta")
	if be, route, err := call(beta, "hello"); err != nil || be != "b" || route != "beta" {
		t.Fatalf("with x-tenant beta: backend %q x-route %q %v, want b and x-route beta", be, route, err)
	}
	select {
	case got := <-mirrored:
		if got != "hello tenant=beta" {
			t.Errorf("the mirror got %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the mirror got no copy of the call")
	}
	// A 10 s deadline on a route that caps grpc-timeout at 300 ms: the call ends at 300 ms.
	start := time.Now()
	_, _, err := call(ctx, "slow")
	if status.Code(err) != codes.DeadlineExceeded || time.Since(start) > 5*time.Second {
		t.Fatalf("slow call: %v after %v, want DEADLINE_EXCEEDED from the 300 ms cap", err, time.Since(start))
	}
}
