package inject

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const testConfigYAML = `proxyImage: ghcr.io/weftmesh/weft-proxy:v1.2.3
controlPlaneAddr: weft-control.weft.svc:15012
trustDomain: cluster.local
trustAnchorsPEM: |
  -----BEGIN CERTIFICATE-----
  MIIBfake
  -----END CERTIFICATE-----
logLevel: info
cni: false
nativeSidecars: true
proxyUID: 2102
version: "v1.2.3"
resources:
  requests: {cpu: 10m, memory: 20Mi}
  limits: {memory: 64Mi}
`

func testConfig(t *testing.T) Config {
	t.Helper()
	c, err := ParseConfig([]byte(testConfigYAML))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// appPod is a Pod as a ReplicaSet creates it: no name yet, an init container and a volume of its own.
func appPod(ann map[string]string) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "web-7d4b9c-", Namespace: "shop",
			Labels:      map[string]string{"app": "web"},
			Annotations: ann,
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web",
			InitContainers:     []corev1.Container{{Name: "migrate", Image: "shop/migrate:1"}},
			Containers: []corev1.Container{{
				Name: "web", Image: "shop/web:1",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		},
	}
}

var enabledNS = map[string]string{AnnotationInject: Enabled}

// TestInject runs the mutation on each kind of Pod and compares with testdata/<name>.yaml (go test
// -update rewrites them): the mutated Pod, or why it was left alone, or the annotation error. It also
// checks that the JSON patch the webhook would send, applied to the Pod, gives the same mutated Pod.
func TestInject(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pod     *corev1.Pod
		ns      map[string]string
		edit    func(*Config)
		inject  bool   // want the proxy
		wantErr string // want an annotation error containing this
	}{
		{name: "default", pod: appPod(nil), ns: enabledNS, inject: true},
		{name: "pod-enabled", pod: appPod(map[string]string{AnnotationInject: Enabled}), inject: true},
		{name: "classic", pod: appPod(nil), ns: enabledNS, edit: func(c *Config) { c.NativeSidecars = false }, inject: true},
		{name: "classic-no-await", pod: appPod(map[string]string{AnnotationProxyAwait: Disabled}), ns: enabledNS, edit: func(c *Config) { c.NativeSidecars = false }, inject: true},
		{name: "cni", pod: appPod(nil), ns: enabledNS, edit: func(c *Config) { c.CNI = true }, inject: true},
		{name: "annotations", pod: appPod(map[string]string{
			AnnotationSkipInboundPorts:   "22, 8000-8100",
			AnnotationSkipOutboundPorts:  "5432",
			AnnotationSkipSubnets:        "10.0.0.0/8,169.254.169.254",
			AnnotationOpaquePorts:        "3306",
			AnnotationProxyLogLevel:      "debug",
			AnnotationProxyCPURequest:    "50m",
			AnnotationProxyMemoryRequest: "32Mi",
			AnnotationProxyMemoryLimit:   "128Mi",
		}), ns: enabledNS, inject: true},
		{name: "namespace-options", pod: appPod(map[string]string{AnnotationProxyLogLevel: "warn"}), ns: map[string]string{
			AnnotationInject: Enabled, AnnotationProxyLogLevel: "debug", AnnotationSkipOutboundPorts: "25",
		}, inject: true},
		{name: "tracing", pod: appPod(nil), ns: enabledNS, edit: func(c *Config) {
			c.Tracing = &Tracing{Collector: "otel-collector.observability:4318", Sampling: 0.25}
		}, inject: true},
		{name: "no-anchors", pod: appPod(nil), ns: enabledNS, edit: func(c *Config) { c.TrustAnchorsPEM = "" }, inject: true},
		{name: "already-injected", pod: injected(t), ns: enabledNS},
		{name: "pod-disabled", pod: appPod(map[string]string{AnnotationInject: Disabled}), ns: enabledNS},
		{name: "namespace-disabled", pod: appPod(nil), ns: map[string]string{AnnotationInject: Disabled}},
		{name: "not-enabled", pod: appPod(nil)},
		{name: "host-network", pod: func() *corev1.Pod { p := appPod(nil); p.Spec.HostNetwork = true; return p }(), ns: enabledNS},
		{name: "bad-ports", pod: appPod(map[string]string{AnnotationSkipInboundPorts: "22,http"}), ns: enabledNS, wantErr: AnnotationSkipInboundPorts},
		{name: "bad-subnet", pod: appPod(map[string]string{AnnotationSkipSubnets: "10.0.0.0/33"}), ns: enabledNS, wantErr: AnnotationSkipSubnets},
		{name: "ipv6-subnet", pod: appPod(map[string]string{AnnotationSkipSubnets: "10.0.0.0/8, fd00::/8"}), ns: enabledNS, wantErr: AnnotationSkipSubnets},
		{name: "bad-opaque", pod: appPod(map[string]string{AnnotationOpaquePorts: "0"}), ns: enabledNS, wantErr: AnnotationOpaquePorts},
		{name: "bad-await", pod: appPod(map[string]string{AnnotationProxyAwait: "yes"}), ns: enabledNS, wantErr: AnnotationProxyAwait},
		{name: "bad-log-level", pod: appPod(map[string]string{AnnotationProxyLogLevel: "trace"}), ns: enabledNS, wantErr: AnnotationProxyLogLevel},
		{name: "bad-quantity", pod: appPod(map[string]string{AnnotationProxyMemoryLimit: "lots"}), ns: enabledNS, wantErr: AnnotationProxyMemoryLimit},
		{name: "request-above-limit", pod: appPod(map[string]string{AnnotationProxyMemoryRequest: "100Mi"}), ns: enabledNS, wantErr: AnnotationProxyMemoryRequest},
		{name: "bad-inject", pod: appPod(map[string]string{AnnotationInject: "true"}), ns: enabledNS, wantErr: AnnotationInject},
		{name: "bad-namespace-inject", pod: appPod(nil), ns: map[string]string{AnnotationInject: "yes"}, wantErr: AnnotationInject},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			if tc.edit != nil {
				tc.edit(&cfg)
			}
			orig := tc.pod.DeepCopy()
			pod := tc.pod.DeepCopy()
			res, err := Inject(pod, tc.ns, cfg)
			var golden any
			switch {
			case tc.wantErr != "":
				var ae *AnnotationError
				if !errors.As(err, &ae) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want an annotation error naming %s", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error is not one line: %q", err)
				}
				if diff := cmp.Diff(orig, pod); diff != "" {
					t.Errorf("the Pod changed though injection failed (-before +after):\n%s", diff)
				}
				golden = map[string]any{"error": err.Error()}
			case err != nil:
				t.Fatal(err)
			case res.Injected != tc.inject:
				t.Fatalf("injected = %v (%s), want %v", res.Injected, res.Reason, tc.inject)
			case !res.Injected:
				if diff := cmp.Diff(orig, pod); diff != "" {
					t.Errorf("the Pod changed though not injected (-before +after):\n%s", diff)
				}
				golden = map[string]any{"notInjected": res.Reason}
			default:
				checkShape(t, pod, cfg)
				checkPatch(t, orig, tc.ns, cfg, pod)
				golden = map[string]any{"pod": pod}
			}
			compareGolden(t, filepath.Join("testdata", tc.name+".yaml"), golden)
		})
	}
}

