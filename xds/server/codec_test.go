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

	"github.com/weftmesh/weft/xds"
)

func testCodec() codec { return codec{encoding.GetCodecV2(protoenc.Name)} }

// A SotW ADS stream decodes the requests our codec hands it undecoded exactly as the protobuf
// decoder does: ACK-shaped ones on its fast path (reusing the names of the last request when they
// are the same bytes), the rest in full.
func TestStreamDecodesRequestsAsProto(t *testing.T) {
	c := testCodec()
	srv := New(Options{})
	srv.Update(stateOf(t, serviceYAML("x", 80, 8080, "10.0.0.1")))
	// EDS has no state yet (the names of its first request are kept aside for it); "t" has.
	as := &adsStream{s: srv, types: []*sotwType{{url: "t"}}}
	names := []string{"a", "b", "outbound|80||x.default.svc.cluster.local"} // the last one is served
	reqs := []*discoverypb.DiscoveryRequest{
		{},
		{TypeUrl: xds.ClusterType},
		{VersionInfo: "v-1", ResponseNonce: "7", TypeUrl: xds.EndpointType, ResourceNames: names},
		{VersionInfo: "v-2", ResponseNonce: "8", TypeUrl: xds.EndpointType, ResourceNames: names}, // same names: reused
		{VersionInfo: "v-2", ResponseNonce: "9", TypeUrl: xds.EndpointType, ResourceNames: names[:2]},
		{VersionInfo: "v-2", ResponseNonce: "10", TypeUrl: xds.EndpointType, ResourceNames: []string{"a", "a"}},
		{ResourceNames: []string{"*"}, TypeUrl: "t"},
		{ResourceNames: []string{"*"}, TypeUrl: "t"},
		{Node: &core.Node{Id: "p.ns"}, TypeUrl: "t", ResourceNames: []string{"a"}},
		{VersionInfo: "v", ResponseNonce: "1", TypeUrl: "t", ErrorDetail: &status.Status{Code: 3, Message: "bad"}},
	}
	for _, want := range reqs {
		b, err := proto.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		raw := &rawRequest{DiscoveryRequest: &discoverypb.DiscoveryRequest{}}
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, raw); err != nil {
			t.Fatal(err)
		}
		got, err := as.decodeRequest(raw)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
			t.Errorf("decoded request differs (-want +got):\n%s", d)
		}
	}
	// Not UTF-8 in a name: rejected, as the protobuf decoder rejects it.
	b, _ := proto.Marshal(&discoverypb.DiscoveryRequest{TypeUrl: "t"})
	b = append(b, 0x1a, 0x02, 0xff, 0xfe) // field 3, two invalid bytes
	if _, err := as.decodeRequest(&rawRequest{data: mem.BufferSlice{mem.SliceBuffer(b)}}); err == nil {
		t.Error("a resource name that is not UTF-8 was accepted")
	}
	// Without our codec, gRPC's decodes into the embedded message, which the stream takes as is.
	b, _ = proto.Marshal(reqs[2])
	raw := &rawRequest{DiscoveryRequest: &discoverypb.DiscoveryRequest{}}
	if err := encoding.GetCodecV2(protoenc.Name).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, raw); err != nil {
		t.Fatal(err)
	}
	got, err := as.decodeRequest(raw)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(reqs[2], got, protocmp.Transform()); d != "" {
		t.Errorf("default codec: request differs (-want +got):\n%s", d)
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
