package discovery

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/weftmesh/weft/discovery/authz"
)

// TestPoliciesFromFile: the file source reads AuthorizationPolicies; an invalid one is kept with its
// error and fails closed (ALLOW without rules; DENY keeps its action), is warned about once, and
// PoliciesFor selects by namespace and labels.
func TestPoliciesFromFile(t *testing.T) {
	objs, err := ParseObjects([]byte(`apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ok, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  rules: [{from: [{source: {principals: [cluster.local/ns/web/sa/fe]}}]}]
---
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: bad-allow, namespace: shop}
spec:
  rules: [{from: [{source: {principals: ["a*b"]}}]}]
---
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: bad-deny, namespace: shop}
spec:
  action: deny
  rules: [{to: [{operation: {ports: ["x"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: istio, namespace: shop}
spec: {}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Ignored) != 1 || !strings.Contains(objs.Ignored[0], "istio") {
		t.Errorf("ignored %v, want Istio's AuthorizationPolicy (another group) ignored", objs.Ignored)
	}
	s := Build(objs)
	if len(s.AuthorizationPolicies) != 3 {
		t.Fatalf("%d policies, want 3", len(s.AuthorizationPolicies))
	}
	byName := map[string]AuthorizationPolicy{}
	for _, p := range s.AuthorizationPolicies {
		byName[p.Name] = p
	}
	if p := byName["ok"]; p.Error != "" || p.Spec.Rules[0].From[0].Source.Principals[0] != "spiffe://cluster.local/ns/web/sa/fe" {
		t.Errorf("ok: %+v", p)
	}
	if p := byName["bad-allow"]; !strings.Contains(p.Error, "spec.rules[0].from[0].source.principals[0]") || p.Spec.Action != authz.ActionAllow || len(p.Spec.Rules) != 0 {
		t.Errorf("bad-allow does not fail closed: %+v", p)
	}
	if p := byName["bad-deny"]; p.Error == "" || p.Spec.Action != authz.ActionDeny {
		t.Errorf("bad-deny does not fail closed: %+v", p)
	}
	api := Pod{Namespace: "shop", Name: "api-0", Labels: map[string]string{"app": "api"}}
	if got := s.PoliciesFor(api); len(got) != 3 {
		t.Errorf("api-0 is selected by %d policies, want 3", len(got))
	}
	if got := s.PoliciesFor(Pod{Namespace: "shop", Name: "db-0"}); len(got) != 2 {
		t.Errorf("db-0 is selected by %d policies, want 2 (the ones without a selector)", len(got))
	}
	if got := s.PoliciesFor(Pod{Namespace: "other", Name: "api-0", Labels: api.Labels}); len(got) != 0 {
		t.Errorf("a pod of another namespace is selected by %d policies", len(got))
	}

	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	WarnInvalidPolicies(log, s, nil)
	WarnInvalidPolicies(log, s, s)
	if n := strings.Count(buf.String(), "AuthorizationPolicy is not valid"); n != 2 {
		t.Errorf("%d warnings, want one per invalid policy, not repeated:\n%s", n, buf.String())
	}
}

// TestPolicyExample: deploy/examples/authorization-policy.yaml loads, and its policies are valid.
func TestPolicyExample(t *testing.T) {
	s, err := LoadFile("../deploy/examples/authorization-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.AuthorizationPolicies) != 2 || len(s.InvalidPolicies()) != 0 {
		t.Errorf("policies %+v, want 2 valid ones", s.AuthorizationPolicies)
	}
	if ns, _ := s.Namespace("vault"); ns.Annotations["config.weft.io/default-inbound-policy"] != "deny" {
		t.Errorf("namespace vault: %+v", ns)
	}
}
