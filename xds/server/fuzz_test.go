package server

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/xds"
)

// splitMessages reads data as length-delimited messages (a varint length, then the bytes; at most
// 64), the fuzzers' encoding of a stream of requests. A malformed tail is one last message.
func splitMessages(data []byte) [][]byte {
	var out [][]byte
	for len(data) > 0 && len(out) < 64 {
		v, n := protowire.ConsumeBytes(data)
		if n < 0 {
			return append(out, data)
		}
		out = append(out, v)
		data = data[n:]
	}
	return out
}

// joinMessages is the inverse of splitMessages, for the seeds.
func joinMessages(f *testing.F, msgs ...proto.Message) []byte {
	var out []byte
	for _, m := range msgs {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		out = protowire.AppendBytes(out, b)
	}
	return out
}

func fuzzNode(id, kind string) *core.Node {
	n := node(id, kind)
	return n
}

// sotwSeeds are request sequences as proxies send them: subscribe, ACK, NACK, names, other kinds.
func sotwSeeds(f *testing.F) [][]byte {
	weft, envoy := fuzzNode("web-0.shop", "weft"), fuzzNode("a.default", "envoy")
	cla := xds.OutboundClusterName(80, "web.shop.svc.cluster.local")
	req := func(n *core.Node, typeURL, version, nonce string, names ...string) *discoverypb.DiscoveryRequest {
		return &discoverypb.DiscoveryRequest{Node: n, TypeUrl: typeURL, VersionInfo: version, ResponseNonce: nonce, ResourceNames: names}
	}
	nack := req(nil, xds.ClusterType, "", "1")
	nack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "bad"}
	return [][]byte{
		joinMessages(f, req(weft, xds.ClusterType, "", ""), req(nil, xds.EndpointType, "", "", cla), req(nil, xds.ListenerType, "", ""), req(nil, xds.ClusterType, "v", "1")),
		joinMessages(f, req(envoy, xds.ListenerType, "", ""), req(nil, xds.RouteType, "", "", "80", "web.shop.svc.cluster.local:80"), req(nil, xds.SecretType, "", "", "ROOTCA")),
		joinMessages(f, req(weft, xds.EndpointType, "", "", cla, cla, "missing"), req(nil, xds.EndpointType, "v", "1", cla, cla, "missing"), req(nil, xds.EndpointType, "v", "2")),
		joinMessages(f, req(envoy, xds.ClusterType, "", ""), nack, req(nil, "type.googleapis.com/unknown", "", "")),
		joinMessages(f, req(nil, "", "", ""), req(fuzzNode("", ""), xds.ClusterType, "", "", "*")),
	}
}

func deltaSeeds(f *testing.F) [][]byte {
	weft := fuzzNode("web-0.shop", "weft")
	cla := xds.OutboundClusterName(80, "web.shop.svc.cluster.local")
	req := func(n *core.Node, typeURL, nonce string, sub, unsub []string) *discoverypb.DeltaDiscoveryRequest {
		return &discoverypb.DeltaDiscoveryRequest{Node: n, TypeUrl: typeURL, ResponseNonce: nonce, ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub}
	}
	nack := req(nil, xds.ClusterType, "1", nil, nil)
	nack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "bad"}
	resume := req(weft, xds.EndpointType, "", []string{cla}, nil)
	resume.InitialResourceVersions = map[string]string{cla: "stale"}
	return [][]byte{
		joinMessages(f, req(weft, xds.ClusterType, "", nil, nil), req(nil, xds.EndpointType, "", []string{cla, "missing"}, nil), req(nil, xds.ClusterType, "1", nil, nil)),
		joinMessages(f, req(weft, xds.ListenerType, "", []string{"*"}, nil), req(nil, xds.RouteType, "", []string{"80"}, nil), req(nil, xds.RouteType, "", []string{"80"}, []string{"80"})),
		joinMessages(f, resume, nack, req(nil, "type.googleapis.com/unknown", "", []string{"x"}, nil)),
		joinMessages(f, req(nil, "", "", nil, nil)),
	}
}

