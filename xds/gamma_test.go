package xds

import (
	"os"
	"reflect"
	"strings"
	"testing"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/discovery"
)

// cond is a condition as the table below states it: status, reason, and a part of the message.
type cond struct {
	Status, Reason, Says string
}

// TestRouteStatuses checks the status of every route of testdata/gamma.yaml: what `kubectl get
// httproute -o yaml` shows a user under status.parents.
func TestRouteStatuses(t *testing.T) {
	type parent struct {
		Name                 string
		Accepted, Resolved   cond
		ControllerName, Kind string
	}
	ok := cond{"True", "Accepted", "attached to Service"}
	resolved := cond{"True", "ResolvedRefs", "every backendRef resolved"}
	want := map[string][]parent{
		"GRPCRoute/shop/api":             {{"api", ok, resolved, ControllerName, "Service"}},
		"HTTPRoute/shop/web-split":       {{"web", ok, resolved, ControllerName, "Service"}},
		"HTTPRoute/shop/web-filters":     {{"web", ok, resolved, ControllerName, "Service"}},
		"HTTPRoute/shop/bad-regex":       {{"web", cond{"False", "UnsupportedValue", `spec.rules[0].matches[0].path.value: invalid regular expression "/(["`}, resolved, ControllerName, "Service"}},
		"HTTPRoute/shop/missing-backend": {{"web-canary", ok, cond{"False", "BackendNotFound", "spec.rules[0].backendRefs[0]: Service shop/nosuch does not exist"}, ControllerName, "Service"}},
		"HTTPRoute/shop/zero":            {{"zero", cond{"True", "Accepted", "spec.rules[0]: every backendRef has weight 0, so its requests get a 500"}, resolved, ControllerName, "Service"}},
		"HTTPRoute/shop/wrong-kind":      {{"zero", ok, cond{"False", "InvalidKind", `spec.rules[0].backendRefs[0]: ConfigMap "settings" is not a Service`}, ControllerName, "Service"}},
		"HTTPRoute/shop/cross":           {{"cross", ok, cond{"False", "RefNotPermitted", "Service store/db is in another namespace and no ReferenceGrant in store allows it"}, ControllerName, "Service"}},
		"HTTPRoute/shop/orphan":          {{"ghost", cond{"False", "NoMatchingParent", "Service shop/ghost does not exist"}, resolved, ControllerName, "Service"}},
	}
	st := RouteStatuses(load(t, "gamma.yaml"), Options{})
	got := map[string][]parent{}
	for _, rs := range st {
		key := rs.Kind + "/" + rs.Namespace + "/" + rs.Name
		for _, p := range rs.Parents {
			if len(p.Conditions) != 2 {
				t.Fatalf("%s: %d conditions, want Accepted and ResolvedRefs", key, len(p.Conditions))
			}
			a, r := p.Conditions[0], p.Conditions[1]
			if a.Type != "Accepted" || r.Type != "ResolvedRefs" {
				t.Fatalf("%s: conditions %s, %s", key, a.Type, r.Type)
			}
			// The message must contain what the table says; a different one shows in full.
			says := func(c metav1.Condition, want string) cond {
				if want != "" && strings.Contains(c.Message, want) {
					return cond{string(c.Status), c.Reason, want}
				}
				return cond{string(c.Status), c.Reason, c.Message}
			}
			var wa, wr string
			if w := want[key]; len(w) > 0 {
				wa, wr = w[0].Accepted.Says, w[0].Resolved.Says
			}
			got[key] = append(got[key], parent{
				Name:           string(p.ParentRef.Name),
				Accepted:       says(a, wa),
				Resolved:       says(r, wr),
				ControllerName: string(p.ControllerName),
				Kind:           string(*p.ParentRef.Kind),
			})
		}
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("route statuses (-want +got):\n%s", d)
	}
}

// TestBadRouteLeavesTheRestWorking: a route that is not accepted programs nothing, and the other
// routes of the same Service are translated as if it were absent.
func TestBadRouteLeavesTheRestWorking(t *testing.T) {
	s := load(t, "gamma.yaml")
	without := *s
	without.HTTPRoutes = nil
	for _, r := range s.HTTPRoutes {
		if r.Name != "bad-regex" {
			without.HTTPRoutes = append(without.HTTPRoutes, r)
		}
	}
	a, b := BuildMesh(s, Options{}), BuildMesh(&without, Options{})
	if len(a.Routes) != len(b.Routes) {
		t.Fatalf("%d route configurations with the bad route, %d without", len(a.Routes), len(b.Routes))
	}
	for i := range a.Routes {
		if !proto.Equal(a.Routes[i], b.Routes[i]) {
			t.Errorf("route configuration %s changes with the bad route present", a.Routes[i].GetName())
		}
	}
}

// TestGRPCRouteTouchesOnlyItsParent: routes replace the default route of exactly the virtual hosts of
// the Services they attach to (and are accepted for); every other virtual host keeps its default.
func TestGRPCRouteTouchesOnlyItsParent(t *testing.T) {
	s := load(t, "gamma.yaml")
	m := BuildMesh(s, Options{})
	for _, rc := range m.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			attached := map[string]bool{
				"api.shop.svc.cluster.local:9090": true, "web.shop.svc.cluster.local:80": true,
				"web-canary.shop.svc.cluster.local:80": true, "zero.shop.svc.cluster.local:80": true,
				"cross.shop.svc.cluster.local:80": true,
			}[vh.GetName()]
			def := len(vh.GetRoutes()) == 1 && vh.GetRoutes()[0].GetName() == "" &&
				vh.GetRoutes()[0].GetMatch().GetPrefix() == "/" && vh.GetRoutes()[0].GetRoute().GetCluster() != ""
			if attached == def {
				t.Errorf("virtual host %s: attached=%v but default route=%v", vh.GetName(), attached, def)
			}
		}
	}
}

