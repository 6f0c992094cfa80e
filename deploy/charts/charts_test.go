package charts

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/conformance/prereq"
	"github.com/weftmesh/weft/deploy/inject"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// identityValues stand in for a CA: the chart only base64-encodes them.
func identityValues() map[string]any {
	return map[string]any{"identity": map[string]any{
		"trustAnchorsPEM": "ANCHORS\n", "issuerCertPEM": "ISSUER CERT\n", "issuerKeyPEM": "ISSUER KEY\n",
	}}
}

func render(t *testing.T, namespace string, values map[string]any) []Manifest {
	t.Helper()
	ch, err := Load("v1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	ms, err := Render(ch, namespace, values)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./deploy/charts -update)", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("%s differs (-want +got; go test ./deploy/charts -update rewrites it):\n%s", path, d)
	}
}

func with(base map[string]any, kv ...any) map[string]any {
	for i := 0; i < len(kv); i += 2 {
		base[kv[i].(string)] = kv[i+1]
	}
	return base
}

func TestRenderGolden(t *testing.T) {
	for _, tc := range []struct {
		golden    string
		namespace string
		values    map[string]any
	}{
		{"default.yaml", "", identityValues()},
		{"cni.yaml", "", with(identityValues(), "cni", map[string]any{"enabled": true})},
		{"viz.yaml", "", with(identityValues(), "viz", map[string]any{"enabled": true})},
		{"custom.yaml", "mesh-system", with(identityValues(),
			"image", map[string]any{"registry": "registry.example:5000/weft", "tag": "v9.9.9", "pullPolicy": "Always"},
			"controlPlane", map[string]any{"replicas": 1},
			"trustDomain", "prod.example",
			"webhook", map[string]any{"failurePolicy": "Fail"},
			"tracing", map[string]any{"collector": "otel-collector.observability:4318", "sampling": 0.1},
		)},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			golden(t, tc.golden, YAML(render(t, tc.namespace, tc.values)))
		})
	}
}

// TestRenderObjects checks what a user relies on, whatever the golden files say: each object once,
// everything namespaced in the install namespace, the Namespace first and the webhook after the
// Service it calls, the anchor's key nowhere, and the version on every image.
func TestRenderObjects(t *testing.T) {
	ms := render(t, "mesh-system", with(identityValues(), "cni", map[string]any{"enabled": true}))
	seen := map[string]int{}
	for i, m := range ms {
		var obj struct {
			Kind     string
			Metadata struct{ Name, Namespace string }
		}
		if err := yaml.Unmarshal([]byte(m.Content), &obj); err != nil {
			t.Fatalf("%s: %v", m.Source, err)
		}
		key := obj.Kind + "/" + obj.Metadata.Name
		if _, dup := seen[key]; dup {
			t.Errorf("%s rendered twice", key)
		}
		seen[key] = i
		clusterScoped := map[string]bool{"Namespace": true, "ClusterRole": true, "ClusterRoleBinding": true, "MutatingWebhookConfiguration": true, "CustomResourceDefinition": true}
		if !clusterScoped[obj.Kind] && obj.Metadata.Namespace != "mesh-system" {
			t.Errorf("%s is in namespace %q, want mesh-system", key, obj.Metadata.Namespace)
		}
		for _, line := range strings.Split(m.Content, "\n") {
			if strings.Contains(line, "image:") && !strings.HasSuffix(line, ":v1.2.3") {
				t.Errorf("%s: %q does not carry the version v1.2.3", key, strings.TrimSpace(line))
			}
		}
	}
	for _, want := range []string{
		"Namespace/mesh-system", "ServiceAccount/weft-control", "ClusterRole/weft-control", "ClusterRoleBinding/weft-control",
		"Secret/weft-identity", "ConfigMap/weft-config", "Deployment/weft-control", "Service/weft-control",
		"Service/weft-injector", "PodDisruptionBudget/weft-control", "MutatingWebhookConfiguration/weft-injector", "DaemonSet/weft-cni",
		"CustomResourceDefinition/authorizationpolicies.policy.weft.io",
	} {
		if _, ok := seen[want]; !ok {
			t.Errorf("%s is not rendered; got %v", want, seen)
		}
	}
	if seen["Namespace/mesh-system"] != 0 {
		t.Errorf("the Namespace is object %d, want it first", seen["Namespace/mesh-system"])
	}
	if seen["MutatingWebhookConfiguration/weft-injector"] < seen["Service/weft-injector"] {
		t.Error("the webhook is applied before the Service it calls")
	}
	if all := YAML(ms); strings.Contains(all, "ca.key") {
		t.Error("the manifests mention ca.key, the anchor's key")
	}
}

func TestRenderErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   []string
	}{
		{"no identity", map[string]any{}, []string{"identity.trustAnchorsPEM is empty: weft install fills it", "identity.yaml"}},
		{"misspelt value", with(identityValues(), "contolPlane", map[string]any{"replicas": 2}), []string{"additional properties 'contolPlane' not allowed", "values.yaml"}},
		{"no replicas", with(identityValues(), "controlPlane", map[string]any{"replicas": 0}), []string{"controlPlane.replicas: minimum: got 0, want 1"}},
		{"bad policy", with(identityValues(), "webhook", map[string]any{"failurePolicy": "Sometimes"}), []string{"webhook.failurePolicy: value must be one of 'Ignore', 'Fail'"}},
		{"bad quantity", with(identityValues(), "proxy", map[string]any{"resources": map[string]any{"limits": map[string]any{"memory": "64XB"}}}), []string{"proxy.resources.limits.memory"}},
		{"relative cni dir", with(identityValues(), "cni", map[string]any{"binDir": "opt/cni"}), []string{"cni.binDir"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch, err := Load("v1.2.3")
			if err != nil {
				t.Fatal(err)
			}
			_, err = Render(ch, "", tc.values)
			if err == nil {
				t.Fatal("rendered; want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestHelmTemplateAgrees renders the chart folder with the helm CLI of the version go.mod pins and
// compares it with Render: `helm install weft deploy/charts/weft` and `weft install` create the same
// objects. helm lint must pass too.
func TestHelmTemplateAgrees(t *testing.T) {
	helm := prereq.Binary(t, "helm")
	vals, err := yaml.Marshal(with(identityValues(), "cni", map[string]any{"enabled": true}, "image", map[string]any{"tag": "v1.2.3"}))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(file, vals, 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(helm, args...)
		cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
		}
		return string(out)
	}
	run("lint", "--strict", "weft", "--values", file)
	got := run("template", ReleaseName, "weft", "--namespace", "mesh-system", "--values", file)
	want := YAML(render(t, "mesh-system", with(identityValues(), "cni", map[string]any{"enabled": true}, "image", map[string]any{"tag": "v1.2.3"})))
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("helm template and Render differ (-Render +helm):\n%s", d)
	}
}

// TestTracingValuesReachTheInjector: the chart's tracing values render into weft-config's config.yaml
// as the injector reads it (deploy/inject.ParseConfig), and without a collector there is no tracing key.
func TestTracingValuesReachTheInjector(t *testing.T) {
	configOf := func(values map[string]any) inject.Config {
		t.Helper()
		for _, m := range render(t, "weft", values) {
			var cm struct {
				Kind string
				Data map[string]string
			}
			if err := yaml.Unmarshal([]byte(m.Content), &cm); err != nil || cm.Kind != "ConfigMap" || cm.Data["config.yaml"] == "" {
				continue
			}
			c, err := inject.ParseConfig([]byte(cm.Data["config.yaml"]))
			if err != nil {
				t.Fatalf("the injector rejects the rendered config.yaml: %v", err)
			}
			return c
		}
		t.Fatal("no config.yaml rendered")
		return inject.Config{}
	}
	if c := configOf(identityValues()); c.Tracing != nil {
		t.Errorf("tracing without a collector: %+v", c.Tracing)
	}
	c := configOf(with(identityValues(), "tracing", map[string]any{"collector": "http://jaeger.tracing:4318", "sampling": 0.5}))
	if c.Tracing == nil || c.Tracing.Collector != "http://jaeger.tracing:4318" || c.Tracing.Sampling != 0.5 {
		t.Errorf("tracing = %+v, want the collector and sampling 0.5", c.Tracing)
	}
}
