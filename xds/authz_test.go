package xds

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/weftmesh/weft/discovery"
)

// TestAuthzGolden: the inbound listener of each pod of testdata/authz.yaml, with its RBAC filters,
// against testdata/authz.<pod>.golden.json (go test ./xds -update rewrites them). The passthrough
// (default) chain carries the network RBAC too, also on a pod that declares no port (portless-0).
func TestAuthzGolden(t *testing.T) {
	s := load(t, "authz.yaml")
	for _, pod := range []string{"shop/api-0", "shop/bad-0", "vault/safe-0", "vault/portless-0"} {
		ns, name, _ := cutSlash(pod)
		t.Run(pod, func(t *testing.T) {
			r := Translate(s, Proxy{Namespace: ns, PodName: name, Kind: KindWeft}, Options{Strict: true})
			var in []byte
			for _, l := range r.Listeners {
				if l.GetName() == InboundListenerName {
					b, err := protojson.Marshal(l)
					if err != nil {
						t.Fatal(err)
					}
					var buf bytes.Buffer
					if err := json.Indent(&buf, b, "", "  "); err != nil {
						t.Fatal(err)
					}
					buf.WriteByte('\n')
					in = buf.Bytes()
				}
			}
			path := filepath.Join("testdata", "authz."+name+".golden.json")
			if *update {
				if err := os.WriteFile(path, in, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./xds -update to write it)", err)
			}
			if d := cmp.Diff(string(want), string(in)); d != "" {
				t.Errorf("inbound listener differs from %s (-want +got); if intended, run go test ./xds -update\n%s", path, d)
			}
		})
	}
}

func cutSlash(s string) (string, string, bool) {
	for i := range s {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// TestAuthzKeys: pods with the same ports but different policies get different listener keys (so they
// do not share an inbound listener), and a pod without policies has no Authz at all.
func TestAuthzKeys(t *testing.T) {
	s := load(t, "authz.yaml")
	key := func(ns, pod string) string {
		ports := InboundPorts(s, Proxy{Namespace: ns, PodName: pod, Kind: KindWeft}, Options{Strict: true})
		if len(ports) == 0 {
			t.Fatalf("%s/%s: no inbound ports", ns, pod)
		}
		return ports[0].Key()
	}
	if a, b := key("shop", "api-0"), key("shop", "bad-0"); a == b {
		t.Errorf("api-0 and bad-0 share the listener key %q despite different policies", a)
	}
	m := load(t, "mesh.yaml")
	for _, p := range InboundPorts(m, webSidecar, Options{}) {
		if p.Authz != nil {
			t.Errorf("port %d of a pod without policies has RBAC", p.Port)
		}
	}
}

// TestAuthzDefaultDeny: the annotation on the pod wins over its namespace, and a value that is not
// "allow" fails closed.
func TestAuthzDefaultDeny(t *testing.T) {
	for _, tc := range []struct {
		ns, pod  string
		wantRBAC bool
	}{
		{"", "", false},
		{"deny", "", true},
		{"deny", "allow", false},
		{"", "deny", true},
		{"", "Deny", true},
		{"", "alow", true}, // a typo denies
	} {
		s := &discovery.State{
			Namespaces: []discovery.Namespace{{Name: "n", Annotations: annot(tc.ns)}},
			Pods:       []discovery.Pod{{Namespace: "n", Name: "p", HasProxy: true, Annotations: annot(tc.pod), Ports: []discovery.ContainerPort{{Port: 80, Protocol: "TCP"}}}},
		}
		ports := InboundPorts(s, Proxy{Namespace: "n", PodName: "p"}, Options{})
		got := ports[0].Authz != nil
		if got != tc.wantRBAC {
			t.Errorf("namespace %q, pod %q: RBAC %v, want %v", tc.ns, tc.pod, got, tc.wantRBAC)
		}
		if got && (ports[0].Authz.Allow == nil || len(ports[0].Authz.Allow.GetPolicies()) != 0) {
			t.Errorf("namespace %q, pod %q: default deny is not an ALLOW filter without policies: %v", tc.ns, tc.pod, ports[0].Authz.Allow)
		}
	}
}

func annot(v string) map[string]string {
	if v == "" {
		return nil
	}
	return map[string]string{DefaultInboundPolicyAnnotation: v}
}
