package discovery

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
)

// FuzzParseObjects feeds arbitrary bytes to the discovery file parser. Whatever the input, it must not
// panic; a rejection names the document ("document N..."); an accepted input builds a State, the same
// State twice (Build is deterministic), whose Service ports are port numbers. The seeds are the example
// files and one document of each kind with the usual mistakes.
func FuzzParseObjects(f *testing.F) {
	for _, name := range []string{"../deploy/examples/echo.yaml", "../deploy/examples/demo.yaml"} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		"apiVersion: v1\nkind: Namespace\nmetadata: {name: web, labels: {a: b}, annotations: {weft.io/inject: enabled}}\n",
		"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}, {name: b, port: 81, targetPort: web}]}\n",
		"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{name: a, port: 80}, {name: b, portz: \"81\"}]}\n",
		"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, labels: {kubernetes.io/service-name: a}}\naddressType: IPv6\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [\"fd00::1\"], conditions: {ready: true, terminating: false}, zone: z, nodeName: n, hostname: h, targetRef: {kind: Pod, name: p}}]\n",
		"apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x, labels: {app: web}}\nspec: {serviceAccountName: web, containers: [{name: weft-proxy, image: i}]}\nstatus: {podIP: 10.44.0.3}\n",
		"---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\nnull\n",
		"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {parentRefs: [{group: \"\", kind: Service, name: a, port: 80}], rules: [{matches: [{path: {type: PathPrefix, value: /x}, headers: [{name: h, value: v}]}], backendRefs: [{name: a, port: 80, weight: 9}]}]}\n",
		"apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec: {rules: [{matches: [{method: {service: s, method: m}}]}]}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\nmetadata: {name: rg}\nspec: {from: [{group: g, kind: HTTPRoute, namespace: n}], to: [{group: \"\", kind: Service}]}\n",
		"a: [b\n",
		"apiVersion: v1\nmetadata: {name: a}\n",
		"[1, 2]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := ParseObjects(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "document ") {
				t.Fatalf("error does not name the document: %v", err)
			}
			return
		}
		st := Build(objs)
		if st == nil {
			t.Fatal("Build returned nil for accepted objects")
		}
		if again := Build(objs); !reflect.DeepEqual(st, again) {
			t.Fatalf("Build is not deterministic:\n%+v\n%+v", st, again)
		}
		for _, s := range st.Services {
			for _, p := range s.Ports {
				if p.Port < 1 || p.Port > 65535 {
					t.Fatalf("accepted Service %s with port %d", s.Key(), p.Port)
				}
			}
		}
		if _, err := json.Marshal(st); err != nil {
			t.Fatalf("State does not marshal: %v", err)
		}
	})
}
