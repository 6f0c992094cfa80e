package gamma

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
)

// grpcRoute is in every version of the discovery file: on Service grpc-echo, UnaryCall with x-canary:
// yes goes to grpc-echo-v2, everything else to grpc-echo-v1.
var grpcRoute = fmt.Sprintf(`---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc-echo, namespace: %[1]s}
spec:
  parentRefs: [{group: "", kind: Service, name: grpc-echo, port: %[2]d}]
  rules:
  - matches: [{method: {service: grpc.testing.TestService, method: UnaryCall}, headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: grpc-echo-v2, port: %[2]d}]
  - backendRefs: [{name: grpc-echo-v1, port: %[2]d}]
`, namespace, grpcPort)

// grpcEcho answers EmptyCall and UnaryCall with its name in the response header x-served-by.
type grpcEcho struct {
	testgrpc.UnimplementedTestServiceServer
	name string
}

func (g *grpcEcho) EmptyCall(ctx context.Context, _ *testgrpc.Empty) (*testgrpc.Empty, error) {
	return &testgrpc.Empty{}, grpc.SetHeader(ctx, metadata.Pairs("x-served-by", g.name))
}

func (g *grpcEcho) UnaryCall(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	return &testgrpc.SimpleResponse{}, grpc.SetHeader(ctx, metadata.Pairs("x-served-by", g.name))
}

func startGRPCEcho(t *testing.T, name, addr string) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("%s gRPC app on %s: %v", name, addr, err)
	}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, &grpcEcho{name: name})
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
}

// grpcRouteMatches: a grpc-go client of Service grpc-echo through client-0's sidecar (h2c to its
// explicit proxy, the Service as :authority) is routed by the GRPCRoute's method and header match.
func (m *mesh) grpcRouteMatches(t *testing.T) {
	cc, err := grpc.NewClient("passthrough:///"+m.proxyAddr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority(fmt.Sprintf("grpc-echo.%s.svc.cluster.local:%d", namespace, grpcPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := testgrpc.NewTestServiceClient(cc)
	for _, c := range []struct {
		method string
		canary bool
		want   string
	}{
		{"UnaryCall", true, "echo-v2"},
		{"UnaryCall", false, "echo-v1"},
		{"EmptyCall", true, "echo-v1"},
		{"EmptyCall", false, "echo-v1"},
	} {
		for range 10 { // both versions back Service grpc-echo: one lucky answer proves nothing
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if c.canary {
				ctx = metadata.AppendToOutgoingContext(ctx, "x-canary", "yes")
			}
			var header metadata.MD
			if c.method == "UnaryCall" {
				_, err = client.UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.Header(&header))
			} else {
				_, err = client.EmptyCall(ctx, &testgrpc.Empty{}, grpc.Header(&header))
			}
			cancel()
			if err != nil {
				t.Fatalf("%s (x-canary: yes %v) to grpc-echo through client-0's sidecar: %v", c.method, c.canary, err)
			}
			if got := header.Get("x-served-by"); len(got) != 1 || got[0] != c.want {
				t.Errorf("%s (x-canary: yes %v): served by %v, want %s", c.method, c.canary, got, c.want)
				break
			}
		}
	}
}
