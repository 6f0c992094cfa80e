package proxy_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"testing"

	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// BenchmarkHTTP1Hop is one keep-alive HTTP/1.1 GET through the outbound listener, against direct.
func BenchmarkHTTP1Hop(b *testing.B) {
	be := startBackend(b, "b", "127.0.0.1:0")
	svc := newService(b, echoFQDN, "127.0.0.70", be.addr)
	_, _ = mesh(b, svc)
	for _, tc := range []struct{ name, url string }{
		{"direct", "http://" + be.addr.String() + "/"},
		{"proxy", "http://" + svc.authority() + "/"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c := &http.Client{Transport: resolve(&http.Transport{MaxIdleConnsPerHost: 64}, svc)}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := c.Get(tc.url)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}

// BenchmarkGRPCUnaryHop is a unary gRPC call (1 KB echo, grpc-go both ends, h2c) through the
// outbound listener, against direct: 16 callers over one client connection, as the bench's gRPC phase.
func BenchmarkGRPCUnaryHop(b *testing.B) {
	be := startGRPCBackend(b)
	svc := newService(b, "grpc.shop.svc.cluster.local", "127.0.0.71", be)
	_, _ = mesh(b, svc)
	for _, tc := range []struct{ name, addr string }{
		{"direct", be.String()},
		{"proxy", svc.ip + ":" + strconv.Itoa(svc.port)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cc := grpcClient(b, svc.authority(), tc.addr)
			client := testpb.NewTestServiceClient(cc)
			req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: bytes.Repeat([]byte("x"), 1024)}}
			b.ReportAllocs()
			b.SetParallelism(8) // 16 callers on 2 CPUs
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := client.UnaryCall(context.Background(), req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