// FuzzDecodeRequest: a SotW stream decodes the requests our codec hands it undecoded (its fast path
// for ACK-shaped requests, reusing the names of the stream's last request of a type) exactly as the
// protobuf decoder does, whatever the bytes and their sequence: the same request, or an error where
// protobuf has one.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range sotwSeeds(f) {
		f.Add(s)
	}
	srv := New(Options{})
	mesh, err := os.ReadFile("../testdata/mesh.yaml")
	if err != nil {
		f.Fatal(err)
	}
	srv.Update(fuzzState(f, mesh))
	c := testCodec()
	f.Fuzz(func(t *testing.T, data []byte) {
		as := &adsStream{s: srv, types: []*sotwType{{url: xds.ClusterType}}}
		for _, b := range splitMessages(data) {
			raw := &rawRequest{DiscoveryRequest: &discoverypb.DiscoveryRequest{}}
			if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, raw); err != nil {
				t.Fatal(err)
			}
			got, err := as.decodeRequest(raw)
			want := &discoverypb.DiscoveryRequest{}
			werr := proto.Unmarshal(b, want)
			if (err != nil) != (werr != nil) {
				t.Fatalf("decodeRequest(%q): error %v, protobuf's %v", b, err, werr)
			}
			if err != nil {
				if status.Code(err) != codes.InvalidArgument {
					t.Fatalf("decodeRequest(%q): %v, want InvalidArgument", b, err)
				}
				continue
			}
			if !proto.Equal(want, got) {
				t.Fatalf("decodeRequest(%q) differs from protobuf's (-protobuf +ours):\n%s", b, cmp.Diff(want, got, protocmp.Transform()))
			}
			if tt := as.typ(got.GetTypeUrl()); tt == nil && got.GetTypeUrl() != "" && len(as.types) < 8 {
				// as handle does: the stream now has state for this type and takes the first names.
				as.types = append(as.types, &sotwType{url: got.GetTypeUrl(), rawNames: as.first.raw, rawNamesDecoded: as.first.names})
				as.first.typeURL, as.first.raw, as.first.names = "", nil, nil
			}
		}
	})
}

func fuzzState(f *testing.F, yaml []byte) *discovery.State {
	objs, err := discovery.ParseObjects(yaml)
	if err != nil {
		f.Fatal(err)
	}
	return discovery.Build(objs)
}

// rawCodec sends and receives messages as the bytes they are, so a fuzzer's bytes reach the server.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

// FuzzADS sends arbitrary request sequences, SotW or delta, as raw bytes on an ADS stream of a real
// server (weft-control's gRPC options, over an in-memory connection) serving tests/mesh.yaml. Whatever
// the requests, the server does not panic, every response is a valid DiscoveryResponse (or
// DeltaDiscoveryResponse), and once the client half-closes, the stream ends with OK or
// InvalidArgument (or grpc-go's Internal for a delta request that is not protobuf), never another
// code, and never hangs.
func FuzzADS(f *testing.F) {
	for _, s := range sotwSeeds(f) {
		f.Add(false, s)
	}
	for _, s := range deltaSeeds(f) {
		f.Add(true, s)
	}
	f.Add(false, []byte{0xff})
	f.Add(true, []byte{0x05, 0x0a, 0x03, 0xff})

	mesh, err := os.ReadFile("../testdata/mesh.yaml")
	if err != nil {
		f.Fatal(err)
	}
	srv := New(Options{})
	srv.Update(fuzzState(f, mesh))
	lis := bufconn.Listen(1 << 20)
	g := grpc.NewServer(GRPCServerOptions()...)
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	f.Cleanup(g.Stop)
	conn, err := grpc.NewClient("passthrough:///weft-control", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { conn.Close() })

	f.Fuzz(func(t *testing.T, delta bool, data []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		method := "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
		if delta {
			method = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
		}
		cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method, grpc.ForceCodecV2(rawCodec{}))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range splitMessages(data) {
			if err := cs.SendMsg(&m); err != nil {
				break // the server ended the stream: RecvMsg says why
			}
		}
		_ = cs.CloseSend()
		for {
			var b []byte
			err := cs.RecvMsg(&b)
			if err != nil {
				switch code := status.Code(err); {
				case errors.Is(err, io.EOF), code == codes.InvalidArgument:
				case code == codes.Internal && strings.Contains(err.Error(), "failed to unmarshal the received message"):
					// grpc-go's answer to a message its codec cannot decode (delta streams use its own).
				case ctx.Err() != nil:
					t.Fatalf("the stream neither ended nor answered in 30 s after the client half-closed (%v)", err)
				default:
					t.Fatalf("stream ended with %v, want OK or InvalidArgument", err)
				}
				return
			}
			var m proto.Message = &discoverypb.DiscoveryResponse{}
			if delta {
				m = &discoverypb.DeltaDiscoveryResponse{}
			}
			if err := proto.Unmarshal(b, m); err != nil {
				t.Fatalf("response is not a valid %T: %v", m, err)
			}
		}
	})
}
