package demo

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/weftmesh/weft/discovery"
)

var update = flag.Bool("update", false, "rewrite deploy/examples/demo.yaml from the demo's layout")

var exampleFile = filepath.Join("..", "..", "..", "..", "deploy", "examples", "demo.yaml")

// The example users read is what the demo runs.
func TestExampleFileIsWhatTheDemoWrites(t *testing.T) {
	want := NewLayout(0).Manifests()
	if *update {
		if err := os.WriteFile(exampleFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(exampleFile)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs from the demo's manifests (go test ./cmd/weft/internal/demo -run Example -update) (-want +got):\n%s", exampleFile, diff)
	}
}

// weft-control's file source accepts the manifests and sees every pod meshed at its address.
func TestManifestsLoad(t *testing.T) {
	l := NewLayout(42)
	objs, err := discovery.ParseObjects(l.Manifests())
	if err != nil {
		t.Fatal(err)
	}
	s := discovery.Build(objs)
	if got := len(s.Services); got != 3 {
		t.Errorf("%d services, want 3", got)
	}
	pods := map[string]discovery.Pod{}
	for _, p := range s.Pods {
		pods[p.Name] = p
	}
	for _, p := range l.Pods {
		got, ok := pods[p.Name]
		if !ok {
			t.Errorf("pod %s missing", p.Name)
			continue
		}
		if got.IP != p.IP.String() || !got.HasProxy || got.ServiceAccount != p.App || got.Namespace != Namespace {
			t.Errorf("pod %s = %+v, want ip %s, a proxy, service account %s in %s", p.Name, got, p.IP, p.App, Namespace)
		}
	}
	for _, svc := range s.Services {
		p := l.Pod(svc.Name)
		if len(svc.Endpoints) != 1 || svc.Endpoints[0].Address != p.IP.String() {
			t.Errorf("service %s endpoints %+v, want one at %s", svc.Name, svc.Endpoints, p.IP)
		}
	}
}
