package config_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/weftmesh/weft/dataplane/config"
)

// TestDecodesWeftControlOutput decodes every resource weft-control's translation produces for a weft
// proxy (its golden files): nothing the control plane emits may be NACKed by our proxy.
func TestDecodesWeftControlOutput(t *testing.T) {
	files, _ := filepath.Glob("../../xds/testdata/*.weft.golden.json")
	if len(files) == 0 {
		t.Skip("no weft-control golden files next to this checkout")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var doc map[string][]json.RawMessage
			if err := json.Unmarshal(raw, &doc); err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, r := range doc["listeners"] {
				var m listenerv3.Listener
				must(t, protojson.Unmarshal(r, &m))
				if _, err := config.DecodeListener(&m); err != nil {
					t.Errorf("listener: %v", err)
				}
				n++
			}
			for _, r := range doc["clusters"] {
				var m clusterv3.Cluster
				must(t, protojson.Unmarshal(r, &m))
				if _, err := config.DecodeCluster(&m); err != nil {
					t.Errorf("cluster: %v", err)
				}
				n++
			}
			for _, r := range doc["routes"] {
				var m routev3.RouteConfiguration
				must(t, protojson.Unmarshal(r, &m))
				if _, err := config.DecodeRouteConfig(&m); err != nil {
					t.Errorf("route: %v", err)
				}
				n++
			}
			for _, r := range doc["endpoints"] {
				var m endpointv3.ClusterLoadAssignment
				must(t, protojson.Unmarshal(r, &m))
				if _, err := config.DecodeLoadAssignment(&m); err != nil {
					t.Errorf("endpoints: %v", err)
				}
				n++
			}
			if n == 0 {
				t.Fatal("no resources found")
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
