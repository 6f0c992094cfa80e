package discovery

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestFileSourceReadsGatewayKinds: the file source reads HTTPRoutes, GRPCRoutes and ReferenceGrants
// (sorted, in the document's namespace or default), refuses a misspelt field with its path, and
// leaves a kind of the same name from another API group alone.
func TestFileSourceReadsGatewayKinds(t *testing.T) {
	objs, err := ParseObjects([]byte(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b, namespace: shop}
spec: {parentRefs: [{group: "", kind: Service, name: web}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a}
spec: {rules: [{backendRefs: [{name: web, port: 80, weight: 3}]}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g}
spec: {rules: [{matches: [{method: {service: echo.Echo}}]}]}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: rg, namespace: store}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service}]
---
apiVersion: example.com/v1
kind: HTTPRoute
metadata: {name: other}
`))
	if err != nil {
		t.Fatal(err)
	}
	s := Build(objs)
	var got []string
	for _, r := range s.HTTPRoutes {
		got = append(got, "HTTPRoute "+r.Namespace+"/"+r.Name)
	}
	for _, r := range s.GRPCRoutes {
		got = append(got, "GRPCRoute "+r.Namespace+"/"+r.Name)
	}
	for _, g := range s.ReferenceGrants {
		got = append(got, "ReferenceGrant "+g.Namespace+"/"+g.Name)
	}
	want := []string{"HTTPRoute default/a", "HTTPRoute shop/b", "GRPCRoute default/g", "ReferenceGrant store/rg"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("objects (-want +got):\n%s", d)
	}
	if w := *s.HTTPRoutes[0].Spec.Rules[0].BackendRefs[0].Weight; w != 3 {
		t.Errorf("weight %d, want 3", w)
	}
	if !s.ReferenceGrantAllows("gateway.networking.k8s.io", "HTTPRoute", "shop", "", "Service", "store", "db") {
		t.Error("the ReferenceGrant does not allow shop's HTTPRoutes to reach store/db")
	}
	if s.ReferenceGrantAllows("gateway.networking.k8s.io", "GRPCRoute", "shop", "", "Service", "store", "db") {
		t.Error("the ReferenceGrant allows a GRPCRoute it does not name")
	}
	if len(objs.Ignored) != 1 || !strings.Contains(objs.Ignored[0], "HTTPRoute default/other") {
		t.Errorf("ignored %v, want the example.com HTTPRoute", objs.Ignored)
	}

	_, err = ParseObjects([]byte("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: a}\nspec: {rules: [{backendRefs: [{name: web, prot: 80}]}]}\n"))
	if err == nil || !strings.Contains(err.Error(), "document 1 (HTTPRoute default/a): spec.rules[0].backendRefs[0].prot: unknown field") {
		t.Errorf("error %v, want it to name document 1 and spec.rules[0].backendRefs[0].prot", err)
	}
}
