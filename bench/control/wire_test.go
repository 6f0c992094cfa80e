package main

import (
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/weftmesh/weft/xds"
)

// The clients' wire reading finds the same marker round as decoding the ClusterLoadAssignment.
func TestMarkerInWire(t *testing.T) {
	for _, round := range []int{0, 1, 7, 249, 250, 251, 999} {
		m := xds.BuildMesh(mesh(3, 4, 0, round), xds.Options{})
		for _, cla := range m.Endpoints {
			b, err := proto.Marshal(cla)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := markerInWire(b), markerRound(cla); got != want {
				t.Errorf("round %d, %s: marker %d from the wire, %d decoded", round, cla.GetClusterName(), got, want)
			}
		}
	}
}

// A request written in parts is the DiscoveryRequest a server decodes.
func TestRequestOnTheWire(t *testing.T) {
	node := &core.Node{Id: "p-1.bench"}
	nodeWire, err := proto.Marshal(node)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"outbound|80||a.bench.svc.cluster.local", "outbound|80||b.bench.svc.cluster.local"}
	for _, tc := range []struct {
		node           []byte
		version, nonce string
		names          []string
		wantNode       *core.Node
	}{
		{node: nodeWire, wantNode: node},
		{version: "v7", nonce: "12", names: names},
		{version: "v7", nonce: "13"},
	} {
		var namesWire []byte
		if tc.names != nil {
			namesWire = encodeNames(tc.names)
		}
		data, err := wireCodec{}.Marshal(newRequest(tc.node, endpointType, tc.version, tc.nonce, namesWire))
		if err != nil {
			t.Fatal(err)
		}
		var got discoverypb.DiscoveryRequest
		if err := proto.Unmarshal(data.Materialize(), &got); err != nil {
			t.Fatal(err)
		}
		want := &discoverypb.DiscoveryRequest{Node: tc.wantNode, TypeUrl: endpointType, VersionInfo: tc.version, ResponseNonce: tc.nonce, ResourceNames: tc.names}
		if diff := cmp.Diff(want, &got, protocmp.Transform()); diff != "" {
			t.Errorf("decoded request (-want +got):\n%s", diff)
		}
	}
}
