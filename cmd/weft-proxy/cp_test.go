package main

import (
	"net"
	"testing"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/conformance/testcp"
)

// testCP is the shared test control plane (conformance/testcp) under this package's short names.
type testCP struct {
	*testcp.CP
	addr string
}

// startCP serves ADS on addr ("127.0.0.1:0" for any port). With sotwOnly, delta ADS is Unimplemented.
func startCP(t testing.TB, addr string, cache cachev3.SnapshotCache, sotwOnly bool, opts ...grpc.ServerOption) *testCP {
	return startCPOn(t, nil, addr, cache, sotwOnly, opts...)
}

// startCPOn serves on an open listener (lis) when given, else on addr.
func startCPOn(t testing.TB, lis net.Listener, addr string, cache cachev3.SnapshotCache, sotwOnly bool, opts ...grpc.ServerOption) *testCP {
	t.Helper()
	cp := testcp.Start(t, addr, testcp.Options{Listener: lis, Cache: cache, SotWOnly: sotwOnly, ServerOptions: opts})
	return &testCP{CP: cp, addr: cp.Addr}
}

func (cp *testCP) set(t testing.TB, node, version string, msgs ...proto.Message) {
	t.Helper()
	cp.Set(t, node, version, msgs...)
}
