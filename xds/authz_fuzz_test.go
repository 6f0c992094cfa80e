package xds

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/discovery/authz"
)

// FuzzAuthzTranslation: any AuthorizationPolicy spec (as YAML) translates without a panic, and the
// inbound listener it gives passes go-control-plane's validation of Envoy's constraints.
func FuzzAuthzTranslation(f *testing.F) {
	for _, seed := range []string{
		"{}",
		"action: DENY",
		"selector: {matchLabels: {app: api}}\nrules: [{}]",
		"rules: [{from: [{source: {principals: ['*', 'spiffe://td/ns/a/sa/b', 'cluster.local/ns/x/*', '*/sa/y'], namespaces: [web, 'mon*', '*']}}], to: [{operation: {ports: ['80', '8080'], paths: [/a, /b/*, '*.css', '*'], methods: [GET, '*']}}]}]",
		"action: DENY\nrules: [{to: [{operation: {notPaths: [/x], notMethods: [POST], notPorts: ['1']}}], from: [{source: {notPrincipals: [a], notNamespaces: [b]}}]}]",
		"rules: [{from: [{source: {principals: ['a*b']}}]}]",
		"action: DENY\nrules: [{to: [{operation: {ports: ['0']}}]}]",
		"action: LOG",
	} {
		f.Add([]byte(seed), "")
	}
	f.Fuzz(func(t *testing.T, spec []byte, defaultPolicy string) {
		var s authz.Spec
		if err := yaml.Unmarshal(spec, &s); err != nil {
			return
		}
		st := discovery.Build(discovery.Objects{AuthorizationPolicies: []*authz.AuthorizationPolicy{
			{Spec: s, ObjectMeta: objectMeta("n", "p")},
		}})
		ann := map[string]string{}
		if defaultPolicy != "" {
			ann[DefaultInboundPolicyAnnotation] = defaultPolicy
		}
		st.Namespaces = []discovery.Namespace{{Name: "n", Annotations: ann}}
		st.Pods = []discovery.Pod{{Namespace: "n", Name: "pod", HasProxy: true, Labels: map[string]string{"app": "api"},
			Ports: []discovery.ContainerPort{{Port: 80, Protocol: "TCP"}, {Port: 8080, Protocol: "TCP"}}}}
		st.Services = []discovery.Service{{Namespace: "n", Name: "api", ClusterIP: "10.0.0.1",
			Ports:     []discovery.ServicePort{{Name: "http", Port: 8080, Protocol: "TCP"}},
			Endpoints: []discovery.Endpoint{{Address: "10.1.0.1", Pod: "pod", Ports: []discovery.EndpointPort{{Name: "http", Port: 8080}}}}}}
		for _, strict := range []bool{false, true} {
			ports := InboundPorts(st, Proxy{Namespace: "n", PodName: "pod"}, Options{Strict: strict})
			l := InboundListener(ports)
			if err := l.ValidateAll(); err != nil {
				t.Fatalf("inbound listener does not validate: %v", err)
			}
		}
	})
}

func objectMeta(ns, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: ns, Name: name}
}
