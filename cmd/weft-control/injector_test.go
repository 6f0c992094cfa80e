package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/deploy/inject"
	"github.com/weftmesh/weft/identity"
)

func TestMain(m *testing.M) { os.Exit(kubeenv.Main(m)) }

const injectorConfigYAML = `proxyImage: ghcr.io/weftmesh/weft-proxy:v9.9.9
controlPlaneAddr: weft-control.weft.svc:15012
trustDomain: cluster.local
logLevel: info
cni: false
nativeSidecars: true
proxyUID: 2102
version: "v9.9.9"
resources:
  requests: {cpu: 10m, memory: 20Mi}
  limits: {memory: 64Mi}
`

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestInjectorStartupProblems: each wrong injector flag is one clear line, before anything listens.
func TestInjectorStartupProblems(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	if err := identity.Bootstrap(caDir, identity.BootstrapOptions{TrustDomain: "cluster.local"}); err != nil {
		t.Fatal(err)
	}
	tokens := writeTemp(t, "tokens", "t,default,web\n")
	good := writeTemp(t, "config.yaml", injectorConfigYAML)
	for _, tc := range []struct {
		name string
		edit func(*config)
		want string
	}{
		{"no config", func(c *config) {}, "--injector-addr needs --injector-config"},
		{"missing config", func(c *config) { c.injector.config = "/nonexistent/config.yaml" }, "--injector-config: open /nonexistent/config.yaml"},
		{"bad config", func(c *config) {
			c.injector.config = writeTemp(t, "bad.yaml", strings.Replace(injectorConfigYAML, "logLevel: info", "logLevel: loud", 1))
		}, `bad.yaml: logLevel "loud": want debug, info, warn or error`},
		{"no identity", func(c *config) { c.injector.config = good }, "--injector-addr needs --identity-dir"},
		{"local mode", func(c *config) {
			c.injector.config = good
			c.identity = identityConfig{addr: freeAddr(t), dir: caDir, tokens: tokens, leaf: time.Hour}
		}, "--injector-addr needs Kubernetes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := baseConfig(t)
			c.discoveryFile = "../../deploy/examples/echo.yaml"
			c.injector = injectorConfig{addr: freeAddr(t), certDNS: []string{"weft-injector.weft.svc"}}
			tc.edit(&c)
			err := run(context.Background(), c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

// TestInjectorServesAdmission runs weft-control against a real apiserver with the injector on and
// sends it AdmissionReviews as the apiserver would: over TLS verified against the mesh's trust anchors
// for the name weft-injector.weft.svc. A Pod in a namespace annotated weft.io/inject=enabled (read
// from the cluster) gets the proxy, with the CA's anchors as TRUST_ANCHORS; a Pod with a bad
// annotation is admitted unchanged with a warning; a Pod elsewhere is left alone.
func TestInjectorServesAdmission(t *testing.T) {
	env := kubeenv.Get(t)
	env.CreateNamespace(t, "inj-meshed", map[string]string{inject.AnnotationInject: inject.Enabled})
	env.CreateNamespace(t, "inj-plain", nil)

	c, anchors := injectorSetup(t, env)
	startRun(t, c)

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(anchors)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "weft-injector.weft.svc", MinVersion: tls.VersionTLS12},
	}}
	owner := metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5d8f", UID: "rs-uid-1", Controller: ptr.To(true)}
	review := func(ns string, ann map[string]string) (*corev1.Pod, *admissionv1.AdmissionResponse) {
		t.Helper()
		pod := &corev1.Pod{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{GenerateName: "web-", Namespace: ns, Annotations: ann, OwnerReferences: []metav1.OwnerReference{owner}},
			Spec:       corev1.PodSpec{ServiceAccountName: "default", Containers: []corev1.Container{{Name: "web", Image: "web:1"}}},
		}
		raw, err := json.Marshal(pod)
		if err != nil {
			t.Fatal(err)
		}
		body, err := json.Marshal(admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{
				UID: types.UID("uid-" + ns), Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
				Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Namespace: ns,
				Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw},
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		var resp *http.Response
		deadline := time.Now().Add(20 * time.Second)
		for {
			resp, err = client.Post("https://"+c.injector.addr+inject.WebhookPath, "application/json", bytes.NewReader(body))
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("the injector does not answer over TLS as weft-injector.weft.svc: %v", err)
		}
		defer resp.Body.Close()
		var out admissionv1.AdmissionReview
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Response == nil {
			t.Fatalf("status %s: decoding the AdmissionReview: %v", resp.Status, err)
		}
		if out.Response.UID != types.UID("uid-"+ns) || !out.Response.Allowed {
			t.Fatalf("response %+v: want allowed with the request's UID", out.Response)
		}
		if out.Response.Patch == nil {
			return nil, out.Response
		}
		p, err := jsonpatch.DecodePatch(out.Response.Patch)
		if err != nil {
			t.Fatal(err)
		}
		patched, err := p.Apply(raw)
		if err != nil {
			t.Fatal(err)
		}
		var got corev1.Pod
		if err := json.Unmarshal(patched, &got); err != nil {
			t.Fatal(err)
		}
		return &got, out.Response
	}

	pod, _ := review("inj-meshed", nil)
	if pod == nil || !inject.HasProxy(&pod.Spec) {
		t.Fatal("a Pod in a namespace with weft.io/inject=enabled was not injected")
	}
	got := ""
	for _, e := range pod.Spec.InitContainers[1].Env {
		if e.Name == "TRUST_ANCHORS" {
			got = e.Value
		}
	}
	if got != string(anchors) {
		t.Errorf("the proxy's TRUST_ANCHORS is %q, want the CA's ca.crt", got)
	}
	if pod, resp := review("inj-meshed", map[string]string{inject.AnnotationSkipInboundPorts: "ssh"}); pod != nil || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], inject.AnnotationSkipInboundPorts) {
		t.Errorf("bad annotation: patched %v, warnings %q: want no patch and a warning naming the annotation", pod != nil, resp.Warnings)
	}
	// The owner of a Pod admitted without the proxy gets a Warning Event saying why (kubectl describe rs).
	deadline := time.Now().Add(20 * time.Second)
	for {
		evs, err := env.Client.CoreV1().Events("inj-meshed").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=web-5d8f"})
		if err == nil && len(evs.Items) > 0 {
			ev := evs.Items[0]
			if ev.Reason != ReasonNotInjected || ev.Type != corev1.EventTypeWarning || ev.InvolvedObject.Kind != "ReplicaSet" || !strings.Contains(ev.Message, inject.AnnotationSkipInboundPorts) {
				t.Errorf("event %s %s on %s: %q", ev.Type, ev.Reason, ev.InvolvedObject.Kind, ev.Message)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no Event on the Pod's ReplicaSet (last error %v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if pod, _ := review("inj-plain", nil); pod != nil {
		t.Error("a Pod in a plain namespace was injected")
	}
	if pod, _ := review("inj-plain", map[string]string{inject.AnnotationInject: inject.Enabled}); pod == nil {
		t.Error("a Pod annotated weft.io/inject=enabled in a plain namespace was not injected")
	}
}