// injected is appPod after injection.
func injected(t *testing.T) *corev1.Pod {
	pod := appPod(nil)
	if _, err := Inject(pod, enabledNS, testConfig(t)); err != nil {
		t.Fatal(err)
	}
	return pod
}

// checkShape asserts the contract others rely on, independently of the golden files.
func checkShape(t *testing.T, pod *corev1.Pod, cfg Config) {
	t.Helper()
	if pod.Labels[LabelControlPlaneNS] != "weft" || pod.Annotations[AnnotationProxyVersion] != cfg.Version {
		t.Errorf("labels %v annotations %v: want %s=weft and %s=%s", pod.Labels, pod.Annotations, LabelControlPlaneNS, AnnotationProxyVersion, cfg.Version)
	}
	var proxy *corev1.Container
	first := pod.Spec.InitContainers[0].Name
	if cfg.CNI && first != ValidateContainer || !cfg.CNI && first != InitContainer {
		t.Errorf("first init container %s (cni %v)", first, cfg.CNI)
	}
	if cfg.NativeSidecars {
		proxy = &pod.Spec.InitContainers[1]
		if proxy.RestartPolicy == nil || *proxy.RestartPolicy != corev1.ContainerRestartPolicyAlways || proxy.StartupProbe == nil {
			t.Errorf("native sidecar without restartPolicy Always or startupProbe: %+v", proxy)
		}
	} else {
		proxy = &pod.Spec.Containers[0]
	}
	if proxy.Name != ProxyContainer || *proxy.SecurityContext.RunAsUser != cfg.ProxyUID {
		t.Errorf("proxy container %s runs as %d", proxy.Name, *proxy.SecurityContext.RunAsUser)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range proxy.Env {
		env[e.Name] = e
	}
	if env["XDS_ADDR"].Value != cfg.ControlPlaneAddr || env["IDENTITY_ADDR"].Value != cfg.ControlPlaneAddr || env["XDS_TLS"].Value != "true" ||
		env["POD_NAME"].ValueFrom.FieldRef.FieldPath != "metadata.name" || env["SERVICE_ACCOUNT"].ValueFrom.FieldRef.FieldPath != "spec.serviceAccountName" {
		t.Errorf("proxy env %v", proxy.Env)
	}
	vol := pod.Spec.Volumes[len(pod.Spec.Volumes)-1]
	if vol.Name != TokenVolume || vol.Projected.Sources[0].ServiceAccountToken.Audience != "identity.weft.io" {
		t.Errorf("token volume %+v", vol)
	}
	if proxy.VolumeMounts[0].MountPath+"/"+vol.Projected.Sources[0].ServiceAccountToken.Path != "/var/run/secrets/weft/token" {
		t.Errorf("the token is not where weft-proxy run reads it (--token-file /var/run/secrets/weft/token)")
	}
}

// checkPatch applies Patch's JSON patch to the Pod's JSON with evanphx/json-patch (an independent
// implementation of RFC 6902) and compares with Inject's Pod.
func checkPatch(t *testing.T, orig *corev1.Pod, ns map[string]string, cfg Config, want *corev1.Pod) {
	t.Helper()
	ops, res, err := Patch(orig, ns, cfg)
	if err != nil || !res.Injected {
		t.Fatalf("Patch: %v %+v", err, res)
	}
	patchJSON, err := json.Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatch.DecodePatch(patchJSON)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := json.Marshal(orig)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("applying %s: %v", patchJSON, err)
	}
	var got corev1.Pod
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, &got); diff != "" {
		t.Errorf("the patch does not make the injected Pod (-Inject +patched):\n%s\npatch: %s", diff, patchJSON)
	}
}

