package kube

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/discovery/authz"
)

// TestPolicies: with the source running before the AuthorizationPolicy CRD exists, discovery works
// (the first State comes, without policies); then the chart's CRD is installed, the real apiserver
// accepts a good policy and refuses bad ones with the field named, and the running source picks the
// good one up, validated, and drops it when it is deleted.
func TestPolicies(t *testing.T) {
	env := kubeenv.Get(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := "kube-authz"
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	var l latest
	src := &Source{Client: env.Client, Dynamic: dyn, PolicyPoll: 100 * time.Millisecond, Quiet: 20 * time.Millisecond, Max: 200 * time.Millisecond}
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, l.publish) }()
	defer func() { cancel(); <-done }()
	l.waitFor(t, "a first state without the CRD", func(s *discovery.State) bool {
		_, ok := s.Namespace(ns)
		return ok && len(s.AuthorizationPolicies) == 0
	})

	crd, err := os.ReadFile("../../deploy/charts/weft/templates/authorizationpolicy-crd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	kctx, kcancel := context.WithTimeout(ctx, 60*time.Second)
	defer kcancel()
	if out, err := env.Kubectl(kctx, strings.NewReader(string(crd)), "apply", "-f", "-"); err != nil {
		t.Fatalf("installing the CRD: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		c, cc := context.WithTimeout(context.Background(), 60*time.Second)
		defer cc()
		_, _ = env.Kubectl(c, nil, "delete", "crd", "authorizationpolicies.policy.weft.io", "--wait=false")
	})
	if out, err := env.Kubectl(kctx, nil, "wait", "--for=condition=Established", "--timeout=30s", "crd/authorizationpolicies.policy.weft.io"); err != nil {
		t.Fatalf("CRD not established: %v\n%s", err, out)
	}

	good := `apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: kube-authz}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/web/sa/frontend], namespaces: ["mon*"]}}]
    to: [{operation: {ports: ["8080"], methods: [GET], paths: [/api/*]}}]
`
	if out, err := env.Kubectl(kctx, strings.NewReader(good), "apply", "-f", "-"); err != nil {
		t.Fatalf("the apiserver refused a good policy: %v\n%s", err, out)
	}
	for _, bad := range []struct{ name, spec, want string }{
		{"action", `action: MAYBE`, "spec.action"},
		{"port", `rules: [{to: [{operation: {ports: ["70000"]}}]}]`, "ports[0]"},
		{"star", `rules: [{from: [{source: {principals: ["a*b"]}}]}]`, "principals[0]"},
		{"method", `rules: [{to: [{operation: {methods: ["GET POST"]}}]}]`, "methods[0]"},
		{"unknown field", `rules: [{when: [{key: request.auth.claims, values: [x]}]}]`, "when"},
	} {
		doc := "apiVersion: policy.weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: kube-authz}\nspec:\n  " + bad.spec + "\n"
		out, err := env.Kubectl(kctx, strings.NewReader(doc), "apply", "-f", "-")
		if err == nil {
			t.Errorf("%s: the apiserver accepted %q: %s", bad.name, bad.spec, out)
		} else if !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: the error does not name %s: %v", bad.name, bad.want, err)
		}
	}
	// Istio's fields weft does not implement are refused even from a client without strict field
	// validation (which would otherwise see them pruned silently, and an ALLOW rule allow more).
	gvr := schema.GroupVersionResource{Group: "policy.weft.io", Version: "v1alpha1", Resource: "authorizationpolicies"}
	for _, bad := range []struct {
		name string
		rule map[string]any
	}{
		{"when", map[string]any{"when": []any{map[string]any{"key": "request.auth.claims[iss]", "values": []any{"x"}}}}},
		{"hosts", map[string]any{"to": []any{map[string]any{"operation": map[string]any{"hosts": []any{"a.example"}}}}}},
		{"notHosts", map[string]any{"to": []any{map[string]any{"operation": map[string]any{"notHosts": []any{"a.example"}}}}}},
		{"ipBlocks", map[string]any{"from": []any{map[string]any{"source": map[string]any{"ipBlocks": []any{"10.0.0.0/8"}}}}}},
		{"remoteIpBlocks", map[string]any{"from": []any{map[string]any{"source": map[string]any{"remoteIpBlocks": []any{"10.0.0.0/8"}}}}}},
		{"notRequestPrincipals", map[string]any{"from": []any{map[string]any{"source": map[string]any{"notRequestPrincipals": []any{"*"}}}}}},
	} {
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "policy.weft.io/v1alpha1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "unsupported", "namespace": ns},
			"spec":     map[string]any{"rules": []any{bad.rule}},
		}}
		_, err := dyn.Resource(gvr).Namespace(ns).Create(kctx, obj, metav1.CreateOptions{FieldValidation: "Ignore"})
		if err == nil {
			_ = dyn.Resource(gvr).Namespace(ns).Delete(kctx, "unsupported", metav1.DeleteOptions{})
			t.Errorf("%s: the apiserver accepted it (without strict field validation)", bad.name)
		} else if !strings.Contains(err.Error(), bad.name) || !strings.Contains(err.Error(), "not supported by weft") {
			t.Errorf("%s: the error does not say it is unsupported: %v", bad.name, err)
		}
	}

	l.waitFor(t, "the policy in the State", func(s *discovery.State) bool { return len(s.AuthorizationPolicies) == 1 })
	l.mu.Lock()
	got := l.st.AuthorizationPolicies[0]
	l.mu.Unlock()
	if got.Key() != ns+"/allow-frontend" || got.Error != "" || got.Spec.Action != authz.ActionAllow ||
		got.Spec.Rules[0].From[0].Source.Principals[0] != "spiffe://cluster.local/ns/web/sa/frontend" {
		t.Errorf("policy in the State: %+v", got)
	}
	if out, err := env.Kubectl(kctx, nil, "delete", "-n", ns, "authorizationpolicy", "allow-frontend"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	l.waitFor(t, "the policy gone from the State", func(s *discovery.State) bool { return len(s.AuthorizationPolicies) == 0 })
}