// TestGRPCVariant: what a proxyless client gets has no path_separated_prefix (grpc-go rejects a whole
// route configuration with one) and no retry policy without retries.
func TestGRPCVariant(t *testing.T) {
	m := BuildMesh(load(t, "gamma.yaml"), Options{})
	n := 0
	for _, rc := range m.GRPCRoutes {
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				n++
				if _, sep := r.GetMatch().GetPathSpecifier().(*route.RouteMatch_PathSeparatedPrefix); sep {
					t.Errorf("%s: path_separated_prefix reaches gRPC", r.GetName())
				}
				if rp := r.GetRoute().GetRetryPolicy(); rp != nil && rp.GetNumRetries().GetValue() == 0 {
					t.Errorf("%s: retry policy without retries reaches gRPC", r.GetName())
				}
				if r.GetRoute().GetTimeout() != nil && r.GetRoute().GetMaxStreamDuration().GetGrpcTimeoutHeaderMax() == nil {
					t.Errorf("%s: request timeout without max_stream_duration for gRPC", r.GetName())
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no gRPC routes")
	}
}

// FuzzGAMMATranslate feeds arbitrary route documents (after the fixture's Services) to the file
// source and the translation: whatever the route says, translation and status must not panic, must be
// deterministic, and every resource must pass Envoy's field rules unless the route was refused.
func FuzzGAMMATranslate(f *testing.F) {
	base, err := os.ReadFile("testdata/gamma.yaml")
	if err != nil {
		f.Fatal(err)
	}
	docs := strings.Split(string(base), "\n---\n")
	var services []string
	for _, d := range docs {
		if strings.Contains(d, "apiVersion: v1\nkind: Service\n") {
			services = append(services, d)
		} else if strings.Contains(d, "gateway.networking.k8s.io") {
			f.Add(d)
		}
	}
	f.Add("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: x}\nspec: {parentRefs: [{group: \"\", kind: Service, name: web}], rules: [{matches: [{path: {type: PathPrefix, value: \"\"}}], filters: [{type: URLRewrite}], backendRefs: [{name: web, weight: -1}]}]}\n")
	f.Add("apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: x}\nspec: {parentRefs: [{group: \"\", kind: Service, name: api, sectionName: grpc}], rules: [{matches: [{method: {type: RegularExpression, service: \"(\"}}], backendRefs: [{name: api, port: 9090, weight: 0}]}]}\n")
	prefix := strings.Join(services, "\n---\n") + "\n---\n"
	f.Fuzz(func(t *testing.T, doc string) {
		objs, err := discovery.ParseObjects([]byte(prefix + doc))
		if err != nil {
			return
		}
		s := discovery.Build(objs)
		m1, m2 := BuildMesh(s, Options{}), BuildMesh(s, Options{})
		if len(m1.Routes) != len(m2.Routes) {
			t.Fatal("translation is not deterministic")
		}
		for i := range m1.Routes {
			if !proto.Equal(m1.Routes[i], m2.Routes[i]) {
				t.Fatal("translation is not deterministic")
			}
		}
		st := RouteStatuses(s, Options{})
		if !reflect.DeepEqual(st, RouteStatuses(s, Options{})) {
			t.Fatal("status is not deterministic")
		}
		for _, rc := range append(m1.Routes, m1.GRPCRoutes...) {
			if err := rc.ValidateAll(); err != nil {
				t.Fatalf("route configuration %s does not validate: %v", rc.GetName(), err)
			}
		}
	})
}

// A Builder follows changes of routes and ReferenceGrants (the output equals BuildMesh's), and keeps
// its routes when only a route's status changes (which weft-control itself writes).
func TestBuilderFollowsRoutes(t *testing.T) {
	base := load(t, "gamma.yaml")
	steps := []struct {
		name   string
		change func(s *discovery.State)
	}{
		{"a weight", func(s *discovery.State) { *s.HTTPRoutes[len(s.HTTPRoutes)-1].Spec.Rules[0].BackendRefs[0].Weight = 50 }},
		{"a route removed", func(s *discovery.State) { s.HTTPRoutes = s.HTTPRoutes[1:] }},
		{"the ReferenceGrant removed", func(s *discovery.State) { s.ReferenceGrants = nil }},
		{"the override annotation", func(s *discovery.State) {
			for i := range s.HTTPRoutes {
				delete(s.HTTPRoutes[i].Annotations, OverrideRouteAnnotation)
			}
		}},
		{"a GRPCRoute's generation", func(s *discovery.State) { s.GRPCRoutes[0].Generation++ }},
	}
	b := NewBuilder(Options{})
	check := func(step string, s *discovery.State) *Mesh {
		t.Helper()
		got, want := b.Build(s), BuildMesh(s, Options{})
		if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Errorf("%s: Builder differs from BuildMesh (-want +got):\n%s", step, diff)
		}
		return got
	}
	for _, step := range steps {
		check(step.name+" (the base before)", base)
		s := clone(t, base)
		step.change(s)
		check(step.name, s)
	}
	before := check("back to the base", base)
	s := clone(t, base)
	s.HTTPRoutes[0].Status.Parents = RouteStatuses(base, Options{})[0].Parents
	s.HTTPRoutes[0].ResourceVersion = "42"
	after := check("a status written", s)
	for i := range after.Routes {
		if after.Routes[i] != before.Routes[i] && !strings.HasPrefix(after.Routes[i].GetName(), "inbound|") {
			t.Errorf("route configuration %s rebuilt after a status-only change", after.Routes[i].GetName())
		}
	}
}