func compareGolden(t *testing.T, path string, v any) {
	t.Helper()
	got, ok := v.([]byte)
	if !ok {
		var err error
		if got, err = yaml.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-want +got; go test -update rewrites it):\n%s", path, diff)
	}
}

// TestUninjectUndoesInject: both forms of weft inject come off again, leaving the Pod as it was.
func TestUninjectUndoesInject(t *testing.T) {
	for _, native := range []bool{true, false} {
		for _, cni := range []bool{true, false} {
			cfg := testConfig(t)
			cfg.NativeSidecars, cfg.CNI = native, cni
			orig := appPod(map[string]string{AnnotationSkipInboundPorts: "22"})
			pod := orig.DeepCopy()
			pod.Annotations[AnnotationInject] = Enabled
			if res, err := Inject(pod, nil, cfg); err != nil || !res.Injected {
				t.Fatalf("native %v cni %v: %v %+v", native, cni, err, res)
			}
			if !Uninject(&pod.ObjectMeta, &pod.Spec) {
				t.Fatal("Uninject changed nothing")
			}
			if diff := cmp.Diff(orig, pod); diff != "" {
				t.Errorf("native %v cni %v: uninjected Pod differs from the original (-want +got):\n%s", native, cni, diff)
			}
			if Uninject(&pod.ObjectMeta, &pod.Spec) {
				t.Error("a second Uninject changed something")
			}
		}
	}
	// A user's weft.io/inject: disabled stays.
	pod := appPod(map[string]string{AnnotationInject: Disabled})
	if Uninject(&pod.ObjectMeta, &pod.Spec) || pod.Annotations[AnnotationInject] != Disabled {
		t.Errorf("Uninject removed weft.io/inject: disabled")
	}
}

func TestParseConfig(t *testing.T) {
	c := testConfig(t)
	if c.controlPlaneNamespace() != "weft" || !c.NativeSidecars || c.ProxyUID != 2102 || !c.Resources.Limits.Memory().Equal(resource.MustParse("64Mi")) {
		t.Errorf("parsed %+v", c)
	}
	for _, tc := range []struct{ name, edit, want string }{
		{"unknown key", "proxyImag: x\n", `unknown field "proxyImag"`},
		{"wrong type", "cni: maybe\n", "cni"},
		{"bad addr", "controlPlaneAddr: weft-control\n", `controlPlaneAddr "weft-control": want host:port`},
		{"ip addr without namespace", "controlPlaneAddr: 10.0.0.1:15012\n", "controlPlaneNamespace: missing"},
		{"bad level", "logLevel: loud\n", `logLevel "loud"`},
		{"bad quantity", "resources: {requests: {cpu: lots}}\n", "quantities must match"},
		{"request above limit", "resources: {requests: {memory: 1Gi}, limits: {memory: 64Mi}}\n", "memory request 1Gi is above its limit 64Mi"},
		{"no image", "proxyImage: \"\"\n", "proxyImage: missing"},
		{"tracing sampling without a collector", "tracing: {sampling: 0.5}\n", "tracing.sampling: set tracing.collector too"},
		{"tracing sampling above 1", "tracing: {collector: c:4318, sampling: 2}\n", "tracing.sampling 2: want a fraction from 0 to 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(replaceKeys(testConfigYAML, tc.edit)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
	if c, err := ParseConfig([]byte(replaceKeys(testConfigYAML, "controlPlaneAddr: 10.0.0.1:15012\ncontrolPlaneNamespace: mesh\n"))); err != nil || c.controlPlaneNamespace() != "mesh" {
		t.Errorf("controlPlaneNamespace: %v %q", err, c.controlPlaneNamespace())
	}
}

// replaceKeys replaces the top-level keys of base that edit sets (or adds them).
func replaceKeys(base, edit string) string {
	var b, e map[string]any
	if err := yaml.Unmarshal([]byte(base), &b); err != nil {
		panic(err)
	}
	if err := yaml.Unmarshal([]byte(edit), &e); err != nil {
		panic(err)
	}
	for k, v := range e {
		b[k] = v
	}
	out, err := yaml.Marshal(b)
	if err != nil {
		panic(err)
	}
	return string(out)
}
