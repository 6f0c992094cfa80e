package xds

import (
	"encoding/json"
	"reflect"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/weftmesh/weft/discovery"
)

// clone is a deep copy of s, so a change to it cannot reach what a Builder remembers.
func clone(t *testing.T, s *discovery.State) *discovery.State {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var c discovery.State
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return &c
}

// firstMeshed is the index of a Service whose endpoints are all pods with a proxy, and one of them.
func firstMeshed(t *testing.T, s *discovery.State) (svc int, pod int) {
	t.Helper()
	for i, sv := range s.Services {
		if _, meshed := peerIdentities(s, sv, Options{}); !meshed {
			continue
		}
		for j, p := range s.Pods {
			if p.Namespace == sv.Namespace && p.Name == sv.Endpoints[0].Pod {
				return i, j
			}
		}
	}
	t.Fatal("the fixture has no meshed Service")
	return 0, 0
}

// A Builder fed a sequence of States gives, every time, what BuildMesh gives for that State alone.
func TestBuilderEqualsBuildMesh(t *testing.T) {
	base := load(t, "mesh.yaml")
	si, pi := firstMeshed(t, base)
	steps := []struct {
		name   string
		change func(s *discovery.State)
	}{
		{"nothing", func(s *discovery.State) {}},
		{"an endpoint moves", func(s *discovery.State) { s.Services[si].Endpoints[0].Address = "127.0.0.99" }},
		{"an endpoint stops being ready", func(s *discovery.State) { s.Services[si].Endpoints[0].Ready = false }},
		{"an endpoint terminates", func(s *discovery.State) { s.Services[si].Endpoints[0].Terminating = true }},
		{"an endpoint's zone", func(s *discovery.State) { s.Services[si].Endpoints[0].Zone = "zone-b" }},
		{"an endpoint's port", func(s *discovery.State) { s.Services[si].Endpoints[0].Ports[0].Port++ }},
		{"an endpoint removed", func(s *discovery.State) { s.Services[si].Endpoints = s.Services[si].Endpoints[1:] }},
		{"a pod's service account", func(s *discovery.State) { s.Pods[pi].ServiceAccount = "other" }},
		{"a pod loses its proxy", func(s *discovery.State) { s.Pods[pi].HasProxy = false }},
		{"a port added", func(s *discovery.State) {
			s.Services[si].Ports = append(s.Services[si].Ports, discovery.ServicePort{Name: "http-admin", Port: 9901, Protocol: "TCP"})
		}},
		{"a port's protocol", func(s *discovery.State) { s.Services[si].Ports[0].AppProtocol = "http2" }},
		{"a cluster IP", func(s *discovery.State) { s.Services[si].ClusterIP = "10.96.200.200" }},
		{"an annotation", func(s *discovery.State) {
			s.Services[si].Annotations = map[string]string{"config.weft.io/opaque-ports": "9901"}
		}},
		{"a Service removed", func(s *discovery.State) { s.Services = slices.Delete(s.Services, si, si+1) }},
		{"a Service added", func(s *discovery.State) {
			extra := s.Services[si]
			extra.Name = "zz-" + extra.Name
			s.Services = append(s.Services, extra)
		}},
	}
	b := NewBuilder(Options{})
	check := func(step string, s *discovery.State) {
		t.Helper()
		got, want := b.Build(s), BuildMesh(s, Options{})
		if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Errorf("%s: Builder differs from BuildMesh (-want +got):\n%s", step, diff)
		}
	}
	// Each change from the base State and back, so each step changes only what it names.
	for _, step := range steps {
		check(step.name+" (the base before)", base)
		s := clone(t, base)
		step.change(s)
		check(step.name, s)
	}
	check("back to the base", base)
}

// After a one-endpoint change, every other Service keeps its very resources, the changed one gets
// new ones, and the listener and routes are kept.
func TestBuilderReusesWhatDidNotChange(t *testing.T) {
	base := load(t, "mesh.yaml")
	si, _ := firstMeshed(t, base)
	b := NewBuilder(Options{})
	before := b.Build(base)
	s := clone(t, base)
	s.Services[si].Endpoints[0].Address = "127.0.0.99"
	after := b.Build(s)

	changed := map[string]bool{}
	for _, sp := range s.Services[si].Ports {
		changed[OutboundClusterName(sp.Port, fqdn(s.Services[si], Options{}))] = true
	}
	if len(before.Endpoints) != len(after.Endpoints) || len(before.Endpoints) < 2 {
		t.Fatalf("%d endpoints resources before, %d after: the fixture needs two Services or more", len(before.Endpoints), len(after.Endpoints))
	}
	for i, cla := range after.Endpoints {
		same := cla == before.Endpoints[i]
		if changed[cla.GetClusterName()] == same {
			t.Errorf("%s: reused %v, want %v", cla.GetClusterName(), same, !changed[cla.GetClusterName()])
		}
	}
	if after.Outbound != before.Outbound {
		t.Error("the outbound listener was rebuilt though no Service's address or port changed")
	}
}

// sameService must compare every field of a Service and of an Endpoint: a new field in discovery
// makes this test fail until sameService (and sameHead, if the listener or routes read it) knows it.
func TestSameServiceKnowsEveryField(t *testing.T) {
	fields := func(v any) []string {
		var names []string
		for f := range reflect.TypeOf(v).Fields() {
			names = append(names, f.Name)
		}
		return names
	}
	for _, tc := range []struct {
		v    any
		want []string
	}{
		{discovery.Service{}, []string{"Namespace", "Name", "ClusterIP", "Ports", "Annotations", "Endpoints"}},
		{discovery.Endpoint{}, []string{"Address", "Ports", "Ready", "Terminating", "Zone", "NodeName", "Hostname", "Pod"}},
	} {
		if got := fields(tc.v); !slices.Equal(got, tc.want) {
			t.Errorf("%T has fields %v; sameService compares %v", tc.v, got, tc.want)
		}
	}
}
