package main

import (
	"testing"

	"google.golang.org/protobuf/proto"

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
