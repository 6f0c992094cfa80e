package server

import (
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
)

func testCodec() codec {
	return codec{proto: encoding.GetCodecV2(protoenc.Name), names: &interned{m: map[string]string{}}}
}

// The codec's request decoder gives what the protobuf decoder gives, for ACK-shaped requests (its
// fast path) and for the rest (handed on).
func TestCodecDecodesRequestsAsProto(t *testing.T) {
	c := testCodec()
	reqs := []*discoverypb.DiscoveryRequest{
		{},
		{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster"},
		{VersionInfo: "v-1", ResponseNonce: "7", TypeUrl: "t", ResourceNames: []string{"a", "b", "outbound|80||x.y.svc.cluster.local", "a"}},
		{ResourceNames: []string{"*"}, TypeUrl: "t"},
		{Node: &core.Node{Id: "p.ns"}, TypeUrl: "t", ResourceNames: []string{"a"}},
		{VersionInfo: "v", ResponseNonce: "1", TypeUrl: "t", ErrorDetail: &status.Status{Code: 3, Message: "bad"}},
	}
	for i := 0; i < 2; i++ { // the second time, names come from the interned table
		for _, want := range reqs {
			b, err := proto.Marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			got := &discoverypb.DiscoveryRequest{}
			if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
				t.Errorf("decoded request differs (-want +got):\n%s", d)
			}
		}
	}
	// Not UTF-8 in a name: rejected, as the protobuf decoder rejects it.
	bad := proto.MarshalOptions{}
	b, _ := bad.Marshal(&discoverypb.DiscoveryRequest{TypeUrl: "t"})
	b = append(b, 0x1a, 0x02, 0xff, 0xfe) // field 3, two invalid bytes
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &discoverypb.DiscoveryRequest{}); err == nil {
		t.Error("a resource name that is not UTF-8 was accepted")
	}
}

// A pre-encoded response is on the wire exactly the response it embeds.
func TestCodecWritesPreEncodedResponses(t *testing.T) {
	c := testCodec()
	res := []*anypb.Any{{TypeUrl: "t", Value: []byte("one")}, {TypeUrl: "t", Value: []byte("two")}}
	body, err := proto.Marshal(&discoverypb.DiscoveryResponse{VersionInfo: "v-3", Resources: res, TypeUrl: "t"})
	if err != nil {
		t.Fatal(err)
	}
	want := &discoverypb.DiscoveryResponse{VersionInfo: "v-3", Resources: res, TypeUrl: "t", Nonce: "12"}
	field := []byte{5<<3 | 2, 2, '1', '2'}
	out, err := c.Marshal(&preEncoded{DiscoveryResponse: want, wire: body, nonce: field})
	if err != nil {
		t.Fatal(err)
	}
	got := &discoverypb.DiscoveryResponse{}
	if err := proto.Unmarshal(out.Materialize(), got); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
		t.Errorf("pre-encoded response differs (-want +got):\n%s", d)
	}
	// Without the codec, gRPC's own marshals the embedded response: the same message.
	plain, err := encoding.GetCodecV2(protoenc.Name).Marshal(&preEncoded{DiscoveryResponse: want, wire: body, nonce: field})
	if err != nil {
		t.Fatal(err)
	}
	got2 := &discoverypb.DiscoveryResponse{}
	if err := proto.Unmarshal(plain.Materialize(), got2); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got2, protocmp.Transform()); d != "" {
		t.Errorf("default codec: response differs (-want +got):\n%s", d)
	}
}
